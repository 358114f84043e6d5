"""Attributors: pure functions on ``(fn, params, input, attr_output_fn)`` and Zennit-style classes.

The pure layer is built on :func:`pullback`, which runs the model once and returns its output
and a function from output gradients to input attributions (``torch.func.vjp``). The classes
(:class:`Attributor`, :class:`Gradient`) keep Zennit's signatures and delegate to it.

``attr_output_fn`` (Zennit's ``attr_output``) says which output gradient to pull back:
``None`` uses the output itself, a tensor is used as it is, and a callable is called on the
output, e.g. ``one_hot(target)``.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from itertools import product
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from funcattr.core import concrete_value, is_differentiated, is_transformed, rules_at_this_level

__all__ = [
    "Attributor",
    "Gradient",
    "IntegratedGradients",
    "Occlusion",
    "SmoothGrad",
    "constant",
    "gradient",
    "identity",
    "integrated_gradients",
    "multi_target",
    "occlude_independent",
    "occlusion",
    "one_hot",
    "pullback",
    "smooth_grad",
    "top_k_targets",
]

AttrOutput = Tensor | Callable[[Tensor], Tensor] | None
Params = Mapping[str, Tensor]
T = TypeVar("T")


def identity(obj: Any) -> Any:
    """Return ``obj`` unchanged (the default ``attr_output_fn``: pull back the output)."""
    return obj


identity.rowwise = True  # acts on each output row alone (see _seeds)


def constant(obj: Any) -> Callable[..., Any]:
    """Return a function that ignores its arguments and returns ``obj``."""

    def constant_fn(*args, **kwargs):
        return obj

    return constant_fn


def _as_attr_output_fn(attr_output: AttrOutput, owner: str) -> Callable[[Tensor], Tensor]:
    if attr_output is None:
        return identity
    if callable(attr_output):
        return attr_output
    if isinstance(attr_output, Tensor):
        return constant(attr_output)
    raise TypeError(
        f"{owner}(attr_output={type(attr_output).__name__}): expected None, a tensor shaped like "
        f"the output, or a callable output -> output gradient such as one_hot(target)."
    )


def one_hot(target: int | Sequence[int] | Tensor | None = None, *,
            times_output: bool = False) -> Callable[[Tensor], Tensor]:
    """Output gradient selecting ``target`` classes: ``attr_output_fn`` for classifiers.

    Parameters
    ----------
    target : int, sequence of int, tensor, or None
        One class for the whole batch, one per sample (shape ``(batch,)``), or ``None`` for
        each sample's predicted class (argmax of the output).
    times_output : bool
        Multiply by the output (Zennit's relevance convention ``output * one_hot``).

    Returns
    -------
    callable
        ``output -> tensor`` shaped like the ``(batch, classes)`` output.

    Examples
    --------
    >>> output, relevance = gradient(fn, params, x, one_hot([3, 1]))  # doctest: +SKIP
    """
    if isinstance(target, bool) or not (
        target is None or isinstance(target, int | Tensor)
        or (isinstance(target, Sequence) and all(isinstance(t, int) for t in target))
    ):
        raise TypeError(
            f"one_hot(target={target!r}): expected an int, a sequence of ints, an integer tensor "
            f"or None."
        )
    if isinstance(target, Tensor) and (target.is_floating_point() or target.ndim > 1):
        raise TypeError(
            f"one_hot(target=tensor of dtype {target.dtype}, shape {tuple(target.shape)}): "
            f"expected an integer tensor of shape (batch,)."
        )

    def one_hot_fn(output: Tensor) -> Tensor:
        if output.ndim != 2:
            raise ValueError(
                f"one_hot(target={target!r}): expected a (batch, classes) output, got shape "
                f"{tuple(output.shape)}. Pass a tensor or your own callable as attr_output_fn."
            )
        batch, classes = output.shape
        index = output.argmax(dim=1) if target is None else torch.as_tensor(
            target, device=output.device
        )
        index = index.expand(batch) if index.ndim == 0 else index
        if index.shape != (batch,):
            raise ValueError(
                f"one_hot(target={target!r}): expected one target or one per sample ({batch}), "
                f"got {tuple(index.shape)}."
            )
        plain = concrete_value(index)
        if plain is not None and bool(((plain < 0) | (plain >= classes)).any()):
            raise ValueError(
                f"one_hot(target={target!r}): target out of range for an output with {classes} "
                f"classes; expected values in [0, {classes - 1}]."
            )
        result = torch.nn.functional.one_hot(index, classes).to(output.dtype)
        return result * output if times_output else result

    one_hot_fn.__qualname__ = f"one_hot({target!r})"
    # row by row (the same class for every sample): stacked copies need no vmap (_seeds)
    one_hot_fn.rowwise = target is None or isinstance(target, int) or (
        isinstance(target, Tensor) and target.ndim == 0)
    return one_hot_fn


def _check_input(input: Any, owner: str) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"{owner}(input={type(input).__name__}): expected a torch.Tensor.")
    plain = concrete_value(input)
    if plain is not None and plain.is_floating_point() and not bool(torch.isfinite(plain).all()):
        raise ValueError(
            f"{owner}(input=tensor of shape {tuple(input.shape)}): expected finite values, got "
            f"NaN or infinity. Clean the input (e.g. torch.nan_to_num) before explaining it."
        )


def _call_model(fn: Callable, params: Params, input: Tensor, owner: str) -> Tensor:
    try:
        return fn(params, input)
    except (RuntimeError, ValueError) as error:
        text = str(error)
        torch_shape_error = isinstance(error, RuntimeError) and ("shape" in text or "size" in text)
        if not torch_shape_error and "D input (got" not in text:  # e.g. BatchNorm's ValueError
            raise
        raise ValueError(
            f"{owner}(input=tensor of shape {tuple(input.shape)}): the model could not process "
            f"an input of this shape ({str(error).splitlines()[0]}). Pass an input shaped as "
            f"the model expects, with the batch dimension first."
        ) from error


def pullback(fn: Callable, params: Params, input: Tensor, *,
             owner: str = "pullback") -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """Run ``fn(params, input)`` once; return the output and ``output gradient -> attribution``.

    Several output gradients cost one forward pass: ``torch.func.vmap(pull)(stacked)``.
    ``pull(output_grad, last=True)`` says no call follows: the backward then frees the
    forward's graph as it goes, which saves memory and time. Outside ``torch.func``
    transforms and when nothing differentiates the attribution, the pullback runs on plain
    autograd (no transform overhead, no graph of the backward); otherwise on
    ``torch.func.vjp``, where rules act at this pullback's level only.
    """
    _check_input(input, owner)
    values = [input, *params.values()]
    if is_differentiated(values) or any(is_transformed(value) for value in values):
        return _vjp_pullback(fn, params, input, owner)
    return _autograd_pullback(fn, params, input, owner)


def _autograd_pullback(fn, params, input, owner):
    leaf = input.detach().requires_grad_(True)
    with torch.enable_grad(), rules_at_this_level():
        output = _call_model(fn, params, leaf, owner)

    def pull(output_grad: Tensor, stacked: bool = False, last: bool = False) -> Tensor:
        """The attribution for ``output_grad``; with ``stacked``, for each of the output
        gradients stacked in its first dimension, as one batched backward. ``last``: no
        further call follows, so the backward frees the graph as it goes (and its memory is
        reused at once, which is faster)."""
        shape = (*output_grad.shape[:1], *input.shape) if stacked else input.shape
        if not output.requires_grad:  # the output does not depend on the input
            return input.new_zeros(shape)
        if stacked:
            grad = torch.func.vmap(lambda one: torch.autograd.grad(
                output, leaf, one, retain_graph=not last, allow_unused=True)[0])(output_grad)
        else:
            (grad,) = torch.autograd.grad(output, leaf, output_grad, retain_graph=not last,
                                          allow_unused=True)
        return input.new_zeros(shape) if grad is None else grad

    return output.detach(), pull


def _vjp_pullback(fn, params, input, owner):
    differentiated = is_differentiated([input, *params.values()])

    def model(x: Tensor) -> Tensor:
        with rules_at_this_level():
            return _call_model(fn, params, x, owner)

    output, vjp_fn = torch.func.vjp(model, input)

    def pull(output_grad: Tensor, last: bool = False) -> Tensor:
        if differentiated or is_differentiated([output_grad]):
            return vjp_fn(output_grad)[0]
        with torch.no_grad():  # nobody differentiates the attribution: record no graph
            return vjp_fn(output_grad)[0]

    return output, pull


def _seed(output: Tensor, attr_output_fn: Callable[[Tensor], Tensor], owner: str) -> Tensor:
    """The output gradient ``attr_output_fn(output)``, checked against the output's shape."""
    seed = attr_output_fn(output)
    if not isinstance(seed, Tensor) or seed.shape != output.shape:
        got = tuple(seed.shape) if isinstance(seed, Tensor) else type(seed).__name__
        raise ValueError(
            f"{owner}(attr_output_fn=...): expected an output gradient of the output's shape "
            f"{tuple(output.shape)}, got {got}."
        )
    return seed.to(output.dtype) if seed.dtype != output.dtype else seed


def gradient(fn: Callable, params: Params, input: Tensor,
             attr_output_fn: AttrOutput = None) -> tuple[Tensor, Tensor]:
    """The (rule-modified) gradient of ``fn(params, input)`` pulled back from the output.

    Parameters
    ----------
    fn : callable
        ``fn(params, input) -> output``, e.g. from :func:`funcattr.functionalize`.
    params : dict of str to Tensor
        The parameters passed to ``fn``.
    input : Tensor
        The input, batch dimension first.
    attr_output_fn : callable, tensor or None
        The output gradient: ``None`` for the output itself, a tensor, or ``output -> tensor``
        such as :func:`one_hot`.

    Returns
    -------
    output : Tensor
        ``fn(params, input)``.
    attribution : Tensor
        Shaped like ``input``.

    Examples
    --------
    >>> fn, params = functionalize(model, EpsilonPlusFlat())              # doctest: +SKIP
    >>> output, relevance = gradient(fn, params, x, one_hot(3, times_output=True))  # doctest: +SKIP
    """
    attr_output_fn = _as_attr_output_fn(attr_output_fn, "gradient")
    output, pull = pullback(fn, params, input, owner="gradient")
    seed = _seed(output, attr_output_fn, "gradient")
    return output, pull(seed, last=True)


# --------------------------------------------------------------------------------------------
# Batched attributors: every sample / path point / window / target in one batched computation
# --------------------------------------------------------------------------------------------
#
# SmoothGrad's noisy copies, Integrated Gradients' path points and Occlusion's occluded inputs
# are *stacked into the batch dimension* and sent through ``fn`` as one large batch (chunked
# by ``chunk_size``); the output gradients of all copies come from one ``vmap`` of
# ``attr_output_fn`` over the copies. Stacking was measured against ``torch.func.vmap`` over
# per-copy pullbacks (benchmarks/bench_attributors.py prints both): the results are the same,
# stacking is as fast or faster on CPU, and it keeps the plain-autograd pullback. It assumes
# what Zennit's loops assume too: the model treats the samples of a batch independently
# (eval mode: BatchNorm uses its running statistics, no batch-dependent layers).
#
# Several targets of one input (multi_target) are different: there is one forward pass and one
# ``vmap`` of the pullback over the stacked output gradients.

def _check_int(value: Any, name: str, owner: str, *, minimum: int, example: str,
               optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        expected = f"None or an int >= {minimum}" if optional else f"an int >= {minimum}"
        raise TypeError(
            f"{owner}({name}={value!r}): expected {expected}, got {type(value).__name__}. "
            f"Pass e.g. {name}={example}."
        )
    if value < minimum:
        raise ValueError(
            f"{owner}({name}={value}): {name} must be >= {minimum}, got {value}. "
            f"Pass e.g. {name}={example}."
        )


def _check_chunk_size(chunk_size: Any, owner: str) -> None:
    _check_int(chunk_size, "chunk_size", owner, minimum=1, example="8", optional=True)


def _check_n_iter(n_iter: Any, owner: str) -> None:
    _check_int(n_iter, "n_iter", owner, minimum=1, example="20")


def _check_noise_level(noise_level: Any, owner: str) -> None:
    if isinstance(noise_level, bool) or not isinstance(noise_level, numbers.Real):
        raise TypeError(
            f"{owner}(noise_level={noise_level!r}): expected a float >= 0, got "
            f"{type(noise_level).__name__}. Pass e.g. noise_level=0.1."
        )
    if not math.isfinite(noise_level) or noise_level < 0:
        raise ValueError(
            f"{owner}(noise_level={noise_level}): expected a finite noise level >= 0 (the noise "
            f"std relative to each sample's value range), got {noise_level}. Pass e.g. "
            f"noise_level=0.1."
        )


def _check_generator(generator: Any, owner: str) -> None:
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, bool) or not isinstance(generator, numbers.Integral):
        raise TypeError(
            f"{owner}(generator={generator!r}): expected None (torch's global generator), an "
            f"int seed or a torch.Generator, got {type(generator).__name__}."
        )


def _check_batched(input: Tensor, owner: str) -> None:
    if input.ndim == 0:
        raise ValueError(
            f"{owner}(input=tensor of shape ()): expected a batch dimension first, got a "
            f"0-dim tensor. Pass input[None]."
        )


def _chunks(count: int, chunk_size: int | None) -> list[tuple[int, int]]:
    step = count if chunk_size is None else chunk_size
    return [(start, min(start + step, count)) for start in range(0, count, step)]


def _map(function: Callable, items: Tensor, *args: Any) -> Tensor | None:
    """``stack([function(*args, item) for item in items])`` as one ``vmap``; ``None`` if the
    function cannot be vmapped (the caller then loops, which also raises the function's own
    errors with their own messages)."""
    try:
        result = torch.func.vmap(lambda item: function(*args, item))(items)
    except Exception:  # not vmappable (e.g. .item(), data-dependent control flow): loop
        return None
    return result if isinstance(result, Tensor) else None


def _seeds(outputs: Tensor, attr_output_fn: Callable[[Tensor], Tensor], owner: str) -> Tensor:
    """``attr_output_fn`` of each copy's ``(batch, ...)`` output, stacked like ``outputs``.

    Functions marked ``rowwise`` (``identity``, ``one_hot`` of one class or of the argmax)
    act on each output row alone: one call on all rows. Others: one ``vmap`` over the copies,
    or a loop where the function cannot be vmapped.
    """
    if getattr(attr_output_fn, "rowwise", False):
        rows = outputs.reshape(-1, *outputs.shape[2:])
        return _seed(rows, attr_output_fn, owner).reshape(outputs.shape)
    if outputs.shape[0] > 1:
        seeds = _map(attr_output_fn, outputs)
        if seeds is not None and seeds.shape == outputs.shape:
            return seeds.to(outputs.dtype) if seeds.dtype != outputs.dtype else seeds
    return torch.stack([_seed(output, attr_output_fn, owner) for output in outputs])


def _unstack(output: Tensor, copies: int, batch: int, owner: str) -> Tensor:
    """View the output of a stacked batch as ``(copies, batch, ...)``."""
    if output.ndim == 0 or output.shape[0] != copies * batch:
        raise ValueError(
            f"{owner}(fn=...): expected an output with the batch dimension first "
            f"({copies * batch} rows for {copies} stacked copies of a batch of {batch}), got "
            f"shape {tuple(output.shape)}. The batched attributors stack copies of the input "
            f"into the batch dimension; the model must treat batch samples independently."
        )
    return output.reshape(copies, batch, *output.shape[1:])


def _stacked_pullbacks(fn: Callable, params: Params, samples: Callable[[int, int], Tensor],
                       count: int, attr_output_fn: Callable[[Tensor], Tensor],
                       chunk_size: int | None, owner: str):
    """For each chunk: the copies ``samples(start, stop)`` (``(copies, *input.shape)``) as one
    batch through ``fn``; yields ``(outputs, attributions)`` shaped ``(copies, batch, ...)``."""
    for start, stop in _chunks(count, chunk_size):
        chunk = samples(start, stop)
        copies, batch = chunk.shape[0], chunk.shape[1]
        output, pull = pullback(fn, params, chunk.reshape(copies * batch, *chunk.shape[2:]),
                                owner=owner)
        outputs = _unstack(output, copies, batch, owner)
        seeds = _seeds(outputs, attr_output_fn, owner)
        yield outputs, pull(seeds.reshape(output.shape), last=True).reshape(chunk.shape)


def _mean_gradient(fn, params, input, samples, count, attr_output_fn, chunk_size, owner):
    """``(output of the last copy, sum_n grad_n / count)``, summed in copy order as Zennit does
    (so every ``chunk_size`` adds the same numbers in the same order)."""
    result, output = torch.zeros_like(input), None
    for outputs, grads in _stacked_pullbacks(fn, params, samples, count, attr_output_fn,
                                             chunk_size, owner):
        for grad in grads / count:
            result = result + grad
        output = outputs[-1]
    return output, result


def _draw_noise(input: Tensor, count: int, generator: int | torch.Generator | None,
                owner: str) -> Tensor:
    """``count`` standard-normal tensors shaped like ``input``, drawn one after another (the
    order of Zennit's ``randn_like`` calls, so a seeded global generator gives its noise)."""
    if isinstance(generator, numbers.Integral):
        generator = torch.Generator(device=input.device).manual_seed(int(generator))
    shape = tuple(input.shape)
    try:
        draws = [torch.randn(shape, generator=generator, dtype=input.dtype, device=input.device)
                 for _ in range(count)]
    except RuntimeError as error:
        if "randomness" not in str(error):
            raise
        raise RuntimeError(
            f"{owner}(noise=None): cannot draw noise inside torch.func.vmap in its default "
            f"randomness='error' mode. Draw the noise before vmap and pass it as noise=..., or "
            f"use vmap(..., randomness='different')."
        ) from error
    return torch.stack(draws) if draws else input.new_zeros((0, *shape))


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
        Where the noise comes from: a seed, a generator, or ``None`` for torch's global
        generator (``torch.manual_seed(s)`` then reproduces Zennit's noise exactly).
    noise : Tensor, optional
        The standard-normal noise itself, shaped ``(n_iter - 1, *input.shape)``; it is
        multiplied by ``std``. Pass it under ``torch.func.vmap`` (which refuses random draws)
        or to share noise between calls. Excludes ``generator``.
    chunk_size : int, optional
        How many copies to evaluate at once, each with the whole batch; ``None``: all at
        once. Bounds memory; any value gives the same result.

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
    attr_output_fn = _as_attr_output_fn(attr_output_fn, owner)
    _check_input(input, owner)
    _check_batched(input, owner)
    _check_n_iter(n_iter, owner)
    _check_noise_level(noise_level, owner)
    _check_generator(generator, owner)
    _check_chunk_size(chunk_size, owner)
    if noise is None:
        noise = _draw_noise(input, n_iter - 1, generator, owner)
    else:
        expected = (n_iter - 1, *input.shape)
        if not isinstance(noise, Tensor):
            raise TypeError(
                f"{owner}(noise={type(noise).__name__}): expected a tensor of shape {expected} "
                f"(standard-normal noise, one per noisy copy) or None."
            )
        if tuple(noise.shape) != expected:
            raise ValueError(
                f"{owner}(noise=tensor of shape {tuple(noise.shape)}): expected shape {expected}: "
                f"n_iter - 1 = {n_iter - 1} noisy copies of the input (the last copy is "
                f"noise-free). Pass noise=torch.randn({', '.join(map(str, expected))})."
            )
        if generator is not None:
            raise ValueError(
                f"{owner}(generator={generator!r}, noise=...): pass either the noise or a "
                f"generator to draw it from, not both."
            )
    batch = input.shape[0]
    flat = input.reshape(batch, -1)
    span = (flat.amax(1) - flat.amin(1)) if flat.shape[1] else flat.new_zeros(batch)
    std = noise_level * span.reshape(batch, *(1,) * (input.ndim - 1))

    def samples(start: int, stop: int) -> Tensor:
        noisy = stop if stop < n_iter else n_iter - 1
        parts = [input + noise[start:noisy] * std] if start < noisy else []
        if stop == n_iter:
            parts.append(input[None])
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    return _mean_gradient(fn, params, input, samples, n_iter, attr_output_fn, chunk_size, owner)


def _baseline(baseline_fn: Any, input: Tensor, owner: str) -> Tensor:
    if baseline_fn is None:
        return torch.zeros_like(input)
    if isinstance(baseline_fn, Tensor):
        baseline = baseline_fn
    elif callable(baseline_fn):
        baseline = baseline_fn(input)
    else:
        raise TypeError(
            f"{owner}(baseline_fn={type(baseline_fn).__name__}): expected None (zeros), a "
            f"callable input -> baseline, or a tensor."
        )
    shape = tuple(input.shape)
    got = tuple(baseline.shape) if isinstance(baseline, Tensor) else type(baseline).__name__
    try:
        fits = isinstance(baseline, Tensor) and torch.broadcast_shapes(baseline.shape,
                                                                       shape) == shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"{owner}(baseline_fn=...): expected a baseline shaped like the input {shape} (or "
            f"broadcasting to it, e.g. (1, C, 1, 1)), got {got}. Pass e.g. "
            f"baseline_fn=torch.zeros_like."
        )
    return baseline


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
        How many path points to evaluate at once, each with the whole batch; ``None``: all at
        once. Bounds memory; any value gives the same result.

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
    attr_output_fn = _as_attr_output_fn(attr_output_fn, owner)
    _check_input(input, owner)
    _check_batched(input, owner)
    _check_n_iter(n_iter, owner)
    _check_chunk_size(chunk_size, owner)
    if alpha_dtype is not None and not isinstance(alpha_dtype, torch.dtype):
        raise TypeError(
            f"{owner}(alpha_dtype={alpha_dtype!r}): expected a torch.dtype or None, got "
            f"{type(alpha_dtype).__name__}. Pass e.g. alpha_dtype=torch.float32."
        )
    baseline = _baseline(baseline_fn, input, owner)
    alphas = torch.linspace(1.0 / n_iter, 1.0, n_iter, dtype=alpha_dtype or input.dtype,
                            device=input.device).to(input.dtype)
    difference = input - baseline

    def samples(start: int, stop: int) -> Tensor:
        alpha = alphas[start:stop].reshape(stop - start, *(1,) * input.ndim)
        return baseline + alpha * difference

    output, result = _mean_gradient(fn, params, input, samples, n_iter, attr_output_fn,
                                    chunk_size, owner)
    return output, result * difference


def occlude_independent(input: Tensor, mask: Tensor, fill_fn: Callable[[Tensor], Tensor] =
                        torch.zeros_like, invert: bool = False) -> Tensor:
    """Keep ``input`` where ``mask`` is True and fill the rest with ``fill_fn(input)``.

    Zennit's default occlusion: the window is *kept* and everything outside it is filled
    (with ``invert=True`` the window is filled instead).
    """
    if invert:
        mask = ~mask
    return input * mask + ~mask * fill_fn(input)


def _window_option(value: Any, name: str, owner: str) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool)) and not (
        isinstance(value, tuple)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise TypeError(
            f"{owner}({name}={value!r}): expected an int or a tuple of ints, got "
            f"{type(value).__name__}. Pass e.g. {name}=8 or {name}=(8, 8)."
        )
    values = (value,) if isinstance(value, int) else value
    if any(v < 1 for v in values):
        raise ValueError(f"{owner}({name}={value!r}): every size must be >= 1, got {value!r}.")


def _window_and_stride(window: int | tuple[int, ...], stride: int | tuple[int, ...],
                       shape: tuple[int, ...], owner: str) -> tuple[tuple[int, ...], ...]:
    """Zennit's resolution: an int is clipped to each non-batch size; a short tuple covers the
    last dimensions, the leading ones take the full size (window) and the window (stride)."""
    ndim = len(shape)
    for name, value in (("window", window), ("stride", stride)):
        if isinstance(value, tuple) and len(value) > ndim:
            raise ValueError(
                f"{owner}({name}={value!r}): expected at most {ndim} sizes for an input of shape "
                f"{shape}, got {len(value)}."
            )
    given = window
    if isinstance(window, int):
        window = tuple(min(window, size) for size in shape[1:])
    if isinstance(stride, int):
        stride = tuple(min(stride, size) for size in shape[1:])
    window = shape[:ndim - len(window)] + window
    stride = window[:len(window) - len(stride)] + stride
    if any(w > size for w, size in zip(window, shape)):
        raise ValueError(
            f"{owner}(window={given!r}): the window is larger than the "
            f"input of shape {shape} (resolved window {window}). Pass a smaller window, or an "
            f"int window, which is clipped to the input's size."
        )
    return window, stride


def _window_masks(shape: tuple[int, ...], window: tuple[int, ...], offsets: Tensor) -> Tensor:
    """``(len(offsets), *shape)`` boolean masks: the box ``[0, window)`` rolled by each offset
    (wrapping around), i.e. ``(i - offset) mod size < window`` in every dimension."""
    masks = None
    for dim, (size, extent) in enumerate(zip(shape, window)):
        index = torch.arange(size, device=offsets.device)
        inside = torch.remainder(index - offsets[:, dim, None], size) < extent
        view = [offsets.shape[0]] + [1] * len(shape)
        view[dim + 1] = size
        inside = inside.reshape(view)
        masks = inside if masks is None else masks & inside
    return masks.expand(offsets.shape[0], *shape)


def _occluded(occlusion_fn: Callable, input: Tensor, masks: Tensor, owner: str) -> Tensor:
    if occlusion_fn is None:  # keep the window, zeros outside: one broadcast
        return input * masks
    occluded = _map(lambda mask: occlusion_fn(input, mask), masks)
    if occluded is None or occluded.shape != masks.shape:
        occluded = torch.stack([occlusion_fn(input, mask) for mask in masks])
    if occluded.shape != masks.shape:
        raise ValueError(
            f"{owner}(occlusion_fn=...): expected an occluded input of the input's shape "
            f"{tuple(input.shape)}, got {tuple(occluded.shape[1:])}."
        )
    return occluded


def occlusion(fn: Callable, params: Params, input: Tensor, attr_output_fn: AttrOutput = None,
              *, occlusion_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
              window: int | tuple[int, ...] = 8, stride: int | tuple[int, ...] = 8,
              chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Occlusion: score the model on occluded inputs and give each window its score.

    Zennit's semantics: a box mask of size ``window`` is moved by ``stride`` over every
    dimension, wrapping around the borders (``roll``); for each position the model sees
    ``occlusion_fn(input, mask)`` (default: keep the window, zeros outside), the window's score
    is ``attr_output_fn(output)`` summed over each sample's non-batch dimensions, and the
    attribution adds ``mask * score``: no normalisation by overlap, no difference to the clean
    output (pass ``attr_output_fn=one_hot(k, times_output=True)`` for the class score). All
    occluded inputs run as one batch (see ``chunk_size``), without gradients.

    Parameters
    ----------
    fn, params, input, attr_output_fn
        As in :func:`gradient`; a composite's rules do not change the result.
    occlusion_fn : callable, optional
        ``(input, mask) -> occluded input``; default ``occlude_independent`` with zeros.
    window, stride : int or tuple of int
        An int is used for every non-batch dimension (clipped to its size); a shorter tuple
        applies to the last dimensions, e.g. ``(8, 8)`` for images ``(batch, C, H, W)``.
    chunk_size : int, optional
        How many windows to evaluate at once, each with the whole batch; ``None``: all at
        once. Bounds memory; any value gives the same result.

    Returns
    -------
    output : Tensor
        ``fn(params, input)``.
    attribution : Tensor
        Shaped like ``input``.

    Examples
    --------
    >>> output, attribution = occlusion(fn, params, x, one_hot(3, times_output=True),
    ...                                 window=(8, 8), stride=(4, 4))  # doctest: +SKIP
    """
    owner = "occlusion"
    attr_output_fn = _as_attr_output_fn(attr_output_fn, owner)
    _check_input(input, owner)
    _check_batched(input, owner)
    _window_option(window, "window", owner)
    _window_option(stride, "stride", owner)
    _check_chunk_size(chunk_size, owner)
    if occlusion_fn is not None and not callable(occlusion_fn):
        raise TypeError(
            f"{owner}(occlusion_fn={type(occlusion_fn).__name__}): expected a callable "
            f"(input, mask) -> occluded input, or None."
        )
    shape = tuple(input.shape)
    window, stride = _window_and_stride(window, stride, shape, owner)
    offsets = torch.tensor(
        list(product(*(range(0, size, step) for size, step in zip(shape, stride)))),
        dtype=torch.long, device=input.device,
    )
    model = _forward_only(fn)
    batch = shape[0]
    differentiated = is_differentiated([input, *params.values()])
    result = torch.zeros_like(input)
    with contextlib.nullcontext() if differentiated else torch.no_grad():
        # the clean output on its own: appending it to a batch of windows can push the batch
        # size past a convolution-kernel threshold (measured: 49 -> 50 costs 40% on a CNN)
        output = _call_model(model, params, input, owner)
        for start, stop in _chunks(len(offsets), chunk_size):
            masks = _window_masks(shape, window, offsets[start:stop])
            occluded = _occluded(occlusion_fn, input, masks, owner)
            stacked = occluded.reshape(-1, *shape[1:])
            outputs = _unstack(
                _call_model(model, params, stacked, owner) if differentiated
                else _call_model_channels_last(model, params, stacked, owner),
                stop - start, batch, owner,
            )
            seeds = _seeds(outputs, attr_output_fn, owner)
            scores = seeds.sum(tuple(range(2, seeds.ndim))) if seeds.ndim > 2 else seeds
            weights = masks.to(result.dtype)  # one conversion instead of one per window
            for weight, score in zip(weights, scores):
                result = result + weight * score.reshape(batch, *(1,) * (input.ndim - 1))
    return output, result


def fast_layout(view: Tensor) -> Tensor:
    """Images in channels-last memory order on CPU (same values; oneDNN convolutions run
    faster on it: one batch of 49 ResNet18 inputs took 1.39 s instead of 1.89 s), so that
    copies built from them inherit that layout."""
    if view.ndim == 4 and view.device.type == "cpu":
        return view.contiguous(memory_format=torch.channels_last)
    return view


def in_fast_layout(call: Callable[[Tensor], T], batch: Tensor) -> T:
    """``call(batch)``, given ``batch`` in :func:`fast_layout` where that can only be faster.

    For float32 CPU image batches outside function transforms; a model that cannot take those
    strides (``.view`` on its input) makes ``call`` fail, and is then called with ``batch``
    as it is.
    """
    if batch.ndim == 4 and batch.dtype == torch.float32 and batch.device.type == "cpu" \
            and not is_transformed(batch):
        try:
            return call(fast_layout(batch))
        except (RuntimeError, ValueError):
            pass  # e.g. "view size is not compatible with input tensor's size and stride"
    return call(batch)


def _call_model_channels_last(fn: Callable, params: Params, batch: Tensor, owner: str) -> Tensor:
    """``_call_model`` on a batch this module built itself, for values only, in
    :func:`fast_layout` where possible."""
    return in_fast_layout(lambda view: _call_model(fn, params, view, owner), batch)


def _forward_only(fn: Callable) -> Callable:
    """The model without rules where ``fn`` offers it (rules change gradients, not values)."""
    from funcattr.functional import FunctionalModel

    return fn.plain if isinstance(fn, FunctionalModel) else fn


# --------------------------------------------------------------------------------------------
# Several targets at once: one forward pass, one vmapped pullback
# --------------------------------------------------------------------------------------------

def top_k_targets(k: int) -> Callable[[Tensor], Tensor]:
    """Targets for :func:`multi_target`: each sample's ``k`` highest-scoring classes.

    Returns
    -------
    callable
        ``output -> (k, batch)`` class indices, highest score first.

    Examples
    --------
    >>> output, relevance = multi_target(fn, params, x, top_k_targets(5))  # doctest: +SKIP
    """
    _check_int(k, "k", "top_k_targets", minimum=1, example="5")

    def top_k(output: Tensor) -> Tensor:
        if output.ndim != 2 or output.shape[1] < k:
            raise ValueError(
                f"top_k_targets(k={k}): expected a (batch, classes) output with at least {k} "
                f"classes, got shape {tuple(output.shape)}."
            )
        return output.topk(k, dim=1).indices.T

    top_k.__qualname__ = f"top_k_targets({k})"
    return top_k


def _target_index(targets: Any, output: Tensor, owner: str) -> Tensor:
    """The targets as a ``(K, batch)`` integer tensor, checked against the output."""
    shown = (f"tensor of shape {tuple(targets.shape)}" if isinstance(targets, Tensor)
             else targets)
    index = targets(output) if callable(targets) else torch.as_tensor(targets,
                                                                      device=output.device)
    if not isinstance(index, Tensor) or index.is_floating_point() or index.is_complex() or (
        index.dtype == torch.bool
    ):
        raise TypeError(
            f"{owner}(targets={shown!r}): expected integer class indices, got "
            f"{index.dtype if isinstance(index, Tensor) else type(index).__name__}."
        )
    if output.ndim != 2:
        raise ValueError(
            f"{owner}(targets=...): expected a (batch, classes) output, got shape "
            f"{tuple(output.shape)}."
        )
    batch, classes = output.shape
    if index.ndim == 1:
        index = index[:, None].expand(index.shape[0], batch)
    if index.ndim != 2 or index.shape[1] != batch or index.shape[0] == 0:
        raise ValueError(
            f"{owner}(targets={shown!r}): expected K >= 1 targets, as a sequence of K classes "
            f"(the same for every sample) or a (K, batch={batch}) tensor, got shape "
            f"{tuple(index.shape)}."
        )
    plain = concrete_value(index)
    if plain is not None and bool(((plain < 0) | (plain >= classes)).any()):
        raise ValueError(
            f"{owner}(targets={shown!r}): target out of range for an output with {classes} "
            f"classes; expected values in [0, {classes - 1}]."
        )
    return index


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
        How many targets to pull back at once (``torch.func.vmap``'s ``chunk_size``);
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
    if not (callable(targets) or isinstance(targets, Tensor | Sequence)) or isinstance(
        targets, str | bytes
    ):
        raise TypeError(
            f"{owner}(targets={targets!r}): expected a sequence of ints, an integer tensor of "
            f"shape (K,) or (K, batch), or a callable output -> (K, batch) such as "
            f"top_k_targets(5)."
        )
    _check_input(input, owner)
    _check_batched(input, owner)
    _check_chunk_size(chunk_size, owner)
    values = [input, *params.values()]
    if is_differentiated(values) or any(is_transformed(value) for value in values):
        output, pull = _vjp_pullback(fn, params, input, owner)
        pull_stacked = torch.func.vmap(pull, chunk_size=chunk_size)
    else:  # plain autograd; its backward under a vmap over the targets only
        output, pull = _autograd_pullback(fn, params, input, owner)

        def pull_stacked(seeds: Tensor) -> Tensor:
            chunks = _chunks(seeds.shape[0], chunk_size)
            return torch.cat([pull(seeds[start:stop], stacked=True, last=stop == chunks[-1][1])
                              for start, stop in chunks])

    index = _target_index(targets, output, owner)
    seeds = torch.nn.functional.one_hot(index, output.shape[1]).to(output.dtype)
    if times_output:
        seeds = seeds * output
    return output, pull_stacked(seeds)


# --------------------------------------------------------------------------------------------
# Zennit-compatible stateful layer
# --------------------------------------------------------------------------------------------

class Attributor(ABC):
    """Base of the Zennit-style attributors: ``with Gradient(model, composite) as attributor``.

    Parameters
    ----------
    model : torch.nn.Module
        The model; never changed.
    composite : Composite, optional
        Rules to apply. While the attributor is active (inside ``with`` or a call),
        ``self.model`` is a rule-applied view of the model, so subclasses written for Zennit
        that call ``self.model`` get rule-modified gradients.
    attr_output : tensor or callable, optional
        Default output gradient (see :func:`gradient`); a call-time ``attr_output`` wins.
    """

    def __init__(self, model: nn.Module, composite=None, attr_output: AttrOutput = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"{type(self).__name__}(model={type(model).__name__}): expected a torch.nn.Module."
            )
        self._model = model
        self.composite = composite
        self.attr_output_fn = _as_attr_output_fn(attr_output, type(self).__name__)
        self._depth = 0
        self._state: tuple | None = None

    # -- the functional state, built on entering ------------------------------------------
    @property
    def model(self) -> nn.Module:
        """The rule-applied model while active, the original model otherwise."""
        if self._state is not None and self.composite is not None:
            return self._state[2]
        return self._model

    @model.setter
    def model(self, value: nn.Module) -> None:
        self._model = value

    @property
    def fn(self) -> Callable:
        """The functionalized model (built on entering the attributor)."""
        return self._active_state()[0]

    @property
    def params(self) -> dict[str, Tensor]:
        """The model's params dict for :attr:`fn`."""
        return self._active_state()[1]

    def _active_state(self) -> tuple:
        if self._state is None:
            raise RuntimeError(
                f"{type(self).__name__}: not active; use `with {type(self).__name__}(...) as "
                f"attributor:` or call the attributor."
            )
        return self._state

    def __enter__(self) -> Attributor:
        if self._depth == 0:
            from funcattr.functional import RuledModule, functionalize

            fn, params = functionalize(self._model, self.composite)
            ruled = RuledModule(self._model, self.composite) if self.composite is not None else None
            self._state = (fn, params, ruled)
        self._depth += 1
        return self

    def __exit__(self, *exc_info) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._state = None

    def __call__(self, input: Tensor, attr_output: AttrOutput = None) -> tuple[Tensor, Tensor]:
        """Attribute ``input``; returns ``(output, attribution)``."""
        attr_output_fn = (
            self.attr_output_fn if attr_output is None
            else _as_attr_output_fn(attr_output, type(self).__name__)
        )
        with self:
            return self.forward(input, attr_output_fn)

    @abstractmethod
    def forward(self, input: Tensor, attr_output_fn: Callable[[Tensor], Tensor]):
        """Compute ``(output, attribution)``; override in subclasses."""


class Gradient(Attributor):
    """The (rule-modified) gradient, Zennit's ``Gradient``.

    Parameters
    ----------
    create_graph : bool
        Keep the graph so the attribution can be differentiated (input must require grad).
    retain_graph : bool, optional
        Accepted for Zennit compatibility; the pure pullback needs no retained graph.
    """

    def __init__(self, model, composite=None, attr_output=None, create_graph: bool = False,
                 retain_graph: bool | None = None) -> None:
        super().__init__(model, composite, attr_output)
        self.create_graph = create_graph
        self.retain_graph = retain_graph

    def _attribute(self, function: Callable, input: Tensor,
                   attr_output_fn: Callable[[Tensor], Tensor], **options: Any):
        """Call the pure ``function`` on the active ``(fn, params)``, honouring create_graph."""
        if not self.create_graph:
            input = input.detach()
        elif not input.requires_grad:
            input = input.detach().requires_grad_(True)
        with torch.set_grad_enabled(self.create_graph or torch.is_grad_enabled()):
            return function(self.fn, self.params, input, attr_output_fn, **options)

    def forward(self, input, attr_output_fn):
        return self._attribute(gradient, input, attr_output_fn)


class SmoothGrad(Gradient):
    """SmoothGrad, Zennit's ``SmoothGrad``, computed by :func:`smooth_grad` in one batch.

    Parameters
    ----------
    noise_level, n_iter
        As in :func:`smooth_grad`.
    generator : int, torch.Generator or None
        Keyword only. ``None`` (Zennit): torch's global generator; an int re-seeds on every
        call (the same noise each time); a generator advances from call to call.
    chunk_size : int, optional
        Keyword only; see :func:`smooth_grad`.
    """

    def __init__(self, model, composite=None, attr_output=None, create_graph: bool = False,
                 retain_graph: bool | None = None, noise_level: float = 0.1, n_iter: int = 20,
                 *, generator: int | torch.Generator | None = None,
                 chunk_size: int | None = None) -> None:
        super().__init__(model, composite, attr_output, create_graph, retain_graph)
        owner = type(self).__name__
        _check_noise_level(noise_level, owner)
        _check_n_iter(n_iter, owner)
        _check_generator(generator, owner)
        _check_chunk_size(chunk_size, owner)
        self.noise_level, self.n_iter = noise_level, n_iter
        self.generator, self.chunk_size = generator, chunk_size

    def forward(self, input, attr_output_fn):
        return self._attribute(smooth_grad, input, attr_output_fn, noise_level=self.noise_level,
                               n_iter=self.n_iter, generator=self.generator,
                               chunk_size=self.chunk_size)


class IntegratedGradients(Gradient):
    """Integrated Gradients, Zennit's ``IntegratedGradients``, by :func:`integrated_gradients`.

    The alphas are computed in the default dtype, as Zennit does, so results agree bit for bit.

    Parameters
    ----------
    baseline_fn, n_iter
        As in :func:`integrated_gradients`.
    chunk_size : int, optional
        Keyword only; see :func:`integrated_gradients`.
    """

    def __init__(self, model, composite=None, attr_output=None, create_graph: bool = False,
                 retain_graph: bool | None = None, baseline_fn: Any = None, n_iter: int = 20,
                 *, chunk_size: int | None = None) -> None:
        super().__init__(model, composite, attr_output, create_graph, retain_graph)
        owner = type(self).__name__
        _check_n_iter(n_iter, owner)
        _check_chunk_size(chunk_size, owner)
        self.baseline_fn = torch.zeros_like if baseline_fn is None else baseline_fn
        self.n_iter, self.chunk_size = n_iter, chunk_size

    def forward(self, input, attr_output_fn):
        return self._attribute(integrated_gradients, input, attr_output_fn,
                               baseline_fn=self.baseline_fn, n_iter=self.n_iter,
                               alpha_dtype=torch.get_default_dtype(), chunk_size=self.chunk_size)


class Occlusion(Attributor):
    """Occlusion, Zennit's ``Occlusion``, by :func:`occlusion` (all windows in one batch).

    A composite has no effect on the result (no gradient is taken).

    Parameters
    ----------
    occlusion_fn, window, stride
        As in :func:`occlusion`; ``window`` and ``stride`` must be an int or a tuple of ints.
    chunk_size : int, optional
        Keyword only; see :func:`occlusion`.
    """

    def __init__(self, model, composite=None, attr_output=None, occlusion_fn=None,
                 window: int | tuple[int, ...] = 8, stride: int | tuple[int, ...] = 8, *,
                 chunk_size: int | None = None) -> None:
        super().__init__(model, composite, attr_output)
        owner = type(self).__name__
        _window_option(window, "window", owner)
        _window_option(stride, "stride", owner)
        _check_chunk_size(chunk_size, owner)
        if occlusion_fn is None:
            occlusion_fn = partial(occlude_independent, fill_fn=torch.zeros_like, invert=False)
        self.occlusion_fn, self.window, self.stride = occlusion_fn, window, stride
        self.chunk_size = chunk_size

    def forward(self, input, attr_output_fn):
        return occlusion(self.fn, self.params, input.detach(), attr_output_fn,
                         occlusion_fn=self.occlusion_fn, window=self.window, stride=self.stride,
                         chunk_size=self.chunk_size)
