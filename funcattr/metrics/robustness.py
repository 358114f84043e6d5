"""Robustness: how much does the explanation move when the input moves a little?

:func:`max_sensitivity` and :func:`avg_sensitivity` [yeh2019] re-explain ``n_samples`` noisy
copies of every input; the noise is drawn up front from an explicit generator and the noisy
copies are explained in stacked batches of ``chunk_size``, so chunking never changes a result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from funcattr.metrics._common import (
    check_chunk_size,
    check_input,
    check_positive_int,
    check_target,
    chunked_explain,
    make_generator,
)

__all__ = ["avg_sensitivity", "max_sensitivity", "sensitivities"]


def sensitivities(
    explain: Callable,
    x: Tensor,
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
        ``explain(x, target) -> attribution``.
    x, target
        The inputs and their classes.
    attribution : Tensor, optional
        ``Phi(x)`` if already computed (else ``explain(x, target)``).
    radius : float
        ``delta`` is uniform in the L-infinity ball of this radius (each element in
        ``[-radius, radius]``), as in Yeh et al.
    n_samples : int
        Noisy copies per input.
    relative : bool
        Divide by ``||Phi(x)||`` (Captum's and Quantus' default) instead of Yeh et al.'s
        absolute difference.
    perturbation : callable, optional
        ``perturbation(x, generator) -> delta`` for one draw of the whole batch, instead of
        the uniform ball.
    generator : torch.Generator or int, optional
        Randomness of the noise.
    chunk_size : int, optional
        Noisy inputs per ``explain`` call.
    """
    x = check_input(x, owner)
    target = check_target(target, x.shape[0], owner)
    check_positive_int(n_samples, "n_samples", owner)
    check_chunk_size(chunk_size, owner)
    if perturbation is None and not (isinstance(radius, int | float) and radius > 0):
        raise ValueError(f"{owner}(radius={radius!r}): expected a positive number.")
    generator = make_generator(generator, owner)
    batch = x.shape[0]
    if attribution is None:
        attribution = chunked_explain(explain, x, target, chunk_size, owner)
    elif not isinstance(attribution, Tensor) or attribution.shape[0] != batch:
        raise ValueError(
            f"{owner}(attribution=...): expected one attribution per sample ({batch})."
        )
    attribution = attribution.detach()
    if perturbation is None:
        noise = torch.rand((n_samples, *x.shape), generator=generator, dtype=x.dtype)
        noise = (2 * noise - 1).mul_(radius).to(x.device)
    else:
        noise = torch.stack([perturbation(x, generator) for _ in range(n_samples)])
        if noise.shape[1:] != x.shape:
            raise ValueError(
                f"{owner}(perturbation=...): expected perturbation(x, generator) to return a "
                f"tensor of the input's shape {tuple(x.shape)}, got {tuple(noise.shape[1:])}."
            )
    noisy = (x[None] + noise).reshape(n_samples * batch, *x.shape[1:])
    explained = chunked_explain(explain, noisy, target.repeat(n_samples), chunk_size, owner)
    explained = explained.reshape(n_samples, batch, -1).to(attribution.dtype)
    reference = attribution.reshape(1, batch, -1)
    distance = (explained - reference).norm(dim=-1).T  # (batch, n_samples)
    if relative:
        norm = reference[0].norm(dim=-1)[:, None]
        distance = distance / norm.clamp_min(torch.finfo(distance.dtype).tiny)
    return distance


def max_sensitivity(explain: Callable, x: Tensor, target: Any, **options: Any) -> Tensor:
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
    return sensitivities(explain, x, target, owner="max_sensitivity", **options).amax(dim=1)


def avg_sensitivity(explain: Callable, x: Tensor, target: Any, **options: Any) -> Tensor:
    """Average sensitivity [yeh2019]: ``E_delta ||Phi(x + delta) - Phi(x)||``, ``delta`` uniform.

    Monte-Carlo mean over ``n_samples`` draws (see :func:`sensitivities`). Lower is better.

    Returns
    -------
    Tensor
        ``(batch,)``.
    """
    return sensitivities(explain, x, target, owner="avg_sensitivity", **options).mean(dim=1)
