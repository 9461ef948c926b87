"""DDIM Inversion on the real host: a stock KSamplerAdvanced redraws the input from its output."""

from __future__ import annotations

import math

import pytest
import torch

CFG1 = 1.0


def smooth_model(model):
    """A clone whose prediction is the smooth x0 = x - sigma * (0.1 + 0.02 * tanh(x))."""
    patched = model.clone()

    def wrapper(apply_model, args):
        x, sigma = args["input"], args["timestep"]
        return x - sigma.view(-1, 1, 1, 1) * (0.1 + 0.02 * torch.tanh(x))

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
def empty(tiny):
    return tiny.encode("")


def invert(comfy, model, cond, lat, steps, scheduler="ddim_uniform", sampler="ddim", cfg=CFG1, negative=None):
    node = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]
    return node.execute(model=model, positive=cond, latent=lat, steps=steps, scheduler=scheduler, sampler_name=sampler,
                        cfg=cfg, negative=negative).result


def redraw(comfy, model, cond, inverted, steps, scheduler="ddim_uniform", sampler="ddim"):
    return comfy.KSamplerAdvanced().sample(model, "disable", 0, steps, CFG1, sampler, scheduler, cond, cond, inverted,
                                           0, 10000, "disable")[0]["samples"]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_reconstruction_error_falls_at_first_order(comfy, tiny, image_latent, empty, sampler, measured):
    model = smooth_model(tiny.personalized)
    errors = {}
    for steps in (6, 24, 96):
        inverted, _ = invert(comfy, model, empty, image_latent, steps, sampler=sampler)
        errors[steps] = relative_error(redraw(comfy, model, empty, inverted, steps, sampler=sampler),
                                       image_latent["samples"])
    measured(f"inversion, smooth prediction, sampler {sampler}: relative reconstruction error by steps {errors}")
    assert errors[6] > errors[24] > errors[96]
    orders = [math.log(errors[a] / errors[b]) / math.log(4) for a, b in ((6, 24), (24, 96))]
    assert all(0.8 < p < 1.3 for p in orders), (errors, orders)
    assert errors[96] < 0.1


def test_tiny_random_model_reconstruction_is_reported(comfy, tiny, image_latent, empty, measured):
    """Random weights make eps rough in sigma, so this error is large whatever the code; it must be finite."""
    inverted, _ = invert(comfy, tiny.personalized, empty, image_latent, 24)
    rec = redraw(comfy, tiny.personalized, empty, inverted, 24)
    error = relative_error(rec, image_latent["samples"])
    measured(f"inversion, tiny random SD1.x model, 24 steps: relative reconstruction error {error:.3f}")
    assert math.isfinite(error) and not torch.isnan(rec).any()


def test_trajectory(comfy, tiny, image_latent, empty):
    from comfy import samplers

    steps = 6
    inverted, traj = invert(comfy, tiny.personalized, empty, image_latent, steps)
    sigmas = samplers.calculate_sigmas(tiny.personalized.get_model_object("model_sampling"), "ddim_uniform",
                                             steps)
    assert len(sigmas) > steps + 1  # ddim_uniform can give more sigmas than steps + 1
    assert len(traj) == len(sigmas) and traj.latents.shape == (len(sigmas), *image_latent["samples"].shape)
    assert torch.equal(traj.sampling_sigmas, sigmas.float())
    assert bool((traj.sigmas[1:] > traj.sigmas[:-1]).all()) and float(traj.sigmas[0]) == 0.0
    latent_format = tiny.personalized.get_model_object("latent_format")
    assert torch.equal(traj.latents[0], latent_format.process_in(image_latent["samples"]))
    assert torch.equal(inverted["samples"], latent_format.process_out(traj.latents[-1]))
    steps_taken = (traj.latents[1:] - traj.latents[:-1]).flatten(1).abs().amax(dim=1)
    assert bool((steps_taken > 0).all())
    assert traj.steps == steps and traj.scheduler == "ddim_uniform" and traj.base_model == "SD15"
    assert inverted["samples"].dtype == image_latent["samples"].dtype and not torch.isnan(traj.latents).any()


def test_guided_inversion_uses_negative(comfy, tiny, image_latent, empty):
    other = tiny.encode("a dog")
    plain, _ = invert(comfy, tiny.personalized, other, image_latent, 4)
    guided, _ = invert(comfy, tiny.personalized, other, image_latent, 4, cfg=3.0, negative=empty)
    assert float((plain["samples"] - guided["samples"]).abs().max()) > 1e-3


def test_callers_model_unchanged(comfy, tiny, image_latent, empty):
    lat = {"samples": torch.zeros(1, 4, 8, 8)}
    sample = lambda: comfy.KSampler().sample(tiny.personalized, 3, 4, 7.5, "ddim", "ddim_uniform", empty, empty,  # noqa: E731
                                             lat)[0]["samples"]
    before, options = sample(), repr(tiny.personalized.model_options)
    invert(comfy, tiny.personalized, empty, image_latent, 4)
    assert torch.equal(before, sample()) and options == repr(tiny.personalized.model_options)


class TestBadInput:
    def test_sampler_that_cannot_be_inverted(self, comfy, tiny, image_latent, empty):
        node = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]
        assert "euler_ancestral" in node.validate_inputs(sampler_name="euler_ancestral")
        with pytest.raises(ValueError, match=r"DDIM Inversion: input 'sampler_name': 'euler_ancestral' cannot be"):
            invert(comfy, tiny.personalized, empty, image_latent, 4, sampler="euler_ancestral")

    def test_every_stock_scheduler_inverts_or_says_why(self, comfy, tiny, image_latent, empty):
        from comfy import samplers

        model = smooth_model(tiny.personalized)
        for scheduler in samplers.SCHEDULER_NAMES:
            try:
                inverted, traj = invert(comfy, model, empty, image_latent, 4, scheduler=scheduler)
            except ValueError as e:
                assert "input 'scheduler'" in str(e) and "Fix:" in str(e), scheduler
                continue
            assert not torch.isnan(inverted["samples"]).any(), scheduler

    def test_cfg_without_negative(self, comfy, tiny, image_latent, empty):
        with pytest.raises(ValueError, match=r"input 'negative': is not connected but cfg is 3.0"):
            invert(comfy, tiny.personalized, empty, image_latent, 4, cfg=3.0)

    def test_empty_batch(self, comfy, tiny, empty):
        with pytest.raises(ValueError, match=r"input 'latent'.*empty batch"):
            invert(comfy, tiny.personalized, empty, {"samples": torch.zeros(0, 4, 8, 8)}, 4)

    def test_sdxl_latent_on_sd1_model(self, comfy, tiny, empty):
        with pytest.raises(ValueError, match=r"input 'latent': has 16 channels"):
            invert(comfy, tiny.personalized, empty, {"samples": torch.ones(1, 16, 8, 8)}, 4)


def test_interruption_is_honoured(comfy, tiny, image_latent, empty):
    import comfy.model_management as mm

    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            invert(comfy, tiny.personalized, empty, image_latent, 4)
    finally:
        mm.interrupt_current_processing(False)
