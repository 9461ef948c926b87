"""Null-Text Inversion on the real host: a stock KSamplerAdvanced at cfg 7.5 with the fitted negative
redraws the input, retracing the node's own path."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from comfyui_layout_retouch.nodes.null_text import NullTextInversion
from comfyui_layout_retouch.nodes.sampling import DDIMInversion

STEPS, CFG = 6, 7.5
# 6 steps instead of the paper's 50: Adam moves each embedding value by about learning_rate per
# iteration, and prompts' CLIP embeddings differ by about 1 per value, so 10x the paper's 1e-2 lets
# 6 x 10 iterations travel as far as the paper's 50 x 10.
FIT = {"iterations": 10, "learning_rate": 0.1}
MODELS = ("tiny random SD1.x", "smooth cond-dependent prediction")


def cond_model(model):
    """A clone whose prediction is smooth in x and in the cross-attention conditioning ``c``:
    x0 = x - sigma * (0.1 + 0.02 tanh(x) + 0.01 tanh(mean_tokens(c))), the last term's first C*H*W
    values laid out as the latent."""
    patched = model.clone()

    def wrapper(apply_model, args):
        x, sigma, context = args["input"], args["timestep"], args["c"]["c_crossattn"]
        field = torch.tanh(context.mean(dim=1)[:, :x[0].numel()]).view_as(x)
        return x - sigma.view(-1, 1, 1, 1) * (0.1 + 0.02 * torch.tanh(x) + 0.01 * field)

    patched.set_model_unet_function_wrapper(wrapper)
    return patched


@pytest.fixture(scope="module")
def image_latent(tiny):
    """A smooth 64x64 picture encoded with the tiny VAE."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    image = torch.stack([xs, ys, 0.5 + 0.5 * torch.sin(6 * xs * ys)], dim=-1)[None]
    with torch.inference_mode():
        return {"samples": tiny.vae.encode(image)}


@pytest.fixture(scope="module")
def prompt_pair(tiny):
    return tiny.encode("a photo of a red vase"), tiny.encode("")


def null_text(model, positive, negative, latent, steps=STEPS, **kwargs):
    settings = {"scheduler": "ddim_uniform", "sampler_name": "ddim", "cfg": CFG, "iterations": 5} | kwargs
    return NullTextInversion.execute(model=model, positive=positive, negative=negative, latent=latent, steps=steps,
                                     **settings).result


def redraw(comfy, model, positive, negative, inverted, steps=STEPS, end=10000, leftover="disable"):
    return comfy.KSamplerAdvanced().sample(model, "disable", 0, steps, CFG, "ddim", "ddim_uniform", positive,
                                           negative, inverted, 0, end, leftover)[0]["samples"]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module", params=MODELS)
def run(request, tiny, image_latent, prompt_pair):
    """The node's outputs on one model, run as ComfyUI's executor runs nodes (inference mode)."""
    if request.param.startswith("tiny"):
        return request.param, *request.getfixturevalue("tiny_run")
    model = cond_model(tiny.personalized)
    with torch.inference_mode():
        return request.param, model, null_text(model, *prompt_pair, image_latent, **FIT)


def test_reconstruction_beats_ddim_inversion(comfy, run, image_latent, prompt_pair, measured):
    name, model, (inverted, trajectory, null_negative) = run
    positive, negative = prompt_pair
    ddim_inverted, _ = DDIMInversion.execute(model=model, positive=positive, latent=image_latent, steps=STEPS,
                                             scheduler="ddim_uniform", sampler_name="ddim", cfg=1.0).result
    assert torch.equal(inverted["samples"], ddim_inverted["samples"])  # the same pivots' top
    ddim_error = relative_error(redraw(comfy, model, positive, negative, ddim_inverted), image_latent["samples"])
    null_error = relative_error(redraw(comfy, model, positive, null_negative, inverted), image_latent["samples"])
    measured(f"null-text inversion, {name}, {STEPS} steps, {FIT}, cfg {CFG}: relative "
             f"reconstruction error {null_error:.4f}, DDIM inversion {ddim_error:.4f}")
    assert null_error < 0.1 * ddim_error, (null_error, ddim_error)


def test_stock_sampler_retraces_the_inversion(comfy, run, prompt_pair):
    _, model, (inverted, trajectory, null_negative) = run
    positive = prompt_pair[0]
    latent_format = model.get_model_object("latent_format")
    assert len(null_negative) == len(trajectory) - 1
    final = redraw(comfy, model, positive, null_negative, inverted)
    torch.testing.assert_close(final, latent_format.process_out(trajectory.latents[0]), rtol=1e-5, atol=1e-5)
    middle = redraw(comfy, model, positive, null_negative, inverted, end=3, leftover="enable")
    torch.testing.assert_close(latent_format.process_in(middle), trajectory.latents[-4], rtol=1e-5, atol=1e-5)
    steps_taken = (trajectory.latents[1:] - trajectory.latents[:-1]).flatten(1).abs().amax(dim=1)
    assert bool((steps_taken > 0).all()) and torch.equal(trajectory.latents[-1], latent_format.process_in(
        inverted["samples"]))


def test_each_step_selects_its_own_embedding(run):
    from comfy import samplers

    _, model, (_, trajectory, null_negative) = run
    conds = [dict(entry[1]) for entry in null_negative]
    samplers.calculate_start_end_timesteps(model.model, conds)
    for s, sigma in enumerate(trajectory.sampling_sigmas[:-1].tolist()):
        active = [k for k, c in enumerate(conds) if c["timestep_end"] <= sigma <= c["timestep_start"]]
        assert active == [s], (s, sigma, active)
    assert not torch.equal(null_negative[0][0], null_negative[-1][0])  # the embeddings were fitted


def test_callers_model_unchanged_and_no_weight_gradients(tiny, image_latent, prompt_pair):
    model = cond_model(tiny.personalized)
    weights = {k: v.clone() for k, v in model.model.state_dict().items()}
    options = repr(model.model_options)
    null_text(model, *prompt_pair, image_latent, steps=2, iterations=2)
    assert options == repr(model.model_options) and not model.patches and not model.object_patches
    after = model.model.state_dict()
    assert all(torch.equal(weights[k], after[k]) for k in weights)
    assert all(p.grad is None for p in model.model.parameters())


def test_inference_tensor_weights(comfy, image_latent, prompt_pair):
    """As in ComfyUI, where the executor's inference mode makes the loaded weights inference tensors."""
    with torch.inference_mode():
        model = comfy.CheckpointLoaderSimple().load_checkpoint("tiny_personalized.safetensors")[0]
        assert all(p.is_inference() for p in model.model.parameters())
        inverted, trajectory, null_negative = null_text(model, *prompt_pair, image_latent, steps=2, iterations=2)
    assert not torch.isnan(trajectory.latents).any()
    assert not torch.equal(null_negative[0][0], prompt_pair[1][0][0])
    assert all(p.grad is None for p in model.model.parameters())


@pytest.fixture(scope="module")
def tiny_run(tiny, image_latent, prompt_pair):
    """The node's outputs on the tiny UNet itself (the swap acts on its attention layers)."""
    with torch.inference_mode():
        return tiny.personalized, null_text(tiny.personalized, *prompt_pair, image_latent, **FIT)


def retouch(comfy, model, trajectory, positive, negative, layout_negative=None):
    """The swap with ``trajectory`` as both reference and layout, ``negative`` as the reference's
    negative (and the layout's, unless given)."""
    swap = comfy.NODE_CLASS_MAPPINGS["LR_MultiSourceAttentionSwap"]
    return swap.execute(model=model, reference_inversion=trajectory, layout_inversion=trajectory,
                        reference_positive=positive, reference_negative=negative, layout_positive=positive,
                        layout_negative=negative if layout_negative is None else layout_negative, lambda2=2, mask_start=4, layout_layers="all", reference_layers="all",
                        source_paths="recorded", reference_cache="off",
                        mask=torch.full((1, 64, 64), 0.5)).result[0]


def test_the_swap_reads_a_null_text_reference_with_its_own_negative_per_step(comfy, tiny_run, prompt_pair, measured):
    """Null-text inversion as the retouch's source path: CFG sampling with ``null_negative`` walks the
    path exactly, so with ``null_negative`` as the sources' negative the source rows are the target's
    own rows at every step and the swap changes nothing; with the plain negative (one embedding for
    every step) the sources' unconditional half is another prompt's, and the result moves: so the swap refuses
    the plain negative with a Null-Text Inversion's path (measured here on the path stripped of its mark)."""
    model, (inverted, trajectory, null_negative) = tiny_run
    positive, negative = prompt_pair
    with pytest.raises(ValueError, match=r"Multi-Source Attention Swap: input 'reference_negative': is a single "
                                         r"prompt, but .* Null-Text Inversion.*Fix: connect the Null-Text "
                                         r"Inversion's null_negative output here"):
        retouch(comfy, model, trajectory, positive, negative, layout_negative=null_negative)
    unmarked = dataclasses.replace(trajectory, null_text=None)
    with torch.inference_mode():
        want = redraw(comfy, model, positive, null_negative, inverted)
        per_step = redraw(comfy, retouch(comfy, model, trajectory, positive, null_negative), positive, null_negative,
                          inverted)
        plain = redraw(comfy, retouch(comfy, model, unmarked, positive, negative), positive, null_negative, inverted)
    error, moved = relative_error(per_step, want), relative_error(plain, want)
    measured(f"null-text path as the swap's sources (tiny SD1.x, all layers, mask 0.5): relative difference from "
             f"the unswapped redraw {error:.2e} with null_negative per step, {moved:.2e} with the plain negative")
    assert error < 1e-4 and moved > 100 * error, (error, moved)


class TestBadInput:
    def test_cfg_one(self, tiny, image_latent, prompt_pair):
        with pytest.raises(ValueError, match=r"Null-Text Inversion: input 'cfg': is 1.0.*Fix: set cfg"):
            null_text(tiny.personalized, *prompt_pair, image_latent, cfg=1.0)

    def test_sampler_that_cannot_be_inverted(self, tiny, image_latent, prompt_pair):
        assert "euler_ancestral" in NullTextInversion.validate_inputs(sampler_name="euler_ancestral")
        with pytest.raises(ValueError, match=r"Null-Text Inversion: input 'sampler_name': 'euler_ancestral'"):
            null_text(tiny.personalized, *prompt_pair, image_latent, sampler_name="euler_ancestral")

    def test_combined_negative(self, tiny, image_latent, prompt_pair):
        positive, negative = prompt_pair
        with pytest.raises(ValueError, match=r"Null-Text Inversion: input 'negative': has 2 entries"):
            null_text(tiny.personalized, positive, negative + tiny.encode("blurry"), image_latent)

    def test_swap_negative_with_combined_prompts(self, comfy, tiny_run, prompt_pair, tiny):
        model, (_, trajectory, null_negative) = tiny_run
        positive, negative = prompt_pair
        with pytest.raises(ValueError, match=r"Multi-Source Attention Swap: input 'reference_negative': has 2 "
                                             r"entries, of which 2 apply at step 0 .*Fix: connect a single"):
            retouch(comfy, model, trajectory, positive, negative + tiny.encode("blurry"), null_negative)
        with pytest.raises(ValueError, match=r"input 'reference_negative': has 6 entries, of which 0 apply at step 0"):
            retouch(comfy, model, trajectory, positive, null_negative[1:], null_negative)

    def test_sdxl_latent_on_sd1_model(self, tiny, prompt_pair):
        with pytest.raises(ValueError, match=r"Null-Text Inversion: input 'latent': has 16 channels"):
            null_text(tiny.personalized, *prompt_pair, {"samples": torch.ones(1, 16, 8, 8)})
