"""Batched attributors: SmoothGrad, Integrated Gradients and several targets at once.

SmoothGrad's noisy copies and Integrated Gradients' path points run as stacked batches
(:mod:`funcattr.attribution.stacking`); several targets of one input (:func:`multi_target`)
are one forward pass and one ``vmap`` of the pullback over the stacked output gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from funcattr.attribution.options import (
    baseline_of,
    check_batched,
    check_chunk_size,
    check_generator,
    check_input,
    check_n_iter,
    check_noise_level,
    check_params,
    check_same_dtype,
    chunk_ranges,
    copies_per_step,
    make_generator,
    shown,
)
from funcattr.attribution.pullback import (
    Params,
    autograd_pullback,
    needs_transforms,
    usable_input,
    vjp_pullback,
)
from funcattr.attribution.stacking import mean_gradient
from funcattr.attribution.targets import (
    AttrOutput,
    as_attr_output_fn,
    check_targets,
    target_index,
)

__all__ = ["draw_noise", "integrated_gradients", "multi_target", "smooth_grad",
           "stacked_pullback"]


def draw_noise(input: Tensor, count: int, generator: int | torch.Generator | None,
               owner: str) -> Tensor:
    """``count`` standard-normal tensors shaped like ``input``, drawn one after another (the
    order of Zennit's ``randn_like`` calls, so a seeded global generator gives its noise)."""
    generator = make_generator(generator, owner, input.device)
    shape = tuple(input.shape)
    try:
        draws = [torch.randn(shape, generator=generator, dtype=input.dtype, device=input.device)
                 for _ in range(count)]
    except RuntimeError as error:
        if "randomness" not in str(error):
            raise
        raise RuntimeError(
            f"{owner}(noise=None): cannot draw noise inside torch.func.vmap in its default "
            f"randomness='error' mode; expected the noise as an argument, got None. Draw the "
            f"noise before vmap and pass it as noise=..., or use "
            f"vmap(..., randomness='different')."
        ) from error
    return torch.stack(draws) if draws else input.new_zeros((0, *shape))


def _check_noise(noise: Any, n_iter: int, input: Tensor, generator: Any, owner: str) -> None:
    expected = (n_iter - 1, *input.shape)
    if not isinstance(noise, Tensor):
        raise TypeError(
            f"{owner}(noise={type(noise).__name__}): expected a tensor of shape {expected} "
            f"(standard-normal noise, one per noisy copy) or None, got "
            f"{type(noise).__name__}. Pass noise=torch.randn{expected}."
        )
    if tuple(noise.shape) != expected:
        raise ValueError(
            f"{owner}(noise={shown(noise)}): expected shape {expected}: n_iter - 1 = "
            f"{n_iter - 1} noisy copies of the input (the last copy is noise-free), got "
            f"{tuple(noise.shape)}. Pass noise=torch.randn({', '.join(map(str, expected))})."
        )
    check_same_dtype(noise, input, f"noise=tensor of dtype {noise.dtype}", owner, "noise",
                     "Pass noise.to(input.dtype)")
    if generator is not None:
        raise ValueError(
            f"{owner}(generator={generator!r}, noise=...): expected the noise or a generator "
            f"to draw it from, got both; pass either the noise or a generator, not both."
        )


def smooth_grad(fn: Callable, params: Params, input: Tensor, attr_output_fn: AttrOutput = None,
                *, noise_level: float = 0.1, n_iter: int = 20,
                generator: int | torch.Generator | None = None, noise: Tensor | None = None,
                chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """SmoothGrad: the mean (rule-modified) gradient over noisy copies of the input.

    Zennit's semantics: copy ``n`` is ``input + noise[n] * std`` with
    ``std = noise_level * (max - min)`` of each sample over its non-batch dimensions; the last
    copy is noise-free, so ``n_iter=1`` is :func:`gradient`; the output is the noise-free one.
    All copies run as one batch (see ``chunk_size``).

    Parameters
    ----------
    fn, params, input, attr_output_fn
        As in :func:`gradient`.
    noise_level : float
        The noise standard deviation relative to each sample's value range.
    n_iter : int
        The number of copies (``n_iter - 1`` noisy ones and the input itself).
    generator : int, torch.Generator or None
        Where the noise comes from (see the vocabulary in ``docs/attributors.md``): ``None``
        for torch's global generator (``torch.manual_seed(s)`` then reproduces Zennit's noise
        exactly), an int seed (the same noise on every call), or a generator.
    noise : Tensor, optional
        The standard-normal noise itself, shaped ``(n_iter - 1, *input.shape)``; it is
        multiplied by ``std``. Pass it under ``torch.func.vmap`` (which refuses random draws)
        or to share noise between calls. Excludes ``generator``.
    chunk_size : int, optional
        Model inputs per step (whole copies of the batch, at least one); ``None``: all copies
        at once. Bounds memory; any value gives the same result.

    Returns
    -------
    output : Tensor
        ``fn(params, input)`` (from the noise-free copy).
    attribution : Tensor
        Shaped like ``input``.

    Examples
    --------
    >>> output, attribution = smooth_grad(fn, params, x, one_hot(3), generator=0)  # doctest: +SKIP
    """
    owner = "smooth_grad"
    attr_output_fn = as_attr_output_fn(attr_output_fn, owner)
    check_input(input, owner)
    check_params(params, owner)
    check_batched(input, owner)
    check_n_iter(n_iter, owner)
    check_noise_level(noise_level, owner)
    check_generator(generator, owner)
    check_chunk_size(chunk_size, owner)
    if noise is None:
        noise = draw_noise(input, n_iter - 1, generator, owner)
    else:
        _check_noise(noise, n_iter, input, generator, owner)
    batch = input.shape[0]
    flat = input.reshape(batch, math.prod(input.shape[1:]))  # also for an empty batch
    span = (flat.amax(1) - flat.amin(1)) if flat.shape[1] else flat.new_zeros(batch)
    std = noise_level * span.reshape(batch, *(1,) * (input.ndim - 1))

    def samples(start: int, stop: int) -> Tensor:
        noisy = stop if stop < n_iter else n_iter - 1
        parts = [input + noise[start:noisy] * std] if start < noisy else []
        if stop == n_iter:
            parts.append(input[None])
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    return mean_gradient(fn, params, input, samples, n_iter, attr_output_fn, chunk_size, owner)


def integrated_gradients(fn: Callable, params: Params, input: Tensor,
                         attr_output_fn: AttrOutput = None, *, baseline_fn: Any = None,
                         n_iter: int = 20, alpha_dtype: torch.dtype | None = None,
                         chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Integrated Gradients: the (rule-modified) gradient averaged along the straight path from
    a baseline to the input, times ``input - baseline``.

    Zennit's path points (a right Riemann sum): ``baseline + alpha * (input - baseline)`` for
    ``alpha`` in ``torch.linspace(1 / n_iter, 1, n_iter)``; the output is the one at
    ``alpha = 1``. All path points run as one batch (see ``chunk_size``).

    Parameters
    ----------
    fn, params, input, attr_output_fn
        As in :func:`gradient`.
    baseline_fn : callable, tensor or None
        ``input -> baseline`` (Zennit), or the baseline tensor; it must be shaped like
        ``input`` or broadcast to it. ``None``: zeros.
    n_iter : int
        The number of path points.
    alpha_dtype : torch.dtype, optional
        The dtype in which the alphas are computed (then cast to the input's). ``None``: the
        input's dtype. Zennit computes them in the default dtype (float32 unless changed); pass
        ``alpha_dtype=torch.get_default_dtype()`` to reproduce it bit for bit, as the
        :class:`IntegratedGradients` class does.
    chunk_size : int, optional
        Model inputs per step (whole copies of the batch, at least one); ``None``: all path
        points at once. Bounds memory; any value gives the same result.

    Returns
    -------
    output : Tensor
        The output at the last path point (the input).
    attribution : Tensor
        Shaped like ``input``.

    Examples
    --------
    >>> output, attribution = integrated_gradients(fn, params, x, one_hot(3))  # doctest: +SKIP
    """
    owner = "integrated_gradients"
    attr_output_fn = as_attr_output_fn(attr_output_fn, owner)
    check_input(input, owner)
    check_params(params, owner)
    check_batched(input, owner)
    check_n_iter(n_iter, owner)
    check_chunk_size(chunk_size, owner)
    if alpha_dtype is not None and not isinstance(alpha_dtype, torch.dtype):
        raise TypeError(
            f"{owner}(alpha_dtype={alpha_dtype!r}): expected a torch.dtype or None, got "
            f"{type(alpha_dtype).__name__}. Pass e.g. alpha_dtype=torch.float32."
        )
    baseline = baseline_of(baseline_fn, input, owner)
    alphas = torch.linspace(1.0 / n_iter, 1.0, n_iter, dtype=alpha_dtype or input.dtype,
                            device=input.device).to(input.dtype)
    difference = input - baseline

    def samples(start: int, stop: int) -> Tensor:
        alpha = alphas[start:stop].reshape(stop - start, *(1,) * input.ndim)
        return baseline + alpha * difference

    output, result = mean_gradient(fn, params, input, samples, n_iter, attr_output_fn,
                                   chunk_size, owner)
    return output, result * difference


def stacked_pullback(fn: Callable, params: Params, input: Tensor, chunk_size: int | None,
                     owner: str) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """One forward pass; ``pull(seeds)`` maps K output gradients stacked as
    ``(K, *output.shape)`` to ``(K, *input.shape)`` attributions, ``chunk_size // batch`` of
    them per batched backward step (all at once for ``None``)."""
    input = usable_input(input, owner)
    batch = input.shape[0]
    if needs_transforms(input, params):
        output, pull = vjp_pullback(fn, params, input, owner)

        def pull_stacked(seeds: Tensor) -> Tensor:
            step = copies_per_step(chunk_size, batch, seeds.shape[0])
            return torch.func.vmap(pull, chunk_size=step)(seeds)
    else:  # plain autograd; its backward under a vmap over the targets only
        output, pull = autograd_pullback(fn, params, input, owner)

        def pull_stacked(seeds: Tensor) -> Tensor:
            steps = chunk_ranges(seeds.shape[0], copies_per_step(chunk_size, batch,
                                                                  seeds.shape[0]))
            return torch.cat([pull(seeds[start:stop], stacked=True, last=stop == steps[-1][1])
                              for start, stop in steps])
    return output, pull_stacked


def multi_target(fn: Callable, params: Params, input: Tensor, targets: Any, *,
                 times_output: bool = False,
                 chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Attributions for K targets at once: one forward pass and one batched (vmapped) backward.

    Parameters
    ----------
    fn, params, input
        As in :func:`gradient`; the model returns ``(batch, classes)``.
    targets : sequence of int, tensor or callable
        K classes for every sample (a sequence or a ``(K,)`` tensor), a ``(K, batch)`` tensor
        of per-sample classes, or ``output -> (K, batch)`` such as :func:`top_k_targets`.
    times_output : bool
        Multiply the one-hot output gradients by the output (Zennit's relevance convention).
    chunk_size : int, optional
        Model inputs per backward step: ``chunk_size // batch`` targets at once (at least one);
        ``None``: all at once. Any value gives the same result.

    Returns
    -------
    output : Tensor
        ``fn(params, input)``.
    attribution : Tensor
        Shaped ``(K, *input.shape)``; row ``k`` equals
        ``gradient(fn, params, input, one_hot(targets[k], times_output=...))[1]``.

    Examples
    --------
    >>> fn, params = functionalize(vgg16, EpsilonPlusFlat())                      # doctest: +SKIP
    >>> output, relevance = multi_target(fn, params, x, top_k_targets(5))         # doctest: +SKIP
    >>> relevance.shape  # (5, *x.shape)                                          # doctest: +SKIP
    """
    owner = "multi_target"
    check_targets(targets, owner)
    check_input(input, owner)
    check_params(params, owner)
    check_batched(input, owner)
    check_chunk_size(chunk_size, owner)
    output, pull_stacked = stacked_pullback(fn, params, input, chunk_size, owner)
    index = target_index(targets, output, owner)
    seeds = torch.nn.functional.one_hot(index, output.shape[1]).to(output.dtype)
    if times_output:
        seeds = seeds * output
    return output, pull_stacked(seeds)
