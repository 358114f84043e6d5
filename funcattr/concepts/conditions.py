"""Conditions as data: a target at the output and channel sets (concepts) at named layers.

A condition says which relevance to follow back: the classes at the output whose relevance
starts the backward pass (``target``) and, at named layers, which channels let it through
(the mask of a concept). CRP's dictionaries are accepted as they are:
``{"y": [3], "features.28": [7, 9]}`` is ``Condition(target=(3,), channels={"features.28":
(7, 9)})``. A layer's channel set is a sequence of channel indices (dimension 1 of the layer's
output, the channels of a convolution or the neurons of a dense layer), or a tensor mask shaped
like one sample of the layer's output (e.g. one channel at one position).
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from funcattr.attribution.options import sequence_of_ints, shown

__all__ = [
    "OUTPUT",
    "Condition",
    "Selection",
    "as_conditions",
    "channel_mask",
    "check_layer_names",
    "check_selection",
    "layer_names_of",
    "module_of",
    "output_seed",
]

#: The key of the output in CRP-style condition dictionaries (CRP's ``MODEL_OUTPUT_NAME``).
OUTPUT = "y"

#: What a condition lets through at one layer: channel indices, or a mask shaped like one
#: sample of the layer's output.
Selection = tuple[int, ...] | Tensor


def _show_selection(selection: Any) -> str:
    return shown(selection) if isinstance(selection, Tensor) else repr(selection)


@dataclass(frozen=True)
class Condition:
    """One condition: the output classes that start the relevance, and channels at layers.

    Parameters
    ----------
    target : tuple of int or None
        The classes at the output whose relevance is followed (their one-hot sum is the output
        gradient, times the output with ``times_output``); ``None``: the whole output.
    channels : mapping of str to tuple of int or Tensor
        For each named layer, the channels that let relevance through (all others are masked
        out), or a mask shaped like one sample of the layer's output.

    Examples
    --------
    >>> Condition(target=(3,), channels={"features.28": (7,)})
    Condition(target=(3,), channels={'features.28': (7,)})
    >>> Condition.of({"y": [3], "features.28": [7]}) == Condition((3,), {"features.28": (7,)})
    True
    """

    target: tuple[int, ...] | None = None
    channels: Mapping[str, Selection] = field(default_factory=dict)

    def __post_init__(self) -> None:
        target, channels = _normalised(self.target, self.channels, "Condition", _as_fields)
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "channels", channels)

    @classmethod
    def of(cls, value: Any, owner: str = "Condition.of") -> Condition:
        """A condition from a CRP dictionary ``{"y": classes, layer: channels, ...}`` (or a
        condition, returned as it is); mistakes are reported as ``owner(conditions=...)``."""
        if isinstance(value, Condition):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(
                f"{owner}(conditions=[{type(value).__name__}]): expected a Condition or a "
                f"dict such as {{'y': [3], 'features.28': [7]}}, got {type(value).__name__}. "
                f"Pass conditions as a list of dicts or Conditions."
            )
        items = dict(value)
        target = items.pop(OUTPUT, None)
        return cls(*_normalised(target, items, owner, _as_dict))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Condition):
            return NotImplemented
        if self.target != other.target or list(self.channels) != list(other.channels):
            return False
        return all(_same_selection(self.channels[k], other.channels[k]) for k in self.channels)

    def __hash__(self) -> int:
        return hash((self.target, tuple(
            (name, s if isinstance(s, tuple) else id(s)) for name, s in self.channels.items())))

    def __repr__(self) -> str:
        channels = ", ".join(f"{name!r}: {_show_selection(s)}"
                             for name, s in self.channels.items())
        return f"Condition(target={self.target!r}, channels={{{channels}}})"


def _same_selection(a: Selection, b: Selection) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape
                and bool((a == b).all()))
    return a == b


def _as_fields(key: str | None, text: str) -> str:
    """How a Condition's own arguments appear in a message: ``channels={'5': (1,)}``."""
    return f"target={text}" if key is None else f"channels={{{key!r}: {text}}}"


def _as_dict(key: str | None, text: str) -> str:
    """How a CRP dict's entries appear in a message: ``conditions=[{'5': (1,)}]``."""
    name = OUTPUT if key is None else key
    return f"conditions=[{{{name!r}: {text}}}]"


def _normalised(target: Any, channels: Any, owner: str, show: Callable[[str | None, str], str]
                ) -> tuple[tuple[int, ...] | None, dict[str, Selection]]:
    """``(target, channels)`` checked and normalised: tuples of ints, float or bool masks."""
    if target is not None:
        target = _ints(target, owner, lambda text: show(None, text), "[3]")
    if not isinstance(channels, Mapping):
        raise TypeError(
            f"{owner}(channels={type(channels).__name__}): expected a mapping of layer "
            f"names to channel indices, got {type(channels).__name__}. Pass e.g. "
            f"channels={{'features.28': (7,)}}."
        )
    normal: dict[str, Selection] = {}
    for name, selection in channels.items():
        if not isinstance(name, str):
            raise TypeError(
                f"{owner}({show(repr(name), '...')}): expected layer names (str), got "
                f"{type(name).__name__}. Pass names from model.named_modules()."
            )
        if name == OUTPUT:
            raise ValueError(
                f"{owner}({show(name, '...')}): expected a layer name, got {name!r}, which "
                f"names the output. Put the output classes in target=..."
            )
        if isinstance(selection, Tensor) and (selection.is_floating_point()
                                              or selection.dtype == torch.bool):
            normal[name] = selection
        else:
            normal[name] = _ints(selection, owner, lambda text, n=name: show(n, text), "[7]")
    return target, normal


def _ints(value: Any, owner: str, argument: Callable[[str], str], example: str
          ) -> tuple[int, ...]:
    """``value`` (an int, ints, an integer tensor) as a tuple of ints >= 0; ``argument``
    shows the value as the caller's argument in messages."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    elif isinstance(value, Tensor) and value.ndim <= 1 and not (
            value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        value = tuple(int(v) for v in value.reshape(-1).tolist())
    if not sequence_of_ints(value):
        raise TypeError(
            f"{owner}({argument(_show_selection(value))}): expected an int or a sequence of "
            f"ints, got {type(value).__name__}. Pass e.g. {example}."
        )
    result = tuple(int(v) for v in value)
    negative = [v for v in result if v < 0]
    if negative:
        raise ValueError(
            f"{owner}({argument(repr(result))}): expected indices >= 0, got {negative}. Pass "
            f"indices counted from 0, e.g. {example}."
        )
    return result


def as_conditions(conditions: Any, owner: str) -> tuple[Condition, ...]:
    """``conditions`` (a Condition, a CRP dict, or a non-empty sequence of them) as a tuple."""
    if isinstance(conditions, Condition | Mapping):
        conditions = [conditions]
    if not isinstance(conditions, Sequence) or isinstance(conditions, str | bytes):
        raise TypeError(
            f"{owner}(conditions={type(conditions).__name__}): expected a list of conditions "
            f"(dicts such as {{'y': [3], 'features.28': [7]}} or Condition values), got "
            f"{type(conditions).__name__}. Pass e.g. conditions=[{{'y': [3], 'features.28': "
            f"[7]}}]."
        )
    if len(conditions) == 0:
        raise ValueError(
            f"{owner}(conditions=[]): expected at least one condition, got none. Pass e.g. "
            f"conditions=[{{'y': [3]}}]."
        )
    return tuple(Condition.of(c, owner) for c in conditions)


def layer_names_of(fn: Any) -> list[str]:
    """The names conditions and records may use: the modules of the functionalized model
    (its canonized view keeps the model's names; modules canonizers add are named too)."""
    return [name for name, _ in fn.view.named_modules() if name]


def check_layer_names(fn: Any, names: Sequence[str], argument: str, owner: str) -> None:
    """Every name names a module of the model (else a ``ValueError`` with the closest names)."""
    modules = dict(fn.view.named_modules())
    if OUTPUT in modules and OUTPUT:
        raise ValueError(
            f"{owner}({argument}=...): expected a model without a module named {OUTPUT!r} "
            f"(the output's key in conditions), got one. Pass Condition(target=..., "
            f"channels=...) values instead of dicts, and do not name the module {OUTPUT!r} "
            f"in channels."
        )
    known = [name for name in modules if name]
    for name in names:
        if not isinstance(name, str):
            raise TypeError(
                f"{owner}({argument}={name!r}): expected layer names (str), got "
                f"{type(name).__name__}. Pass names from model.named_modules()."
            )
        if name not in modules or not name:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            raise ValueError(
                f"{owner}({argument}={name!r}): expected the name of a layer of the model, got "
                f"{name!r}, which names no module. Use a name from "
                f"model.named_modules(){hint}."
            )


def check_selection(selection: Selection, layer: str, sample_shape: tuple[int, ...],
                    owner: str) -> None:
    """Channel indices within the layer's channels, or a mask shaped like one sample."""
    if isinstance(selection, Tensor):
        if tuple(selection.shape) != sample_shape:
            raise ValueError(
                f"{owner}(conditions=[{{{layer!r}: {shown(selection)}}}]): expected a mask "
                f"shaped like one sample of the layer's output {sample_shape}, got "
                f"{tuple(selection.shape)}. Pass channel indices, or a mask of shape "
                f"{sample_shape}."
            )
        return
    if not sample_shape:
        raise ValueError(
            f"{owner}(conditions=[{{{layer!r}: {selection!r}}}]): expected a layer whose "
            f"output has a channel dimension after the batch, got an output with none. "
            f"Condition on a layer with channels."
        )
    channels = sample_shape[0]
    outside = [c for c in selection if c >= channels]
    if outside:
        raise ValueError(
            f"{owner}(conditions=[{{{layer!r}: {selection!r}}}]): channel out of range for "
            f"a layer with {channels} channels; expected indices in [0, {channels - 1}], got "
            f"{outside}. Pass channels of this layer."
        )


def channel_mask(selection: Selection, like: Tensor) -> Tensor:
    """The mask of ``selection`` for one sample of a layer output shaped like ``like[0]``:
    ones at the selected channels (broadcasting over the rest), zeros elsewhere."""
    sample = like.shape[1:]
    if isinstance(selection, Tensor):
        return selection.to(dtype=like.dtype, device=like.device)
    mask = like.new_zeros((sample[0],) + (1,) * (len(sample) - 1))
    if selection:
        mask[list(selection)] = 1
    return mask


def output_seed(target: tuple[int, ...] | None, output: Tensor, times_output: bool,
                owner: str) -> Tensor:
    """The output gradient of a condition: the one-hot sum of ``target`` (all ones for
    ``None``), times the output with ``times_output`` (CRP's initial relevance)."""
    if target is None:
        seed = torch.ones_like(output)
    else:
        if output.ndim < 2:
            raise ValueError(
                f"{owner}(conditions=[{{'y': {list(target)!r}}}]): expected a (batch, "
                f"classes) output to select classes from, got shape {tuple(output.shape)}. "
                f"Leave 'y' out to start from the whole output."
            )
        classes = output.shape[1]
        outside = [t for t in target if t >= classes]
        if outside:
            raise ValueError(
                f"{owner}(conditions=[{{'y': {list(target)!r}}}]): target out of range for an "
                f"output with {classes} classes; expected values in [0, {classes - 1}], got "
                f"{outside}. Pass classes of this model."
            )
        seed = torch.zeros_like(output)
        if target:
            seed[:, list(target)] = 1
    return seed * output if times_output else seed


def module_of(fn: Any, name: str) -> nn.Module:
    """The module named ``name`` in the functionalized model's view."""
    return dict(fn.view.named_modules())[name]
