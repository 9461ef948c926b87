"""v-prediction models (SD2.x 768-v, v-prediction finetunes, any model through ComfyUI's ModelSamplingDiscrete) on the
tiny SD1.x: the inversion and the swap work in sigma space on the denoised prediction, so the parameterisation does
not matter (moved out of test_sdxl.py: the SD1.x set is not loaded beside the tiny SDXL, tests/memory_budget.py)."""

from __future__ import annotations

import math

import pytest
import torch
from test_inversion import relative_error
from test_step_blend import STEPS, max_diff
from test_swap import rel
from test_swap import sample as swap_sample
from test_swap import swap as swap_node

from comfyui_layout_retouch.nodes import labels

PAPER = labels.REDENOISED


def invert(comfy, model, positive, lat, steps=STEPS):
    node = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]
    return node.execute(model=model, positive=positive, latent=lat, steps=steps, scheduler="ddim_uniform",
                        sampler_name="ddim", cfg=1.0).result


def smooth_network(model):
    """A clone whose *network output* (eps or v, as the model is parameterised) is the smooth
    0.3 * tanh(x_in) of the scaled input: ComfyUI's own conversion then turns it into the
    denoised prediction, so each parameterisation is exercised."""
    import comfy.patcher_extension as ext

    patched = model.clone()

    def network(executor, x, *args, **kwargs):
        return 0.3 * torch.tanh(x)

    ext.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "test_smooth_network", network, patched.model_options,
                             is_model_options=True)
    return patched


@pytest.fixture(scope="module")
def v_models(comfy, tiny):
    """SD1.x as eps and as v-prediction (ComfyUI's ModelSamplingDiscrete, as users load v-models)."""
    v = comfy.NODE_CLASS_MAPPINGS["ModelSamplingDiscrete"]().patch(tiny.personalized, "v_prediction", False)[0]
    return {"eps": tiny.personalized, "v": v}


def test_v_prediction_inverts_at_the_eps_models_order(comfy, tiny, v_models, measured):
    lat = {"samples": tiny.vae.encode(torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0)))}
    empty = tiny.encode("")
    errors = {}
    for kind, base in v_models.items():
        model = smooth_network(base)
        for steps in (6, 24, 96):
            inverted, _ = invert(comfy, model, empty, lat, steps)
            redrawn = comfy.KSamplerAdvanced().sample(model, "disable", 0, steps, 1.0, "ddim", "ddim_uniform", empty,
                                                      empty, inverted, 0, 10000, "disable")[0]["samples"]
            errors[kind, steps] = relative_error(redrawn, lat["samples"])
    orders = {k: [math.log(errors[k, a] / errors[k, b]) / math.log(4) for a, b in ((6, 24), (24, 96))]
              for k in v_models}
    measured(f"inversion, smooth network output: relative reconstruction error {errors}; orders {orders}")
    # Both parameterisations give a smooth denoised prediction in sigma: first order, small at 96 steps.
    for kind in v_models:
        assert errors[kind, 6] > errors[kind, 24] > errors[kind, 96] and errors[kind, 96] < 0.1
        assert all(0.7 < p < 1.4 for p in orders[kind]), (kind, errors, orders)
    # and the two models differ (the parameterisation is applied, not ignored)
    eps_out = smooth_network(v_models["eps"])
    v_out = smooth_network(v_models["v"])
    a = invert(comfy, eps_out, empty, lat, 6)[0]["samples"]
    b = invert(comfy, v_out, empty, lat, 6)[0]["samples"]
    assert max_diff(a, b) > 1e-3


def test_v_prediction_swap_identity(comfy, tiny, v_models, measured):
    model = v_models["v"]
    lat = {"samples": tiny.vae.encode(torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2)))}
    y, neg = tiny.encode("a sks vase on a beach"), tiny.encode("blurry")
    lay_inv, lay = invert(comfy, model, tiny.encode(""), lat)
    patched = swap_node(comfy, model, lay, lay, y, y, neg, mode=PAPER, mask=torch.full((1, 64, 64), 0.5),
                        layout_layers="all", reference_layers="all")
    got = swap_sample(comfy, patched, y, neg, lay_inv)
    want = swap_sample(comfy, model, y, neg, lay_inv)
    measured(f"v-prediction swap identity (paper mode, all layers): max relative difference {rel(got, want):.2e}")
    assert rel(got, want) < 1e-4 and torch.isfinite(got).all()
