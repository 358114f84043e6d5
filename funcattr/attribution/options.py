"""Option checks shared by the attributors, the metrics and the command line.

One message format and one exception type per mistake: ``TypeError`` when an option has the
wrong kind, ``ValueError`` when it has the wrong value, and every message reads
``<callable>(<argument>=<value>): expected <what>, got <what came>. <how to fix>.``

The meaning of the shared options (``input``, ``target``, ``generator``, ``chunk_size``) is
defined once, in the vocabulary of ``docs/attributors.md``: ``generator=None`` draws from
torch's global generator everywhere, an int seeds a new generator on every call (the same
draws each time) and a ``torch.Generator`` is used as it is (advancing from call to call);
``chunk_size`` counts model inputs, the rows of the batch the model sees in one call.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from funcattr.core import concrete_value

__all__ = [
    "baseline_of",
    "check_batched",
    "check_chunk_size",
    "check_generator",
    "check_input",
    "check_int",
    "check_n_iter",
    "check_noise_level",
    "check_params",
    "check_positive_number",
    "check_same_dtype",
    "check_window",
    "chunk_ranges",
    "copies_per_step",
    "make_generator",
    "sequence_of_ints",
    "shown",
]


def shown(value: Any) -> str:
    """How a value appears in a message's call: tensors by shape, containers by type."""
    if isinstance(value, Tensor):
        return f"tensor of shape {tuple(value.shape)}"
    if isinstance(value, bool | numbers.Number | str | type(None)):
        return repr(value)
    if isinstance(value, tuple | list) and len(value) <= 8 and all(
        isinstance(v, bool | numbers.Number | str) for v in value
    ):
        return repr(value)
    return type(value).__name__


def check_int(value: Any, name: str, owner: str, *, minimum: int, example: str,
              optional: bool = False) -> int | None:
    """``value`` as an int ``>= minimum`` (or None when ``optional``)."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        expected = f"None or an int >= {minimum}" if optional else f"an int >= {minimum}"
        raise TypeError(
            f"{owner}({name}={value!r}): expected {expected}, got {type(value).__name__}. "
            f"Pass e.g. {name}={example}."
        )
    if value < minimum:
        raise ValueError(
            f"{owner}({name}={value}): expected an int >= {minimum}, got {value}. "
            f"Pass e.g. {name}={example}."
        )
    return int(value)


def check_chunk_size(chunk_size: Any, owner: str) -> int | None:
    """``chunk_size``: None (everything in one call) or the model inputs per call, >= 1."""
    return check_int(chunk_size, "chunk_size", owner, minimum=1, example="32", optional=True)


def check_n_iter(n_iter: Any, owner: str) -> int:
    """``n_iter``: the number of samples or path points, >= 1."""
    return check_int(n_iter, "n_iter", owner, minimum=1, example="20")


def check_positive_number(value: Any, name: str, owner: str, *, example: str,
                          zero: bool = False, kind: str = "number", what: str = "number",
                          meaning: str = "") -> float:
    """A finite real number > 0 (``>= 0`` with ``zero``); ``kind`` names the expected type
    in the ``TypeError``, ``what`` the expected value in the ``ValueError``."""
    bound = ">= 0" if zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{owner}({name}={value!r}): expected a {kind} {bound}{meaning}, got "
            f"{type(value).__name__}. Pass e.g. {name}={example}."
        )
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        expected = f"a finite {what} >= 0" if zero else f"a positive {what}"
        raise ValueError(
            f"{owner}({name}={value!r}): expected {expected}{meaning}, got {value!r}. Pass "
            f"e.g. {name}={example}."
        )
    return float(value)


def check_noise_level(noise_level: Any, owner: str) -> float:
    """SmoothGrad's ``noise_level``: the noise std relative to each sample's value range."""
    return check_positive_number(
        noise_level, "noise_level", owner, example="0.1", zero=True, kind="float",
        what="noise level", meaning=" (the noise std relative to each sample's value range)",
    )


def check_generator(generator: Any, owner: str) -> None:
    """``generator``: None (torch's global generator), an int seed or a ``torch.Generator``."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, bool) or not isinstance(generator, numbers.Integral):
        raise TypeError(
            f"{owner}(generator={generator!r}): expected None (torch's global generator), an "
            f"int seed or a torch.Generator, got {type(generator).__name__}. Pass e.g. "
            f"generator=0."
        )


def make_generator(generator: Any, owner: str,
                   device: torch.device | str = "cpu") -> torch.Generator | None:
    """The generator to draw from: None (torch's global one), a new one seeded with an int,
    or the given ``torch.Generator``."""
    check_generator(generator, owner)
    if isinstance(generator, numbers.Integral):
        return torch.Generator(device=device).manual_seed(int(generator))
    return generator


def check_window(value: Any, name: str, owner: str) -> None:
    """Occlusion's ``window`` / ``stride``: an int or a tuple of ints, each >= 1."""
    if not (isinstance(value, int) and not isinstance(value, bool)) and not (
        isinstance(value, tuple)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise TypeError(
            f"{owner}({name}={value!r}): expected an int or a tuple of ints, got "
            f"{type(value).__name__}. Pass e.g. {name}=8 or {name}=(8, 8)."
        )
    values = (value,) if isinstance(value, int) else value
    if not values or any(v < 1 for v in values):
        raise ValueError(
            f"{owner}({name}={value!r}): expected sizes >= 1, got {value!r}. Pass e.g. "
            f"{name}=8 or {name}=(8, 8)."
        )


def baseline_of(baseline_fn: Any, input: Tensor, owner: str) -> Tensor:
    """The baseline of Integrated Gradients: ``baseline_fn(input)``, a tensor, or zeros."""
    if baseline_fn is None:
        return torch.zeros_like(input)
    if isinstance(baseline_fn, Tensor):
        baseline = baseline_fn
    elif callable(baseline_fn):
        baseline = baseline_fn(input)
    else:
        raise TypeError(
            f"{owner}(baseline_fn={type(baseline_fn).__name__}): expected None (zeros), a "
            f"callable input -> baseline, or a tensor, got {type(baseline_fn).__name__}. Pass "
            f"e.g. baseline_fn=torch.zeros_like."
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
    check_same_dtype(baseline, input, "baseline_fn=" + (
        f"tensor of dtype {baseline.dtype}" if baseline is baseline_fn else "..."), owner,
        "a baseline", "Give the baseline in the input's dtype, e.g. torch.zeros_like(input)")
    return baseline


def check_params(params: Any, owner: str) -> Mapping[str, Any]:
    """``params``: a mapping of names to tensors, such as the params of ``functionalize``
    (which keys it holds is checked by ``fn``)."""
    if not isinstance(params, Mapping):
        raise TypeError(
            f"{owner}(params={type(params).__name__}): expected a dict of str to Tensor (the "
            f"params of funcattr.functionalize), got {type(params).__name__}. Pass the params "
            f"returned by fn, params = funcattr.functionalize(model, composite)."
        )
    return params


def check_same_dtype(tensor: Tensor, input: Tensor, argument: str, owner: str, what: str,
                     fix: str) -> None:
    """``tensor`` (``what``: a baseline, noise, an occluded input) in the dtype of ``input``;
    ``argument`` is the call's ``name=value`` part."""
    if tensor.dtype != input.dtype:
        raise TypeError(
            f"{owner}({argument}): expected {what} in the input's dtype {input.dtype}, got "
            f"{tensor.dtype}. {fix}."
        )


def check_input(input: Any, owner: str, name: str = "input") -> Tensor:
    """A tensor with values (not on the ``meta`` device) and without NaN or infinity
    (checked where its values are concrete)."""
    if not isinstance(input, Tensor):
        raise TypeError(
            f"{owner}({name}={type(input).__name__}): expected a torch.Tensor, got "
            f"{type(input).__name__}. Pass e.g. torch.as_tensor({name})."
        )
    if input.is_meta:
        raise ValueError(
            f"{owner}({name}={shown(input)} on the meta device): expected a tensor with "
            f"values, got a meta tensor, which has a shape but no data. Pass a tensor with "
            f"data on the model's device (cpu or cuda)."
        )
    plain = concrete_value(input)
    if plain is not None and plain.is_floating_point() and not bool(torch.isfinite(plain).all()):
        raise ValueError(
            f"{owner}({name}={shown(input)}): expected finite values, got NaN or infinity. "
            f"Clean the input (e.g. torch.nan_to_num) before explaining it."
        )
    return input


def check_batched(input: Tensor, owner: str, *, minimum: int = 1, name: str = "input",
                  layouts: str = "") -> None:
    """At least ``minimum`` dimensions, the batch first."""
    if input.ndim < minimum:
        expected = f"a batch, {layouts}" if layouts else "a batch dimension first"
        raise ValueError(
            f"{owner}({name}={shown(input)}): expected {expected}, got a {input.ndim}-dim "
            f"tensor. Add the batch dimension with {name}[None]."
        )


def chunk_ranges(count: int, step: int | None) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(count)`` in steps of ``step`` (None: one)."""
    step = count if step is None else step
    return [(start, min(start + step, count)) for start in range(0, count, max(step, 1))]


def copies_per_step(chunk_size: int | None, batch: int, count: int) -> int:
    """How many copies of a ``batch``-sized input fit in ``chunk_size`` model inputs (at least
    one: a copy of the batch is never split, since ``attr_output_fn`` sees whole outputs)."""
    if chunk_size is None:
        return max(count, 1)
    return max(1, chunk_size // max(batch, 1))


def sequence_of_ints(value: Any) -> bool:
    """True for a list or tuple of plain ints (no bools)."""
    return isinstance(value, Sequence) and not isinstance(value, str | bytes) and all(
        isinstance(item, numbers.Integral) and not isinstance(item, bool) for item in value
    )
