"""A pullback split at named layers: one forward pass, then output gradients pulled back piece
by piece.

:func:`split_pullback` runs the model once with a tap on each named layer
(:meth:`funcattr.ruled.FunctionalModel.tapped`). Each tap *cuts* the graph at the layer's
output: the rest of the model sees a copy that carries no gradient back into the layer, so the
backward pass falls into pieces: the *top* piece from the model output down to the cuts it
reads, and one piece per tapped layer from its output down to the cuts (and the input) it
reads. Pulling a gradient back through one piece gives the gradients *arriving* at the cuts
below it (the relevance at those layers' outputs) and the part that reaches the input
directly; a caller may change an arriving gradient (mask channels) before pulling it on
through the next piece. Because every rule's backward is linear in its output gradient,
pulling the pieces in reverse call order and adding up what arrives is the ordinary pullback.

Two routes compute the same thing (what :func:`funcattr.attribution.pullback` does too):

- on plain tensors, the forward runs on autograd and each cut is a new leaf tensor; a piece is
  pulled back with ``torch.autograd.grad`` under a ``vmap`` over the stacked gradients (the
  rules then push all of them through one batched backward), visiting only its own piece;
- under ``torch.func`` transforms, or when something differentiates the result, the cut is a
  function that passes no gradient at this differentiation level (and the true derivative at
  outer ones) plus a zero-valued extra input per layer; one ``torch.func.vjp`` gives every
  piece, each pulled with a cotangent on its top only (the zero cotangents of the other tops
  still run through their pieces: slower, but every transform composes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from funcattr.attribution.pullback import Params, call_model, needs_transforms
from funcattr.core import elementwise_rule, is_differentiated, rules_at_this_level
from funcattr.ruled import FunctionalModel

__all__ = ["INPUT", "OUTPUT_PIECE", "SplitPullback", "check_calls", "split_pullback"]

#: The target name of the input among a piece's targets.
INPUT = "<input>"
#: The top name of the piece that starts at the model output.
OUTPUT_PIECE = "<output>"


def _no_gradient(input: Tensor | None, grad: Tensor) -> Tensor:
    return torch.zeros_like(grad)


def _same(u: Tensor) -> Tensor:
    return u


def cut(tensor: Tensor) -> Tensor:
    """``tensor``'s value with no gradient at this differentiation level (the true derivative,
    the identity, at outer levels)."""
    return elementwise_rule(tensor, _same, _no_gradient, reads_input=False)


@dataclass
class _Tap:
    """What a tap saw: the outputs of each call of its layer, in call order positions."""

    outputs: list[Tensor]
    leaves: list[Tensor]
    positions: list[int]


def check_calls(taps: dict[str, _Tap], owner: str, arguments: dict[str, str]) -> None:
    """Every tapped layer was called exactly once (``arguments``: the argument that named each
    layer, for the message)."""
    for name, tap in taps.items():
        argument = arguments[name]
        if not tap.outputs:
            raise ValueError(
                f"{owner}({argument}={name!r}): expected a layer that the model calls, got "
                f"{name!r}, which the forward pass of this input never called. Name a layer "
                f"that computes on the way to the output (model.named_modules() also lists "
                f"modules the forward does not use)."
            )
        if len(tap.outputs) > 1:
            raise ValueError(
                f"{owner}({argument}={name!r}): expected a layer called once per forward "
                f"pass, got {name!r}, called {len(tap.outputs)} times. Name a layer called "
                f"once, e.g. the block that contains it."
            )


class SplitPullback:
    """The model run once with cuts at named layers; pulls gradients back piece by piece.

    Attributes
    ----------
    output : Tensor
        The model output.
    outputs : dict of str to Tensor
        Each tapped layer's output (its activation).
    order : list of str
        The tapped layers, latest call first (the order in which pieces are pulled).
    """

    output: Tensor
    outputs: dict[str, Tensor]
    order: list[str]
    differentiated: bool = False  # whether something differentiates the results

    def reach(self, top: str) -> set[str] | None:
        """The cut layers (and :data:`INPUT`) that the piece below ``top`` reads, or ``None``
        when unknown (under transforms): then every target may receive a gradient."""
        raise NotImplementedError

    def transposed(self, top: str, cotangent: Tensor) -> Tensor:
        """The transpose of the pullback of the piece below ``top`` straight to the input
        (``u -> pull(top, u)[INPUT]``, linear in ``u``) applied to ``cotangent`` (shaped like
        the input): ``<cotangent, pull(top, u)[INPUT]> = <transposed(top, cotangent), u>`` for
        every ``u``. One double backward: what every output gradient of ``top`` contributes
        to ``<cotangent, input relevance>``, at once."""
        raise NotImplementedError

    def pull(self, top: str, grads: Tensor, targets: Sequence[str], last: bool
             ) -> dict[str, Tensor]:
        """Pull the stacked gradients ``grads`` (``(k, *top.shape)``) back through the piece
        below ``top``; the gradients arriving at each of ``targets`` (cut layers or
        :data:`INPUT`), stacked the same way. ``last``: no call follows."""
        raise NotImplementedError


def _tap_fn(taps: dict[str, _Tap], order: list[str], name: str,
            make_cut: Callable[[str, Tensor], tuple[Tensor, Tensor | None]],
            owner: str, arguments: dict[str, str]) -> Callable[[Any], Any]:
    argument = arguments[name]

    def tap(output: Any) -> Any:
        if not isinstance(output, Tensor):
            raise TypeError(
                f"{owner}({argument}={name!r}): expected a layer that returns one "
                f"tensor, got {type(output).__name__}. Name a layer whose output is a tensor "
                f"(e.g. a submodule of this one)."
            )
        seen, leaf = make_cut(name, output)
        record = taps[name]
        record.outputs.append(output)
        record.leaves.append(leaf)
        record.positions.append(len(order))
        order.append(name)
        return seen

    return tap


class _PlainSplit(SplitPullback):
    """Plain autograd: each cut is a new leaf; a piece is visited by ``autograd.grad``."""

    def __init__(self, fn: FunctionalModel, params: Params, input: Tensor,
                 arguments: dict[str, str], owner: str) -> None:
        names = list(arguments)
        self.input = input.detach().requires_grad_(True)
        taps = {name: _Tap([], [], []) for name in names}
        calls: list[str] = []

        def make_cut(name: str, output: Tensor) -> tuple[Tensor, Tensor]:
            leaf = output.detach().requires_grad_(True)
            return leaf.clone(), leaf  # a copy: later in-place operations leave the leaf

        hooks = {name: _tap_fn(taps, calls, name, make_cut, owner, arguments) for name in names}
        with torch.enable_grad(), rules_at_this_level():
            output = call_model(lambda p, x: fn.tapped(p, x, hooks), params, self.input, owner)
        check_calls(taps, owner, arguments)
        self.output = output
        self.outputs = {name: tap.outputs[0] for name, tap in taps.items()}
        self.leaves = {name: tap.leaves[0] for name, tap in taps.items()}
        self.order = sorted(names, key=lambda n: -taps[n].positions[0])
        self._reach: dict[str, set[str]] = {}

    def _tensor(self, target: str) -> Tensor:
        return self.input if target == INPUT else self.leaves[target]

    def reach(self, top: str) -> set[str]:
        if top not in self._reach:
            tensor = self.output if top == OUTPUT_PIECE else self.outputs[top]
            leaves = _reached_leaves(tensor)
            names = {name for name, leaf in self.leaves.items() if id(leaf) in leaves}
            if id(self.input) in leaves:
                names.add(INPUT)
            self._reach[top] = names
        return self._reach[top]

    def pull(self, top: str, grads: Tensor, targets: Sequence[str], last: bool
             ) -> dict[str, Tensor]:
        reached = [t for t in targets if t in self.reach(top)]
        if not reached:
            return {}
        tensor = self.output if top == OUTPUT_PIECE else self.outputs[top]
        inputs = [self._tensor(t) for t in reached]
        pulled = torch.func.vmap(lambda one: torch.autograd.grad(
            tensor, inputs, one, retain_graph=not last))(grads)
        return dict(zip(reached, pulled))


    def transposed(self, top: str, cotangent: Tensor) -> Tensor:
        tensor = self.outputs[top]
        if INPUT not in self.reach(top):
            return torch.zeros_like(tensor)
        with torch.enable_grad():
            u = torch.zeros_like(tensor, requires_grad=True)
            (pulled,) = torch.autograd.grad(tensor, self.input, u, create_graph=True,
                                            retain_graph=True)
            (result,) = torch.autograd.grad((pulled * cotangent).sum(), u, allow_unused=True)
        return torch.zeros_like(tensor) if result is None else result


def _reached_leaves(tensor: Tensor) -> set[int]:
    """The ids of the leaf tensors whose gradient a backward from ``tensor`` computes."""
    if tensor.grad_fn is None:
        return {id(tensor)} if tensor.requires_grad else set()
    leaves: set[int] = set()
    seen: set[Any] = set()
    stack = [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if isinstance(variable, Tensor):
            leaves.add(id(variable))
            continue
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves


class _TransformedSplit(SplitPullback):
    """Under transforms: cuts that stop this level's gradient, plus zero extra inputs whose
    cotangents are the arriving gradients; one ``torch.func.vjp``."""

    def __init__(self, fn: FunctionalModel, params: Params, input: Tensor,
                 arguments: dict[str, str], owner: str) -> None:
        names = list(arguments)
        shapes = {name: _Tap([], [], []) for name in names}
        calls: list[str] = []
        probe = {name: _tap_fn(shapes, calls, name, lambda n, o: (o, None), owner,
                                arguments)
                 for name in names}
        with torch.no_grad():  # the shapes of the layer outputs, for the extra inputs
            call_model(lambda p, x: fn.tapped(p, x, probe), params, input, owner)
        check_calls(shapes, owner, arguments)
        deltas = {name: shapes[name].outputs[0].new_zeros(shapes[name].outputs[0].shape)
                  for name in names}


        def model(x: Tensor, delta: dict[str, Tensor]):
            taps = {name: _Tap([], [], []) for name in names}
            order: list[str] = []

            def make_cut(name: str, output: Tensor) -> tuple[Tensor, None]:
                return cut(output) + delta[name], None

            hooks = {name: _tap_fn(taps, order, name, make_cut, owner, arguments) for name in names}
            with rules_at_this_level():
                output = call_model(lambda p, u: fn.tapped(p, u, hooks), params, x, owner)
            check_calls(taps, owner, arguments)
            tops = {name: taps[name].outputs[0] for name in names}
            self.order = sorted(names, key=lambda n: -taps[n].positions[0])
            return output, tops

        (output, tops), self.vjp = torch.func.vjp(model, input, deltas)
        self.output, self.outputs = output, tops
        self.differentiated = is_differentiated([input, *params.values()])

    def reach(self, top: str) -> None:
        return None

    def transposed(self, top: str, cotangent: Tensor) -> Tensor:
        return _transformed_transposed(self, top, cotangent)

    def pull(self, top: str, grads: Tensor, targets: Sequence[str], last: bool
             ) -> dict[str, Tensor]:
        if not targets:
            return {}

        def one(grad: Tensor) -> tuple[Tensor, ...]:
            cot_output = grad if top == OUTPUT_PIECE else torch.zeros_like(self.output)
            cot_tops = {name: grad if name == top else torch.zeros_like(value)
                        for name, value in self.outputs.items()}
            grad_input, grad_deltas = self.vjp((cot_output, cot_tops))
            return tuple(grad_input if t == INPUT else grad_deltas[t] for t in targets)

        if self.differentiated or is_differentiated([grads]):
            return dict(zip(targets, torch.func.vmap(one)(grads)))
        with torch.no_grad():  # nobody differentiates the result: record no graph
            return dict(zip(targets, torch.func.vmap(one)(grads)))


def _transformed_transposed(split: _TransformedSplit, top: str, cotangent: Tensor) -> Tensor:
    zeros = torch.zeros_like(split.outputs[top])

    def pull(u: Tensor) -> Tensor:
        cot_tops = {name: u if name == top else torch.zeros_like(value)
                    for name, value in split.outputs.items()}
        return split.vjp((torch.zeros_like(split.output), cot_tops))[0]

    return torch.func.vjp(pull, zeros)[1](cotangent)[0]


def split_pullback(fn: FunctionalModel, params: Params, input: Tensor,
                   arguments: dict[str, str], owner: str) -> SplitPullback:
    """Run ``fn(params, input)`` once, cut at each layer named in ``arguments`` (each must be
    called once).

    ``arguments`` maps each layer to the argument of ``owner`` that named it (``'conditions'``,
    ``'record'``), for error messages.
    """
    if needs_transforms(input, params):
        return _TransformedSplit(fn, params, input, arguments, owner)
    return _PlainSplit(fn, params, input, arguments, owner)
