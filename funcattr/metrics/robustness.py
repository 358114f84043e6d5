"""Robustness: how much does the explanation move when the input moves a little?

:func:`max_sensitivity` and :func:`avg_sensitivity` [yeh2019] re-explain ``n_samples`` noisy
copies of every input; the noise is drawn up front from ``generator`` and the noisy
copies are explained in stacked batches of ``chunk_size``, so chunking never changes a result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from funcattr.attribution.options import (
    check_chunk_size,
    check_int,
    check_positive_number,
    make_generator,
)
from funcattr.attribution.targets import check_target
from funcattr.metrics.explainer import chunked_explain
from funcattr.metrics.inputs import check_finite, check_input

__all__ = ["avg_sensitivity", "max_sensitivity", "sensitivities"]


def sensitivities(
    explain: Callable,
    input: Tensor,
    target: Any,
    *,
    attribution: Tensor | None = None,
    radius: float = 0.2,
    n_samples: int = 20,
    relative: bool = False,
    perturbation: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    generator: torch.Generator | int | None = None,
    chunk_size: int | None = 32,
    owner: str = "sensitivities",
) -> Tensor:
    """``||Phi(x + delta_j) - Phi(x)||`` for ``n_samples`` draws: ``(batch, n_samples)``.

    Parameters
    ----------
    explain : callable
        ``explain(input, target) -> attribution``.
    input, target
        The inputs and their classes.
    attribution : Tensor, optional
        ``Phi(input)`` if already computed (else ``explain(input, target)``).
    radius : float
        ``delta`` is uniform in the L-infinity ball of this radius (each element in
        ``[-radius, radius]``), as in Yeh et al.
    n_samples : int
        Noisy copies per input.
    relative : bool
        Divide by ``||Phi(x)||`` (Captum's and Quantus' default) instead of Yeh et al.'s
        absolute difference.
    perturbation : callable, optional
        ``perturbation(input, generator) -> delta`` for one draw of the whole batch, instead
        of the uniform ball.
    generator : torch.Generator, int or None
        Randomness of the noise: a generator, an int seed (the same draws on every call) or
        ``None`` (torch's global generator).
    chunk_size : int, optional
        Model inputs (noisy samples) per ``explain`` call.
    owner : str
        The name error messages give the call.
    """
    input = check_input(input, owner)
    target = check_target(target, input.shape[0], owner)
    check_int(n_samples, "n_samples", owner, minimum=1, example="20")
    check_chunk_size(chunk_size, owner)
    if perturbation is None:
        check_positive_number(radius, "radius", owner, example="0.1")
    generator = make_generator(generator, owner)
    batch = input.shape[0]
    if attribution is None:
        attribution = chunked_explain(explain, input, target, chunk_size, owner)
    elif not isinstance(attribution, Tensor) or attribution.shape[0] != batch:
        got = tuple(attribution.shape) if isinstance(attribution, Tensor) else type(
            attribution).__name__
        raise ValueError(
            f"{owner}(attribution=...): expected one attribution per sample ({batch}), got "
            f"{got}. Pass explain(input, target), or None to compute it."
        )
    attribution = check_finite(attribution, owner).detach()
    if perturbation is None:
        noise = torch.rand((n_samples, *input.shape), generator=generator, dtype=input.dtype)
        noise = (2 * noise - 1).mul_(radius).to(input.device)
    else:
        noise = torch.stack([perturbation(input, generator) for _ in range(n_samples)])
        if noise.shape[1:] != input.shape:
            raise ValueError(
                f"{owner}(perturbation=...): expected perturbation(input, generator) to return a "
                f"tensor of the input's shape {tuple(input.shape)}, got {tuple(noise.shape[1:])}. "
                f"Return one perturbation per element of the input."
            )
    noisy = (input[None] + noise).reshape(n_samples * batch, *input.shape[1:])
    explained = chunked_explain(explain, noisy, target.repeat(n_samples), chunk_size, owner)
    explained = explained.reshape(n_samples, batch, -1).to(attribution.dtype)
    reference = attribution.reshape(1, batch, -1)
    distance = (explained - reference).norm(dim=-1).T  # (batch, n_samples)
    if relative:
        norm = reference[0].norm(dim=-1)[:, None]
        distance = distance / norm.clamp_min(torch.finfo(distance.dtype).tiny)
    return distance


def max_sensitivity(explain: Callable, input: Tensor, target: Any, **options: Any) -> Tensor:
    """Max-sensitivity [yeh2019]: ``max_{||delta||_inf <= r} ||Phi(x + delta) - Phi(x)||``.

    Estimated by Monte-Carlo over ``n_samples`` uniform draws in the ball (see
    :func:`sensitivities` for the options). Lower is better.

    Returns
    -------
    Tensor
        ``(batch,)``.

    Examples
    --------
    >>> max_sensitivity(explain, x, y, radius=0.05, n_samples=20, generator=0)  # doctest: +SKIP
    """
    return sensitivities(explain, input, target, owner="max_sensitivity", **options).amax(dim=1)


def avg_sensitivity(explain: Callable, input: Tensor, target: Any, **options: Any) -> Tensor:
    """Average sensitivity [yeh2019]: ``E_delta ||Phi(x + delta) - Phi(x)||``, ``delta`` uniform.

    Monte-Carlo mean over ``n_samples`` draws (see :func:`sensitivities`). Lower is better.

    Returns
    -------
    Tensor
        ``(batch,)``.
    """
    return sensitivities(explain, input, target, owner="avg_sensitivity", **options).mean(dim=1)
