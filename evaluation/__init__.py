"""Evaluation: the papers' metrics on the user's own subject (issue 16), over runner outputs.

L&R Sec. 4.1 and P&D Sec. 4.1 (after DreamBooth): identity I_DINO and I_CLIP (mean cosine
similarity of each generated image to each reference photo, DINO ViT-S/16 CLS and CLIP ViT-B/32
image embeddings), prompt fidelity T_CLIP (cosine of the CLIP text and image embeddings), and
diversity: the Inception Score over the images of a prompt (L&R Fig. 4a, Appendix B.2) and where
the subject's centre lands (L&R Fig. 1). ImageReward (L&R Appendix C) where its package and
weights are present.

- ``metrics``: the formulas, on embeddings and logits (torch only).
- ``models``: the embedding models from local folders, with their preprocessing.
- ``runs``: runner output folders (``manifest.json``) and reference photos read and checked.
- ``centres``: the subject's centre with Segment Anything (``masks.sam``) and DINO.
- ``report``: aggregation, ``eval.json`` and the markdown table (plain Python).
- ``pictures``: the contact sheets and the centre plot (PIL).
- ``evaluate``: the entry point the ``eval`` command calls.
"""
