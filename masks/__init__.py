"""Masks of Layout-and-Retouch (L&R Sec. 3.2.2): the cross-attention mask M^c (``cross_attention``),
Segment Anything's M^SAM (``sam``) and the adaptive mask M that blends them (``adaptive``)."""
