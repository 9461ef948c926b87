"""The inversion scheme and its checks on analytic denoisers: no host needed."""

from __future__ import annotations

import math

import pytest
import torch

from comfyui_layout_retouch.records import InversionTrajectory
from comfyui_layout_retouch.sampling.inversion import (
    euler_invert,
    sampler_problem,
    schedule_problem,
)


def smooth_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0 = x - sigma * eps with a smooth eps(x) = 0.1 + 0.02 * tanh(x)."""
    return x - sigma.view(-1, 1, 1, 1) * (0.1 + 0.02 * torch.tanh(x))


def euler_down(denoise, x, sigmas_down):
    for k in range(len(sigmas_down) - 1):
        eps = (x - denoise(x, sigmas_down[k].expand(x.shape[0]))) / sigmas_down[k]
        x = x + (sigmas_down[k + 1] - sigmas_down[k]) * eps
    return x


def karras(n: int, sigma_min=0.03, sigma_max=14.6, rho=7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    s = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)])


def test_constant_eps_inverts_exactly():
    """With eps independent of x, Euler up then down is exact."""
    x0 = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    sigmas = karras(10)

    def denoise(x, sigma):
        return x - sigma.view(-1, 1, 1, 1) * 0.3

    path = euler_invert(denoise, x0, sigmas.flip(0))
    assert len(path) == len(sigmas)
    assert torch.equal(path[0], x0)
    torch.testing.assert_close(path[-1], x0 + 0.3 * sigmas[0])
    torch.testing.assert_close(euler_down(denoise, path[-1], sigmas), x0)


def test_error_falls_at_first_order():
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = []
    for n in (6, 24, 96):
        sigmas = karras(n)
        noise = euler_invert(smooth_denoiser, x0, sigmas.flip(0))[-1]
        errors.append(float((euler_down(smooth_denoiser, noise, sigmas) - x0).norm() / x0.norm()))
    assert errors[0] > errors[1] > errors[2]
    orders = [math.log(errors[i] / errors[i + 1]) / math.log(4) for i in range(2)]
    assert all(0.8 < p < 1.3 for p in orders), (errors, orders)


def test_step_callback_sees_each_step():
    seen = []
    euler_invert(smooth_denoiser, torch.zeros(1, 1, 2, 2), karras(5).flip(0),
                 lambda k, x0, x: seen.append((k, x.shape)))
    assert [k for k, _ in seen] == list(range(5))


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_invertible_samplers(sampler):
    assert sampler_problem(sampler) is None


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m", "dpmpp_sde", "uni_pc", "lcm"])
def test_other_samplers_rejected(sampler):
    problem, fix = sampler_problem(sampler)
    assert sampler in problem and "ddim" in fix


def test_schedule_checks():
    good = karras(8)
    assert schedule_problem(good, "karras", 8) is None
    assert "no step" in schedule_problem(good[:1], "x", 0)[0]
    assert "clean image" in schedule_problem(good[:-1], "x", 8)[0]
    repeated = torch.tensor([10.0, 5.0, 5.0, 1.0, 0.0])
    assert "repeats or raises" in schedule_problem(repeated, "x", 4)[0]
    assert "infinite" in schedule_problem(torch.tensor([float("inf"), 1.0, 0.0]), "x", 2)[0]


def test_trajectory_lookup():
    sigmas = karras(4).flip(0).float()
    latents = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1, 1).expand(5, 1, 4, 2, 2)
    traj = InversionTrajectory(latents=latents, sigmas=sigmas, steps=4, scheduler="karras", base_model="SD15")
    assert len(traj) == 5
    assert torch.equal(traj.sampling_sigmas, karras(4).float())
    assert traj.index_of(sigmas[3]) == 3
    assert float(traj.latent_at(sigmas[2]).flatten()[0]) == 2.0
    with pytest.raises(KeyError):
        traj.index_of(123.0)
    with pytest.raises(ValueError):
        InversionTrajectory(latents=latents[:3], sigmas=sigmas, steps=4, scheduler="karras", base_model="SD15")
