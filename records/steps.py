"""Which sampling step a model call is at: known from its sigma's place in the schedule, never from a call count."""

from __future__ import annotations

import torch


class StepOfCall:
    """The position of a model call's sigma in ``sigmas``, looked up once per call.

    Attention patches run on every layer with the same ``transformer_options["sigmas"]`` tensor;
    reading a GPU tensor's value makes the CPU wait for the GPU, so a lookup in each layer would
    hold the sampler's kernel launches back behind the GPU's work. The last call's tensor (kept,
    so its id cannot be reused) and its position are remembered.
    """

    def __init__(self, sigmas: torch.Tensor | None = None) -> None:
        self.sigmas = sigmas
        self.last: tuple = (None, None, None)

    def __call__(self, sigma: torch.Tensor, sigmas: torch.Tensor | None = None) -> int | None:
        """``sigma``: the call's sigmas ``[B]``; ``sigmas``: the schedule (default: the one given at creation)."""
        schedule = self.sigmas if sigmas is None else sigmas
        seen, seen_schedule, position = self.last
        if seen is not sigma or seen_schedule is not schedule:
            position = sigma_position(schedule, sigma[0].cpu())
            self.last = (sigma, schedule, position)
        return position

    def __deepcopy__(self, memo) -> StepOfCall:
        return StepOfCall(self.sigmas)  # a clone's patches start with nothing remembered


def sigma_position(sigmas: torch.Tensor, sigma: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-8) -> int | None:
    """The first position of ``sigma`` in ``sigmas`` (within tolerance), or None: how a step is
    known from the current sigma, never from a call count."""
    hits = torch.isclose(sigmas, torch.as_tensor(sigma).to(sigmas), rtol=rtol, atol=atol).nonzero()
    return int(hits[0, 0]) if hits.numel() else None
