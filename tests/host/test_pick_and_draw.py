"""Pick-and-Draw's nodes on the real host with the tiny SD1.x models, in ComfyUI's custom-sampling graph."""

from __future__ import annotations

import dataclasses

import pytest
import torch

STEPS = 8
PROMPT, VANILLA, REFERENCE = "a photo of sks vase in the snow", "a photo of vase in the snow", "a photo of sks vase"
# Guided steps of the 8-step tests: layout 0-1, appearance 2-4.
RANGES = {"layout_start": 0, "layout_end": 1, "appearance_start": 2, "appearance_end": 4}


@pytest.fixture(scope="module")
def graph(comfy, tiny):
    """The stock custom-sampling pieces and the pack's palette and template, as a workflow wires them."""
    m = comfy.NODE_CLASS_MAPPINGS
    guider = lambda model, text: m["CFGGuider"]().get_guider(model, tiny.encode(text), tiny.encode(""), 7.5)[0]  # noqa: E731
    g = {
        "noise": m["RandomNoise"]().get_noise(5)[0],
        "sigmas": m["BasicScheduler"]().get_sigmas(tiny.personalized, "ddim_uniform", STEPS, 1.0)[0],
        "ddim": m["KSamplerSelect"]().get_sampler("ddim")[0],
        "euler": m["KSamplerSelect"]().get_sampler("euler")[0],
        "guider": guider(tiny.personalized, PROMPT),
        "vanilla_guider": guider(tiny.vanilla, VANILLA),
        "latent": {"samples": torch.zeros(1, 4, 8, 8)},
    }
    g["inversion"] = reference_inversion(comfy, tiny)
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        g["palette"] = palette(comfy, tiny, g["inversion"])
        g["template"] = template(comfy, tiny, g)
    return g


def reference_inversion(comfy, tiny, steps=STEPS):
    """The reference photo (a seeded random image) DDIM-inverted at the reference prompt (inside
    inference mode, as ComfyUI's executor runs nodes)."""
    with torch.inference_mode():
        ref = tiny.vae.encode(torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2)))
        return comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"].execute(
            model=tiny.personalized, positive=tiny.encode(REFERENCE), latent={"samples": ref}, steps=steps,
            scheduler="ddim_uniform", sampler_name="ddim", cfg=1.0).result[1]


def palette(comfy, tiny, inversion, **kwargs):
    args = dict(model=tiny.personalized, reference_inversion=inversion, clip=tiny.clip, prompt=REFERENCE,
                subject="vase", appearance_start=2, appearance_end=4, layers="auto", threshold=0.1)
    return comfy.NODE_CLASS_MAPPINGS["LR_ReferencePalette"].execute(**{**args, **kwargs}).result[0]


def template(comfy, tiny, g, **kwargs):
    args = dict(noise=g["noise"], guider=g["vanilla_guider"], sampler=g["ddim"], sigmas=g["sigmas"],
                latent_image=g["latent"], clip=tiny.clip, prompt=VANILLA, subject="vase", last_step=1)
    return comfy.NODE_CLASS_MAPPINGS["LR_LayoutTemplate"].execute(**{**args, **kwargs}).result[0]


def pd_sampler(comfy, tiny, g, base="ddim", **kwargs):
    args = dict(sampler=g[base], clip=tiny.clip, prompt=PROMPT, subject="vase", eta=10.0, alpha=10.0, beta=100.0,
                iterations=3, threshold=0.1, palette=g["palette"], template=g["template"], **RANGES)
    return comfy.NODE_CLASS_MAPPINGS["LR_PickAndDrawSampler"].execute(**{**args, **kwargs}).result[0]


def sample(comfy, g, sampler, guider=None, sigmas=None, latent=None):
    with torch.inference_mode():
        return comfy.NODE_CLASS_MAPPINGS["SamplerCustomAdvanced"]().sample(
            g["noise"], guider or g["guider"], sampler, g["sigmas"] if sigmas is None else sigmas,
            latent or g["latent"])[0]["samples"]


def test_palette_counts_steps_on_the_generations_sigmas(comfy, tiny, graph):
    """At 6 ddim_uniform steps ComfyUI's schedule has 7 (1000 / 6 is no whole number) and BasicScheduler
    keeps the last 6: with the generation's SIGMAS connected, palette step k is the sampler's step k."""
    m = comfy.NODE_CLASS_MAPPINGS
    sigmas6 = m["BasicScheduler"]().get_sigmas(tiny.personalized, "ddim_uniform", 6, 1.0)[0]
    inversion = reference_inversion(comfy, tiny, steps=6)
    with torch.inference_mode():
        assert len(inversion) - 1 == len(sigmas6)  # one step more than BasicScheduler's
        counted = palette(comfy, tiny, inversion, sigmas=sigmas6)
        own = palette(comfy, tiny, inversion)
    assert [counted.step_at(sigmas6[i]) for i in range(6)] == [None, None, 2, 3, 4, None]
    assert [own.step_at(sigmas6[i]) for i in range(6)] == [None, 2, 3, 4, None, None]  # shifted by one
    assert torch.equal(counted.features[(2, counted.layers[0])], own.features[(3, own.layers[0])])


def test_palette_and_template_hold_the_guided_steps(tiny, graph):
    from comfyui_layout_retouch.attention.layers import layer_keys, layers_at, parse_layers

    pal, tem = graph["palette"], graph["template"]
    decoder_half = layers_at(tiny.personalized, 2)
    assert decoder_half and pal.layers == decoder_half and all(layer[0] == "output" for layer in decoder_half)
    assert set(pal.features) == {(s, layer) for s in (2, 3, 4) for layer in decoder_half}
    assert all(f.ndim == 2 and f.shape[0] >= 1 and torch.isfinite(f).all() for f in pal.features.values())
    every = layer_keys(tiny.vanilla, parse_layers("all"))
    assert set(tem.maps) == {(s, layer) for s in (0, 1) for layer in every}  # every cross-attention layer
    assert set(tem.latents) == {0, 1}
    sigmas = graph["sigmas"]
    assert [pal.step_at(sigmas[i]) for i in range(STEPS)] == [None, None, 2, 3, 4, None, None, None]
    assert [tem.step_at(sigmas[i]) for i in range(3)] == [0, 1, None]


@pytest.mark.parametrize("base", ["ddim", "euler"])
def test_guidance_off_is_the_stock_sampler_bit_for_bit(comfy, tiny, graph, base):
    stock = sample(comfy, graph, graph[base])
    for off in ({"alpha": 0.0, "beta": 0.0}, {"palette": None, "template": None}, {"iterations": 0}, {"eta": 0.0},
                {"palette": None, "template": None, "layout_start": 20, "layout_end": 30, "appearance_start": 20,
                 "appearance_end": 30}):
        got = sample(comfy, graph, pd_sampler(comfy, tiny, graph, base, **off))
        assert torch.equal(got, stock), off
    # Steps the schedule never reaches, with the palette and the template connected: refused, not silently unused.
    unreached = pd_sampler(comfy, tiny, graph, base, layout_start=20, layout_end=30, appearance_start=20,
                           appearance_end=30)
    with pytest.raises(ValueError, match=r"Pick-and-Draw Sampler: input 'layout_start': is 20, but this "
                                             r"sampler's schedule has \d+ steps.*connected template would never be "
                                             r"used.*Fix: set layout_start and layout_end within"):
        sample(comfy, graph, unreached)


def test_guidance_runs_in_inference_mode_and_leaves_the_models_alone(comfy, tiny, graph):
    before = {k: v.clone() for k, v in tiny.personalized.model.state_dict().items()}
    options = repr(tiny.personalized.model_options)
    guider_options = repr(graph["guider"].model_options)
    stock = sample(comfy, graph, graph["ddim"])
    guided = sample(comfy, graph, pd_sampler(comfy, tiny, graph))
    assert torch.isfinite(guided).all()
    assert float((guided - stock).abs().max()) > 1e-3  # the guidance acts
    layout_only = sample(comfy, graph, pd_sampler(comfy, tiny, graph, palette=None))
    appearance_only = sample(comfy, graph, pd_sampler(comfy, tiny, graph, template=None))
    assert float((layout_only - guided).abs().max()) > 1e-4 and float((appearance_only - guided).abs().max()) > 1e-4
    after = tiny.personalized.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert all(p.grad is None for p in tiny.personalized.model.parameters())
    assert repr(tiny.personalized.model_options) == options and repr(graph["guider"].model_options) == guider_options


def in_sampler(comfy, guider, sigmas, latent, visit):
    """Run ``visit(guider, model_options, x, sigmas)`` inside a sampler run of ``guider`` (conds processed)."""
    import comfy.samplers

    def fn(model_k, x, sigmas_in, extra_args=None, callback=None, disable=None):
        visit(model_k.inner_model, extra_args["model_options"], x, sigmas_in)
        return x

    with torch.inference_mode():
        guider.sample(torch.zeros_like(latent), latent, comfy.samplers.KSAMPLER(fn), sigmas, seed=0)


def total(losses: dict[str, torch.Tensor]) -> float:
    """``alpha * l_app + beta * l_lay`` summed over the batch, from a guided step's weighted losses."""
    return float(sum(v.sum() for v in losses.values()))


def guided_step(tiny, graph, step, layout=True, appearance=True, threshold=0.1):
    from comfyui_layout_retouch.attention.tokens import subject_positions
    from comfyui_layout_retouch.guidance.sampler import Guidance, GuidedStep

    pal, tem = graph["palette"], graph["template"]
    return GuidedStep(Guidance(threshold=threshold), subject_positions(tiny.clip, PROMPT, "vase"),
                      tem if layout else None, step if layout else None, pal if appearance else None,
                      step if appearance else None)


@pytest.fixture(scope="module")
def model64(comfy, tiny_files):
    """The tiny personalized model computing in float64 (its own copy: the shared one stays float32)."""
    model = comfy.CheckpointLoaderSimple().load_checkpoint("tiny_personalized.safetensors")[0]
    model.model.diffusion_model.to(torch.float64)
    model.model.diffusion_model.dtype = torch.float64
    model.model.manual_cast_dtype = None
    return model


@pytest.mark.parametrize("layout, appearance", [(True, False), (False, True)])
def test_gradient_matches_central_differences(comfy, tiny, graph, model64, measured, layout, appearance):
    """d loss / d z_t through the whole UNet pass (float64), against central finite differences."""
    from comfyui_layout_retouch.sampling.gradients import gradients_enabled

    step = 1 if layout else 3  # a layout step of the template, an appearance step of the palette
    guider = comfy.NODE_CLASS_MAPPINGS["CFGGuider"]().get_guider(model64, tiny.encode(PROMPT), tiny.encode(""), 7.5)[0]
    sigma = graph["sigmas"][step]
    results = {}

    def visit(g, options, x, sigmas):
        gen = torch.Generator().manual_seed(step)
        z = (torch.randn(1, 4, 8, 8, generator=gen, dtype=torch.float64) * float(sigma)).to(x.device)
        direction = torch.randn(1, 4, 8, 8, generator=gen, dtype=torch.float64)
        s = guided_step(tiny, graph, step, layout, appearance)
        sig = torch.full((1,), float(sigma), dtype=torch.float64)
        grad = s.gradient(g, z, sig, options)[0]
        h = 1e-5
        with gradients_enabled(), torch.no_grad():
            plus, minus = (total(s.loss(g, z + sign * h * direction, sig, options)) for sign in (1, -1))
        results["fd"], results["grad"] = (plus - minus) / (2 * h), float((grad * direction).sum())
        results["dtype"], results["norm"] = grad.dtype, float(grad.norm())

    in_sampler(comfy, guider, graph["sigmas"], torch.zeros(1, 4, 8, 8), visit)
    rel = abs(results["fd"] - results["grad"]) / abs(results["fd"])
    measured(f"P&D gradient check ({'layout' if layout else 'appearance'} loss, float64): directional derivative "
             f"{results['grad']:.6e} vs central differences {results['fd']:.6e}, relative error {rel:.2e}")
    assert results["dtype"] == torch.float64 and results["norm"] > 0
    assert rel < 1e-5


def test_gradient_through_inference_weights_equals_autograds(comfy, tiny, graph, measured):
    """Weights loaded inside inference mode (as ComfyUI's executor loads them) go through
    sampling/gradients.py's linear and convolution functions; the gradient equals autograd's own
    on the same weights loaded as normal tensors (the ``tiny`` fixture's)."""
    m = comfy.NODE_CLASS_MAPPINGS
    with torch.inference_mode():
        frozen = comfy.CheckpointLoaderSimple().load_checkpoint("tiny_personalized.safetensors")[0]
    assert next(frozen.model.parameters()).is_inference()
    assert not next(tiny.personalized.model.parameters()).is_inference()
    grads = {}
    for name, model in (("inference", frozen), ("normal", tiny.personalized)):
        guider = m["CFGGuider"]().get_guider(model, tiny.encode(PROMPT), tiny.encode(""), 7.5)[0]

        def visit(g, options, x, sigmas, name=name):
            z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4)) * float(sigmas[1])
            for step in (1, 3):
                s = guided_step(tiny, graph, step, layout=step == 1, appearance=step == 3)
                grads[name, step] = s.gradient(g, z, sigmas[step] * x.new_ones(1), options)[0]

        in_sampler(comfy, guider, graph["sigmas"], torch.zeros(1, 4, 8, 8), visit)
    for step in (1, 3):
        a, b = grads["inference", step], grads["normal", step]
        rel = float((a - b).abs().max() / b.abs().max())
        measured(f"P&D gradient with inference-tensor weights vs autograd's, step {step}: max relative difference "
                 f"{rel:.2e}")
        assert float(b.abs().max()) > 0 and rel < 1e-5


def test_a_small_guided_update_lowers_the_loss(comfy, tiny, graph):
    from comfyui_layout_retouch.sampling.gradients import gradients_enabled

    found = {}

    def visit(g, options, x, sigmas):
        for step in (1, 3):
            s = guided_step(tiny, graph, step, layout=step == 1, appearance=step == 3)
            sigma = sigmas[step] * x.new_ones(1)
            z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(9)) * float(sigmas[step])
            with gradients_enabled(), torch.no_grad():
                before = total(s.loss(g, z, sigma, options))
            grad = s.gradient(g, z, sigma, options)[0]
            with gradients_enabled(), torch.no_grad():
                after = total(s.loss(g, z - 1e-3 / float(grad.norm()) * grad, sigma, options))
            found[step] = (before, after)

    in_sampler(comfy, graph["guider"], graph["sigmas"], torch.zeros(1, 4, 8, 8), visit)
    assert all(after < before for before, after in found.values()), found


def test_template_maps_are_the_maps_the_guidance_recomputes(comfy, tiny, graph):
    """The template's maps equal, bit for bit, the guidance's own reading (conditional half alone) of the
    same model at the same latent: the layout loss is at its minimum there, exactly."""
    from comfyui_layout_retouch.attention.tokens import subject_positions
    from comfyui_layout_retouch.guidance.losses import layout_map
    from comfyui_layout_retouch.guidance.probe import conditional_pass

    tem = graph["template"]
    worst = []

    def visit(g, options, x, sigmas):
        for step in (0, 1):
            s = guided_step(tiny, graph, step, appearance=False)
            s.probe.stop, s.probe.positions = False, subject_positions(tiny.clip, VANILLA, "vase")
            conditional_pass(g, tem.latents[step].to(x), sigmas[step] * x.new_ones(1), options, s.probe)
            for layer in s.template_layers:
                worst.append(float((layout_map(s.probe.maps[layer].float()) - tem.maps[(step, layer)]).abs().max()))

    in_sampler(comfy, graph["vanilla_guider"], graph["sigmas"], torch.zeros(1, 4, 8, 8), visit)
    assert len(worst) == len(tem.maps) and max(worst) == 0


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def own_path(comfy, tiny, g):
    """The generation's own unguided run (ddim) as a path of latents, as an inversion records one: the
    reference of a palette that holds exactly the generation's own features."""
    from comfyui_layout_retouch.records import InversionTrajectory, base_model

    seen = []
    with torch.inference_mode():
        out = g["guider"].sample(g["noise"].generate_noise(g["latent"]), g["latent"]["samples"], g["ddim"],
                                 g["sigmas"], callback=lambda step, x0, x, total: seen.append(x.clone()),
                                 seed=g["noise"].seed)
        final = tiny.personalized.model.process_latent_in(out)
    assert len(seen) == STEPS
    return InversionTrajectory(latents=torch.stack([final, *seen[::-1]]), sigmas=g["sigmas"].flip(0), steps=STEPS,
                               scheduler="ddim_uniform", base_model=base_model(tiny.personalized))


def nudged(source, eps: float, seed: int = 0):
    """A template or palette with every tensor moved by ``eps`` times seeded unit-variance noise."""
    gen = torch.Generator().manual_seed(seed)
    field = "maps" if hasattr(source, "maps") else "features"
    moved = {k: v + eps * torch.randn(v.shape, generator=gen) for k, v in getattr(source, field).items()}
    return dataclasses.replace(source, **{field: moved})


def ours(module_name: str) -> list:
    """The pack's module ``module_name`` as every loader loaded it (the tests' import and ComfyUI's, under the
    folder's path): a patch applies to the nodes ComfyUI runs only through the latter."""
    import sys

    from comfyui_layout_retouch.guidance import losses

    suffix = module_name.replace(".", "/") + ".py"
    assert losses.__file__.endswith("guidance/losses.py")
    return [m for m in list(sys.modules.values()) if str(getattr(m, "__file__", "")).endswith(suffix)]


LAYOUT_ONLY = {"palette": None}  # layout steps 0-1 (RANGES)


def test_layout_guidance_at_its_minimum_leaves_the_latent_unchanged(comfy, tiny, graph, measured, monkeypatch):
    """The template from the generation's own guider, noise, sampler, sigmas and latent (the loss's minimum):
    layout guidance alone, at the paper's eta and beta, leaves the final latent as the unguided run's; a
    template nudged by eps moves it by an amount that shrinks with eps."""
    own = template(comfy, tiny, graph, guider=graph["guider"], prompt=PROMPT)
    stock = sample(comfy, graph, graph["ddim"])
    at_minimum = relative(sample(comfy, graph, pd_sampler(comfy, tiny, graph, template=own, **LAYOUT_ONLY)), stock)
    moved = {eps: relative(sample(comfy, graph, pd_sampler(comfy, tiny, graph, template=nudged(own, eps),
                                                           **LAYOUT_ONLY)), stock) for eps in (1e-3, 1e-4)}
    # The paper's step, uncapped, under the smaller nudge: as long as for a wrong layout.
    for module in ours("guidance.sampler"):
        monkeypatch.setattr(module, "step_size", lambda paper, loss, grad: paper)
    paper = relative(sample(comfy, graph, pd_sampler(comfy, tiny, graph, template=nudged(own, 1e-4), **LAYOUT_ONLY)),
                     stock)
    measured(f"P&D layout guidance at its minimum (tiny SD1.x, 8 steps, layout 0-1, eta 10, beta 100): final latent "
             f"moved by {at_minimum:.2e} (relative); template nudged by 1e-3 / 1e-4: {moved[1e-3]:.2e} / "
             f"{moved[1e-4]:.2e}; the paper's step uncapped, nudged by 1e-4: {paper:.2e}")
    assert at_minimum <= 1e-6
    assert 0 < moved[1e-4] < moved[1e-3] / 3


def test_appearance_guidance_at_its_minimum_leaves_the_latent_unchanged(comfy, tiny, graph, measured):
    """A palette of the generation's own features at the appearance steps (its own unguided run as the
    reference path, at its prompt): appearance guidance alone leaves the final latent unchanged, and a palette
    nudged by eps moves it by an amount that shrinks with eps."""
    with torch.inference_mode():
        own = palette(comfy, tiny, own_path(comfy, tiny, graph), prompt=PROMPT, sigmas=graph["sigmas"])
    stock = sample(comfy, graph, graph["ddim"])
    at_minimum = relative(sample(comfy, graph, pd_sampler(comfy, tiny, graph, palette=own, template=None)), stock)
    moved = {eps: relative(sample(comfy, graph, pd_sampler(comfy, tiny, graph, palette=nudged(own, eps),
                                                           template=None)), stock) for eps in (1e-3, 1e-4)}
    measured(f"P&D appearance guidance at its minimum (tiny SD1.x, 8 steps, appearance 2-4, eta 10, alpha 10): "
             f"final latent moved by {at_minimum:.2e} (relative); palette nudged by 1e-3 / 1e-4: {moved[1e-3]:.2e} / "
             f"{moved[1e-4]:.2e}")
    assert at_minimum <= 1e-6
    assert 0 < moved[1e-4] < moved[1e-3] / 3


def test_paper_settings_give_finite_latents(comfy, tiny, graph):
    """50 DDIM steps, layout 0-9, appearance 10-19, eta 10, alpha 10, beta 100, 3 iterations."""
    m = comfy.NODE_CLASS_MAPPINGS
    sigmas = m["BasicScheduler"]().get_sigmas(tiny.personalized, "ddim_uniform", 50, 1.0)[0]
    inversion = reference_inversion(comfy, tiny, steps=50)
    with torch.inference_mode():
        g = {**graph, "sigmas": sigmas}
        pal = palette(comfy, tiny, inversion, appearance_start=10, appearance_end=19)
        tem = template(comfy, tiny, g, last_step=9)
        sampler = pd_sampler(comfy, tiny, g, palette=pal, template=tem, layout_start=0, layout_end=9,
                             appearance_start=10, appearance_end=19)
    out = sample(comfy, g, sampler, sigmas=sigmas)
    assert torch.isfinite(out).all()  # random weights give large gradients: finite is what must hold
    assert float((out - sample(comfy, g, g["ddim"], sigmas=sigmas)).abs().max()) > 1e-3


def test_bad_input_is_named(comfy, tiny, graph):
    # ComfyUI loads the pack under its folder's path: its NodeInputError (a ValueError) is another class object.
    NodeInputError = ValueError  # noqa: N806

    with pytest.raises(NodeInputError, match=r"Reference Palette: input 'subject': 'dog' is not in the prompt"):
        palette(comfy, tiny, graph["inversion"], subject="dog")
    with pytest.raises(NodeInputError, match=r"Layout Template: input 'subject': 'dog' is not in the prompt"):
        template(comfy, tiny, graph, subject="dog")
    with pytest.raises(NodeInputError, match=r"Pick-and-Draw Sampler: input 'subject': 'dog' is not in the prompt"):
        pd_sampler(comfy, tiny, graph, subject="dog")
    with pytest.raises(NodeInputError, match=r"Pick-and-Draw Sampler: input 'appearance_start': is 5, after"):
        pd_sampler(comfy, tiny, graph, appearance_start=5, appearance_end=4)
    with pytest.raises(NodeInputError, match=r"Reference Palette: input 'appearance_end': is 12, but the schedule "):
        palette(comfy, tiny, graph["inversion"], appearance_end=12)
    # Counted on the generation's SIGMAS, a step the inversion's schedule does not hold is named.
    other = comfy.NODE_CLASS_MAPPINGS["BasicScheduler"]().get_sigmas(tiny.personalized, "normal", STEPS, 1.0)[0]
    with pytest.raises(NodeInputError, match=r"input 'reference_inversion': has no latent at step 2 \(sigma"):
        palette(comfy, tiny, graph["inversion"], sigmas=other)
    # A palette of another family or size, a template of another family.
    other = dataclasses.replace(graph["palette"], base_model="SDXL")
    with pytest.raises(NodeInputError, match=r"Pick-and-Draw Sampler: input 'palette': was made with a SDXL model"):
        sample(comfy, graph, pd_sampler(comfy, tiny, graph, palette=other))
    big = {"samples": torch.zeros(1, 4, 16, 16)}
    with pytest.raises(NodeInputError, match=r"input 'palette': was made at 64x64 px .* this generation is 128x128"):
        sample(comfy, graph, pd_sampler(comfy, tiny, graph, template=None), latent=big)
    other = dataclasses.replace(graph["template"], base_model="SD21UNCLIP")
    with pytest.raises(NodeInputError, match=r"input 'template': was made with a SD21UNCLIP model"):
        sample(comfy, graph, pd_sampler(comfy, tiny, graph, template=other))
    # A template that stops before the sampler's last layout step.
    with pytest.raises(NodeInputError, match=r"input 'template': holds no map at step 1"):
        sample(comfy, graph, pd_sampler(comfy, tiny, graph, template=template(comfy, tiny, graph, last_step=0)))


def test_empty_subject_mask_is_named(comfy, tiny, graph):
    """Keys of zero make every cross-attention map flat: no pixel reaches tau, a clear error."""
    # ComfyUI loads the pack under its folder's path: its NodeInputError (a ValueError) is another class object.
    NodeInputError = ValueError  # noqa: N806

    import comfy.ops as comfy_ops

    blind = tiny.personalized.clone()
    for name, module in tiny.personalized.model.diffusion_model.named_modules():
        if name.endswith("attn2.to_k"):
            zero = comfy_ops.disable_weight_init.Linear(module.in_features, module.out_features, bias=False)
            torch.nn.init.zeros_(zero.weight)
            blind.add_object_patch(f"diffusion_model.{name}", zero)
    with pytest.raises(NodeInputError, match=r"Reference Palette: input 'threshold': finds no subject: no pixel"):
        with torch.inference_mode():
            palette(comfy, tiny, graph["inversion"], model=blind)
