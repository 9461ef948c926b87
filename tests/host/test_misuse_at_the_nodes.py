"""Misuse caught at the node, with node, input and fix: each case calls what ComfyUI calls, a node's
``validate_inputs`` where the facts are known before the run, else its ``execute`` (it grows with every case and
node). The same refusals as a server meets them, through ComfyUI's executor: test_misuse_through_the_executor.py.
"""

from __future__ import annotations

import pytest
import torch

STEPS = 6


@pytest.fixture(scope="module")
def paths(comfy, tiny):
    """Layout and reference inversions of two random 64x64 images, and the prompts."""
    images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    latents = tiny.vae.encode(images)
    invert = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]
    out = {name: invert.execute(model=tiny.personalized, positive=tiny.encode(""), latent={"samples": lat},
                                steps=STEPS, scheduler="ddim_uniform", sampler_name="ddim", cfg=1.0).result
           for name, lat in (("layout", latents[:1]), ("reference", latents[1:]))}
    return {**out, "y": tiny.encode("a sks vase on a beach"), "neg": tiny.encode("blurry")}


def swap(comfy, tiny, paths, **changes):
    inputs = dict(model=tiny.personalized, reference_inversion=paths["reference"][1],
                  layout_inversion=paths["layout"][1], reference_positive=paths["y"], reference_negative=paths["neg"],
                  layout_positive=paths["y"], layout_negative=paths["neg"], lambda2=2, mask_start=4,
                  layout_layers="output 6-11", reference_layers="output 6-11", source_paths="recorded",
                  reference_cache="off", mask=None)
    node = comfy.NODE_CLASS_MAPPINGS["LR_MultiSourceAttentionSwap"]
    return node.execute(**{**inputs, **changes})


def test_mask_start_before_lambda2_when_the_swap_runs(comfy, tiny, paths):
    """Checked when the node runs, after the schedule: a lambda2 beyond it is reported first, as the root cause
    (and a validate_inputs taking both would list its refusal twice, nodes/inputs.py)."""
    with pytest.raises(ValueError, match=r"^Multi-Source Attention Swap: input 'mask_start': is 2, before lambda2 = "
                                         r"4.*Fix: set mask_start at or after lambda2"):
        swap(comfy, tiny, paths, lambda2=4, mask_start=2)
    with pytest.raises(ValueError, match=r"^Multi-Source Attention Swap: input 'lambda2': is 50 but the inversions' "
                                         r"schedule has 7 sampling steps"):
        swap(comfy, tiny, paths, lambda2=50, mask_start=30)


@pytest.mark.parametrize("mask,said", [
    (torch.zeros(1, 64, 64), r"input 'mask': is all zeros.*Fix: check the mask"),
    (torch.ones(3, 64, 64), r"input 'mask': has shape \(3, 64, 64\): 3 masks for 1 image\(s\).*Fix: give one mask, "
                            r"or one per image \(1\)"),
])
def test_swap_mask_checked_before_any_run(comfy, tiny, paths, mask, said):
    with pytest.raises(ValueError, match="Multi-Source Attention Swap: " + said):
        swap(comfy, tiny, paths, mask=mask)


@pytest.mark.parametrize("name,value", [("lambda2", 50), ("mask_start", 8)])
def test_swap_steps_beyond_the_schedule(comfy, tiny, paths, name, value):
    """6 steps of ddim_uniform are 7 sampling steps: 7 is the last legal value ("never"), 8 and 50 never happen."""
    with pytest.raises(ValueError, match=rf"input '{name}': is {value} but the inversions' schedule has 7 sampling "
                                         rf"steps \(6 asked of ddim_uniform\).*Fix: set {name} to at most 7"):
        swap(comfy, tiny, paths, **{name: value, "mask_start": max(value, 4)} if name == "lambda2" else {name: value})
    assert swap(comfy, tiny, paths, lambda2=7, mask_start=7).result[0] is not None


def test_stage1_denoise_zero(comfy, tiny):
    node = comfy.NODE_CLASS_MAPPINGS["LR_StepBlendedKSampler"]
    message = node.validate_inputs(denoise=0.0)
    assert message.startswith("Step-Blended KSampler: input 'denoise': is 0.0: no step would run")
    assert node.validate_inputs(denoise=0.5) is True
    y, neg = tiny.encode("a vase"), tiny.encode("")
    with pytest.raises(ValueError, match=r"input 'denoise': is 0.0.*Fix: set denoise above 0"):
        node.execute(vanilla_model=tiny.vanilla, personalized_model=tiny.personalized, vanilla_positive=y,
                     vanilla_negative=neg, personalized_positive=y, personalized_negative=neg,
                     latent_image={"samples": torch.zeros(1, 4, 8, 8)}, seed=0, steps=6, lambda1=2, cfg=7.5,
                     sampler_name="ddim", scheduler="ddim_uniform", denoise=0.0)


def test_stage1_below_full_denoise_as_layout_path_says_why(comfy, tiny, paths):
    """Same steps and scheduler, yet another schedule: the message shows the real steps and top sigmas."""
    node = comfy.NODE_CLASS_MAPPINGS["LR_StepBlendedKSampler"]
    y, neg = paths["y"], paths["neg"]
    _, traj, _ = node.execute(vanilla_model=tiny.vanilla, personalized_model=tiny.personalized, vanilla_positive=y,
                              vanilla_negative=neg, personalized_positive=y, personalized_negative=neg,
                              latent_image=paths["layout"][0], seed=0, steps=STEPS, lambda1=2, cfg=7.5,
                              sampler_name="ddim", scheduler="ddim_uniform", denoise=0.7).result
    with pytest.raises(ValueError, match=r"input 'reference_inversion': walks 7 sampling steps of ddim_uniform "
                                         r"\(6 asked\) from sigma (\S+) but layout_inversion walks \d sampling steps "
                                         r"of ddim_uniform \(6 asked\) from sigma (?!\1)\S+.*denoise 1.0"):
        swap(comfy, tiny, paths, layout_inversion=traj)


def test_missing_embedding_says_the_file_is_missing(comfy, tiny, paths):
    node = comfy.NODE_CLASS_MAPPINGS["LR_CrossAttentionMask"]
    prompt = "a photo of embedding:not_there vase"
    with pytest.raises(ValueError, match=r"Cross-Attention Mask: input 'subject': 'embedding:not_there': ComfyUI finds "
                                         r"no embedding file 'not_there'.*Fix: put not_there.safetensors"):
        node.execute(model=tiny.personalized, layout_inversion=paths["layout"][1], clip=tiny.clip, prompt=prompt,
                     subject="embedding:not_there", resolution="1/2 of the latent (32x32 at 512 px)",
                     steps_to_average=2, threshold=0.1)


@pytest.mark.parametrize("pixels", [56, 72])
@pytest.mark.parametrize("resolution", ["1/2 of the latent (32x32 at 512 px)", "1/4 of the latent (16x16 at 512 px)"])
def test_cross_attention_mask_at_sizes_not_multiple_of_16(comfy, tiny, pixels, resolution):
    """The UNet rounds odd sizes up at each level; the mask's resolution rounds the same way."""
    latent = torch.randn(1, 4, pixels // 8, pixels // 8, generator=torch.Generator().manual_seed(pixels))
    invert = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]
    _, traj = invert.execute(model=tiny.personalized, positive=tiny.encode(""), latent={"samples": latent}, steps=3,
                             scheduler="ddim_uniform", sampler_name="ddim", cfg=1.0).result
    node = comfy.NODE_CLASS_MAPPINGS["LR_CrossAttentionMask"]
    soft, mask = node.execute(model=tiny.personalized, layout_inversion=traj, clip=tiny.clip, prompt="a sks vase",
                              subject="vase", resolution=resolution, steps_to_average=2, threshold=0.1).result
    assert soft.shape == mask.shape == (1, pixels, pixels)
    assert torch.isfinite(soft).all() and 0.5 < float(soft.max()) <= 1 and float(soft.min()) >= 0
    assert torch.equal(mask, (soft > 0.1).float())


def test_sam_box_corners_in_order(comfy, tiny_sam):
    segment = comfy.NODE_CLASS_MAPPINGS["LR_SAMSegment"]
    sam = comfy.NODE_CLASS_MAPPINGS["LR_SAMLoader"].execute(sam_name=tiny_sam.name).result[0]
    prompt = torch.zeros(1, 48, 64)
    prompt[0, 10:30, 20:50] = 1
    with pytest.raises(ValueError, match=r"SAM Segment from Mask: input 'box': '40,5,10,30' has x1 <= x0 or y1 <= y0"
                                         r".*Fix: write the top-left corner first"):
        segment.execute(image=torch.rand(1, 48, 64, 3), sam=sam, prompt_mask=prompt, extra_points="",
                        box="40,5,10,30")


@pytest.mark.parametrize("case,said", [
    ("KSampler (adds noise)", r"is sampled with fresh noise added.*Fix: use KSampler \(Advanced\) with add_noise "
                              r"disabled"),
    ("add_noise enabled", r"is sampled with fresh noise added"),
    ("euler_ancestral", r"is sampled with euler_ancestral, which does not retrace"),
    ("dpmpp_2m", r"is sampled with dpmpp_2m, which does not retrace"),
    ("start_at_step 2", r"starts at step 2 of 7 from a latent that is not the layout path's there"),
    ("denoise 0.5", r"is sampled on a schedule .* that is not the inversions'.*with denoise 1.0"),
    ("the reference's inverted latent", r"starts at step 0 of 7 from a latent that is not the layout path's"),
    ("an empty latent", r"starts at step 0 of 7 from a latent that is not the layout path's"),
    ("the clean layout", r"starts at step 0 of 7 from a latent that is not the layout path's"),
])
def test_retouch_sampler_must_retrace_the_layout(comfy, tiny, paths, case, said):
    """The README's retouch sampler: KSampler (Advanced), add_noise disabled, ddim/euler, from the layout's
    inverted latent at step 0. Anything else ran silently before (68-72/255 mean pixel difference)."""
    patched = swap(comfy, tiny, paths).result[0]
    y, neg, inverted = paths["y"], paths["neg"], paths["layout"][0]
    advanced = comfy.KSamplerAdvanced().sample
    start, sampler, noise, start_at = inverted, "ddim", "disable", 0
    if case == "KSampler (adds noise)":
        run = lambda: comfy.KSampler().sample(patched, 0, STEPS, 7.5, "ddim", "ddim_uniform", y, neg, inverted)  # noqa: E731
    elif case == "denoise 0.5":
        run = lambda: comfy.KSampler().sample(patched, 0, STEPS, 7.5, "ddim", "ddim_uniform", y, neg, inverted,  # noqa: E731
                                              denoise=0.5)
    else:
        noise = "enable" if case == "add_noise enabled" else noise
        sampler = case if case in ("euler_ancestral", "dpmpp_2m") else sampler
        start_at = 2 if case == "start_at_step 2" else start_at
        start = {"the reference's inverted latent": paths["reference"][0],
                 "an empty latent": {"samples": torch.zeros_like(inverted["samples"])},
                 "the clean layout": {"samples": paths["layout"][1].latents[0] / 0.18215}}.get(case, start)
        run = lambda: advanced(patched, noise, 0, STEPS, 7.5, sampler, "ddim_uniform", y, neg, start,  # noqa: E731
                               start_at, 10000, "disable")
    with pytest.raises(ValueError, match=r"Multi-Source Attention Swap: input 'model': " + said):
        run()
    right = advanced(patched, "disable", 0, STEPS, 7.5, "ddim", "ddim_uniform", y, neg, inverted, 0, 10000, "disable")
    assert torch.isfinite(right[0]["samples"]).all()


@pytest.mark.parametrize("node_id,input_name", [("LR_DDIMInversion", "positive"),
                                                 ("LR_StepBlendedKSampler", "personalized_positive"),
                                                 ("LR_MultiSourceAttentionSwap", "reference_positive")])
def test_another_familys_prompt(comfy, tiny, paths, node_id, input_name):
    """A prompt of SDXL's width (2048) into an SD1.x model: named before any matrix product fails."""
    wide = [[torch.zeros(1, 77, 2048), {}]]
    name = comfy.NODE_CLASS_MAPPINGS[node_id].GET_SCHEMA().display_name
    said = (rf"{name}: input '{input_name}': has text width 2048 but the \S+ model reads 768.*Fix: encode the "
            "prompt with the CLIP of the checkpoint")
    with pytest.raises(ValueError, match=said):
        if node_id == "LR_MultiSourceAttentionSwap":
            swap(comfy, tiny, paths, reference_positive=wide)
        elif node_id == "LR_DDIMInversion":
            comfy.NODE_CLASS_MAPPINGS[node_id].execute(
                model=tiny.personalized, positive=wide, latent={"samples": torch.zeros(1, 4, 8, 8)}, steps=STEPS,
                scheduler="ddim_uniform", sampler_name="ddim", cfg=1.0)
        else:
            y = tiny.encode("a sks vase")
            comfy.NODE_CLASS_MAPPINGS[node_id].execute(
                vanilla_model=tiny.vanilla, personalized_model=tiny.personalized, vanilla_positive=y,
                vanilla_negative=y, personalized_positive=wide, personalized_negative=y,
                latent_image={"samples": torch.zeros(1, 4, 8, 8)}, seed=0, steps=STEPS, lambda1=2, cfg=7.5,
                sampler_name="ddim", scheduler="ddim_uniform", denoise=1.0)
