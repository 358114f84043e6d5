"""Conditional attribution (CRP): the relevance of chosen channels, for many conditions at once.

A condition masks the relevance at named layers to chosen channels (a *concept*) and starts it
at chosen output classes (:mod:`funcattr.concepts.conditions`). All conditions share one forward
pass: the pullback is split at the named layers (:mod:`funcattr.concepts.split`), the part from
the output to the first layer runs once per distinct target, and the masked parts below run for
all conditions as one batched (``vmap``) backward, ``chunk_size`` model inputs at a time.

``exclude_parallel`` (CRP's flag, on by default) says which relevance a condition follows:

- ``True``: only relevance that passes through *every* layer of the condition, in the order
  the model calls them (``output -> L1 -> L2 -> ... -> input``); relevance that bypasses one of
  them (a residual connection around it) is left out: a concept's sole contribution. Each
  condition's layers must lie one after another on the way to the output.
- ``False``: the ordinary pullback, masked at the condition's layers: relevance that bypasses
  a layer flows on unmasked.

The relevance recorded at a layer (``record``) is what arrives at its output in that flow (after
the mask, for a condition's own layer); with ``exclude_parallel`` it counts relevance that has
passed every condition layer called after the recorded one and no other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from funcattr.attribution.options import (
    check_batched,
    check_chunk_size,
    check_input,
    chunk_ranges,
    copies_per_step,
)
from funcattr.attribution.pullback import Params
from funcattr.attribution.targets import AttrOutput, as_attr_output_fn, output_gradient
from funcattr.concepts.conditions import (
    Condition,
    as_conditions,
    channel_mask,
    check_layer_names,
    check_selection,
    output_seed,
)
from funcattr.concepts.split import INPUT, OUTPUT_PIECE, SplitPullback, split_pullback
from funcattr.ruled import FunctionalModel

__all__ = ["ConditionalAttribution", "check_bool", "check_functional", "check_record",
           "conditional_attribution", "run_conditions"]


class ConditionalAttribution(NamedTuple):
    """What :func:`conditional_attribution` returns (unpacks like a tuple).

    Attributes
    ----------
    output : Tensor
        ``fn(params, input)``.
    attribution : Tensor or None
        ``(K, *input.shape)``: the input relevance of each condition (CRP's heatmap before
        summing over the input channels).
    relevances : dict of str to Tensor
        For each recorded layer, ``(K, *layer_output.shape)``: the relevance at its output per
        condition (sum over positions per channel: :func:`funcattr.concepts.channel_relevance`).
    activations : dict of str to Tensor
        For each recorded layer, its output ``(*layer_output.shape)``.
    """

    output: Tensor
    attribution: Tensor | None
    relevances: dict[str, Tensor]
    activations: dict[str, Tensor]


def check_functional(fn: Any, owner: str) -> FunctionalModel:
    """``fn`` must be what ``functionalize`` returns: conditions name its layers."""
    if not isinstance(fn, FunctionalModel):
        raise TypeError(
            f"{owner}(fn={type(fn).__name__}): expected the fn that funcattr.functionalize "
            f"returns (conditions name its layers), got {type(fn).__name__}. Pass "
            f"fn, params = functionalize(model, composite)."
        )
    return fn


def check_bool(value: Any, name: str, owner: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(
            f"{owner}({name}={value!r}): expected True or False, got {type(value).__name__}. "
            f"Pass {name}=True or {name}=False."
        )
    return value


def check_record(record: Any, owner: str) -> tuple[str, ...]:
    """``record``: a layer name or a sequence of them."""
    if isinstance(record, str):
        record = (record,)
    if not isinstance(record, Sequence) or isinstance(record, bytes) or not all(
            isinstance(name, str) for name in record):
        raise TypeError(
            f"{owner}(record={record!r}): expected a layer name or a sequence of layer names, "
            f"got {type(record).__name__}. Pass e.g. record=['features.28']."
        )
    return tuple(dict.fromkeys(record))


class _Group(NamedTuple):
    """Conditions pulled back together: their indices and the layers whose masks they share."""

    indices: list[int]
    chain: tuple[str, ...]  # condition layers, latest call first


def _groups(conditions: tuple[Condition, ...], split: SplitPullback,
            exclude_parallel: bool) -> list[_Group]:
    rank = {name: position for position, name in enumerate(split.order)}
    if not exclude_parallel:  # one masked pullback for all: a missing layer's mask is ones
        layers = {name for c in conditions for name in c.channels}
        return [_Group(list(range(len(conditions))),
                       tuple(sorted(layers, key=rank.__getitem__)))]
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, condition in enumerate(conditions):
        chain = tuple(sorted(condition.channels, key=rank.__getitem__))
        groups.setdefault(chain, []).append(index)
    return [_Group(indices, chain) for chain, indices in groups.items()]


class _Flow:
    """Which arriving gradients a group keeps: its chain's levels (see the module docstring),
    and only those on the way to what is asked for (``wanted`` layers, the input)."""

    def __init__(self, split: SplitPullback, chain: tuple[str, ...], exclude_parallel: bool,
                 wanted: set[str], to_input: bool):
        self.split, self.chain, self.exclude = split, chain, exclude_parallel
        position = {name: i for i, name in enumerate(split.order)}  # 0: latest call
        self.level = {name: sum(position[c] < position[name] for c in chain)
                      for name in split.order}
        self.level[INPUT] = len(chain)
        deepest = max((position[name] for name in {*wanted, *chain}), default=-1)
        self.useful = {name for name in split.order if position[name] <= deepest}
        if to_input:
            self.useful.update([*split.order, INPUT])

    def emits(self, top: str) -> int:
        if top == OUTPUT_PIECE:
            return 0
        return self.level[top] + (top in self.chain)

    def targets(self, top: str) -> list[str]:
        """What the piece below ``top`` passes relevance on to."""
        order = self.split.order
        start = 0 if top == OUTPUT_PIECE else order.index(top) + 1
        below = [*order[start:], INPUT]
        below = [name for name in below if name in self.useful]
        if not self.exclude:
            return below
        level = self.emits(top)
        return [name for name in below if self.level[name] == level]

    def check_chain(self, owner: str) -> None:
        """Under ``exclude_parallel``, every chain layer receives relevance from the one
        before it (checked on the structure of the graph, where it is known)."""
        received = {OUTPUT_PIECE}
        for top in [OUTPUT_PIECE, *self.split.order]:
            if top not in received:
                continue
            reach = self.split.reach(top)
            if reach is None:
                return
            received.update(name for name in self.targets(top) if name in reach)
        for upper, lower in zip(("the output", *self.chain), self.chain):
            if lower not in received:
                raise ValueError(
                    f"{owner}(conditions=[{{..., {lower!r}: ...}}]): with "
                    f"exclude_parallel=True, expected the layers of a condition to lie one after "
                    f"another on the way to the output, got {lower!r}, which no relevance from "
                    f"{upper if upper == 'the output' else repr(upper)} reaches without "
                    f"bypassing a layer of the condition. Condition on layers in sequence, or "
                    f"pass exclude_parallel=False."
                )


def _masks(conditions: Sequence[Condition], name: str, like: Tensor) -> Tensor:
    """``(k, 1, *mask)``: each condition's mask at layer ``name`` (ones where it has none)."""
    ones = like.new_ones((1,) * (like.ndim - 1))
    rows = [channel_mask(c.channels[name], like) if name in c.channels else ones
            for c in conditions]
    shape = torch.broadcast_shapes(*(row.shape for row in rows))
    return torch.stack([row.expand(shape) for row in rows])[:, None]


def _pull_group(split: SplitPullback, flow: _Flow, conditions: Sequence[Condition],
                seeds: Callable[[Sequence[Condition]], Tensor], record: tuple[str, ...],
                last: bool) -> tuple[Tensor | None, dict[str, Tensor | None]]:
    """One chunk of a group's conditions through every piece: the input relevance (``None``
    when none arrives) and the relevance arriving at the recorded layers. ``last``: no pull
    follows this chunk (the last piece then frees its graph as it goes)."""
    arrived: dict[str, Tensor] = {}
    final = split.order[-1] if split.order else OUTPUT_PIECE

    def add(pulled: dict[str, Tensor]) -> None:
        for name, grad in pulled.items():
            arrived[name] = grad if name not in arrived else arrived[name] + grad

    add(split.pull(OUTPUT_PIECE, seeds(conditions), flow.targets(OUTPUT_PIECE),
                   last=last and final == OUTPUT_PIECE))
    recorded: dict[str, Tensor | None] = {}
    for top in split.order:
        grad = arrived.pop(top, None)
        if top in flow.chain and grad is not None:
            grad = grad * _masks(conditions, top, split.outputs[top])
        if top in record:
            recorded[top] = grad
        if grad is not None:
            add(split.pull(top, grad, flow.targets(top), last=last and top == final))
    return arrived.get(INPUT), recorded


def conditional_attribution(fn: FunctionalModel, params: Params, input: Tensor,
                            conditions: Any, *, record: str | Sequence[str] = (),
                            times_output: bool = True, exclude_parallel: bool = True,
                            attr_output_fn: AttrOutput = None,
                            chunk_size: int | None = None) -> ConditionalAttribution:
    """The relevance of each condition (a target and channel sets at layers): CRP for K
    conditions with one forward pass and one batched backward.

    Parameters
    ----------
    fn, params
        From :func:`funcattr.functionalize` (any composite and canonizers): conditions name the
        model's layers, as in ``model.named_modules()``.
    input : Tensor
        The input, batch first; each condition applies to every sample.
    conditions : dict, Condition or sequence of them
        CRP's dictionaries, ``{"y": [3], "features.28": [7]}``: the output classes (``"y"``)
        and, per layer, the channels whose relevance passes (a sequence of indices, or a mask
        shaped like one sample of the layer's output). See :class:`funcattr.concepts.Condition`.
    record : str or sequence of str
        Layers whose relevance (per condition) and activation to return.
    times_output : bool
        Start from ``output * one_hot(y)`` (CRP's initial relevance, the default) rather than
        ``one_hot(y)``.
    exclude_parallel : bool
        Follow only relevance that passes through every layer of a condition (CRP's default);
        ``False``: mask the ordinary pullback (see the module docstring).
    attr_output_fn : callable, tensor or None
        The output gradient of conditions without ``"y"``, as in :func:`funcattr.gradient`:
        ``None`` for the output itself (CRP's), a tensor, or ``output -> tensor``, e.g.
        ``one_hot(labels, times_output=True)`` for one class per sample.
    chunk_size : int, optional
        Model inputs per backward step: ``chunk_size // batch`` conditions at once (at least
        one); ``None``: all at once. Any value gives the same result.

    Returns
    -------
    ConditionalAttribution
        ``(output, attribution, relevances, activations)``; ``attribution`` is ``(K,
        *input.shape)``, row ``k`` the relevance of condition ``k``.

    Examples
    --------
    >>> fn, params = functionalize(vgg16, EpsilonPlusFlat())                   # doctest: +SKIP
    >>> conditions = [{"y": [46], "features.28": [c]} for c in range(32)]     # doctest: +SKIP
    >>> result = conditional_attribution(fn, params, x, conditions)           # doctest: +SKIP
    >>> result.attribution.sum(2).shape  # CRP's heatmaps: (32, 1, 224, 224)  # doctest: +SKIP
    """
    return run_conditions(fn, params, input, conditions, record, times_output=times_output,
                          exclude_parallel=exclude_parallel, attr_output_fn=attr_output_fn,
                          chunk_size=chunk_size, to_input=True,
                          owner="conditional_attribution")


def run_conditions(fn: FunctionalModel, params: Params, input: Tensor, conditions: Any,
                   record: Any, *, times_output: bool, exclude_parallel: bool,
                   attr_output_fn: AttrOutput, chunk_size: int | None, to_input: bool,
                   owner: str) -> ConditionalAttribution:
    """:func:`conditional_attribution` as ``owner``; ``to_input=False`` stops the backward at
    the lowest recorded or conditioned layer (``attribution`` is then ``None``)."""
    check_functional(fn, owner)
    conditions = as_conditions(conditions, owner)
    record = check_record(record, owner)
    check_input(input, owner)
    check_batched(input, owner)
    check_bool(times_output, "times_output", owner)
    check_bool(exclude_parallel, "exclude_parallel", owner)
    attr_output_fn = as_attr_output_fn(attr_output_fn, owner)
    check_chunk_size(chunk_size, owner)
    layers = list(dict.fromkeys(name for c in conditions for name in c.channels))
    check_layer_names(fn, layers, "conditions", owner)
    check_layer_names(fn, record, "record", owner)
    arguments = {name: "conditions" for name in layers}
    arguments.update({name: "record" for name in record if name not in arguments})

    split = split_pullback(fn, params, input, arguments, owner)
    for condition in conditions:
        for name, selection in condition.channels.items():
            check_selection(selection, name, tuple(split.outputs[name].shape[1:]), owner)
    keep = split.differentiated  # results stay differentiable only when something asks
    output = split.output if keep else split.output.detach()
    starts: dict[tuple[int, ...] | None, Tensor] = {}
    for condition in conditions:  # every output gradient, checked before any backward
        if condition.target not in starts:
            starts[condition.target] = (
                output_gradient(output, attr_output_fn, owner) if condition.target is None
                else output_seed(condition.target, output, times_output, owner))

    def seeds(chunk: Sequence[Condition]) -> Tensor:
        return torch.stack([starts[c.target] for c in chunk])

    batch = input.shape[0]
    order: list[int] = []
    heat_parts: list[Tensor] = []
    rel_parts: dict[str, list[Tensor]] = {name: [] for name in record}
    groups = _groups(conditions, split, exclude_parallel)
    for number, group in enumerate(groups):
        flow = _Flow(split, group.chain, exclude_parallel, set(record), to_input)
        if exclude_parallel:
            flow.check_chain(owner)
        steps = chunk_ranges(len(group.indices),
                             copies_per_step(chunk_size, batch, len(group.indices)))
        for start, stop in steps:
            members = group.indices[start:stop]
            chunk = [conditions[i] for i in members]
            last = number == len(groups) - 1 and stop == steps[-1][1]
            heat, recorded = _pull_group(split, flow, chunk, seeds, record, last)
            order.extend(members)
            if to_input:
                heat_parts.append(heat if heat is not None else
                                  input.new_zeros((len(chunk), *input.shape)))
            for name in record:
                value = recorded.get(name)
                rel_parts[name].append(value if value is not None else input.new_zeros(
                    (len(chunk), *split.outputs[name].shape)))
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    attribution = torch.cat(heat_parts)[inverse] if to_input else None
    relevances = {name: torch.cat(parts)[inverse] for name, parts in rel_parts.items()}
    activations = {name: split.outputs[name] if keep else split.outputs[name].detach()
                   for name in record}
    return ConditionalAttribution(output, attribution, relevances, activations)
