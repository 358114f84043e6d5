"""A linear rule's backward compiled into coefficient tables, once per call site.

For a linear layer ``f(u; W)`` is linear in ``W``, so every term's output is a linear
combination of *products* ``f(in(x); prim(W))`` (``prim`` one of the primitives ``identity``,
``positive``, ``negative``, ...) and bias primitives. A :class:`Program` lists, per group, the
products and biases that make its denominator ``z`` with their coefficients, and, per input,
the products' VJPs with the output gradients that go through them. Compiling shares what
terms have in common and drops what is zero:

- a term whose input is exactly zero (the negative part of a non-negative input) is dropped;
- ``f(x; W) + b`` is the layer's output ``y`` itself: a group whose ``z`` holds both with
  the same coefficient reads ``y`` (never ``y - b``: that would be a small difference of
  large numbers);
- for a non-negative input, ``y = P + N`` with ``P = f(x; W+) + b+ >= 0`` and
  ``N = f(x; W-) + b- <= 0``. A group gated on ``y < 0`` reads ``N`` only where ``y < 0``,
  and there ``N = y - P`` adds two non-positive numbers: nothing cancels, and the group needs
  no product of its own when another group computes ``P`` (Gamma). Likewise ``P = y - N``
  under a gate on ``y > 0``;
- where one input meets ``W``, ``W+`` and ``W-`` in the VJPs, ``W = W+ + W-`` saves a VJP
  (a sum of the two parts: nothing cancels that the reference does not cancel too). The
  reverse, ``W- = W - W+``, is never used: the beta group of AlphaBeta would get its small
  denominator as a difference of large numbers (float32 errors of 1e-2 on a depthwise
  convolution);
- a bias primitive that goes with exactly one product, with the same coefficient in every
  group, is added inside that product's convolution.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from funcattr.core.terms import Group, InputMod, Term

__all__ = ["GroupProgram", "Plan", "Program", "input_key"]

_OUTPUT = ("identity", "identity")  # f(x; W): with the bias, the layer's output
_SIGNS = (None, "nonnegative", "nonpositive")


def input_key(modifier: InputMod, sign: str | None) -> Hashable | None:
    """Canonical input key for an input of the given sign; ``None`` when the modified input
    is exactly zero."""
    if modifier == "positive":
        if sign == "nonnegative":
            return "identity"
        if sign == "nonpositive":
            return None
    if modifier == "negative":
        if sign == "nonpositive":
            return "identity"
        if sign == "nonnegative":
            return None
    return modifier


@dataclass(frozen=True)
class GroupProgram:
    """One group's denominator: ``z = output * y + sum c f(key(x); prim(W)) + sum c prim(b)``."""

    output: float  # coefficient of the layer's output y (0.0: not read)
    products: tuple[tuple[Hashable, Any, float], ...]  # (input key, primitive, coefficient)
    biases: tuple[tuple[Any, float], ...]  # (bias primitive, coefficient), not folded
    private: frozenset  # products no other group reads: this group may overwrite them
    nonnegative: bool  # z >= 0 for sure (a sum of non-negative parts)


@dataclass(frozen=True)
class Program:
    """A rule's backward for one input sign pattern, reduced to coefficient tables."""

    groups: tuple[GroupProgram, ...]
    folded: Mapping  # (input key, primitive) -> bias primitive computed inside that product
    vjps: tuple  # per input key: (key, ((primitive, ((group index, c), ...)), ...))
    uses_output: bool  # whether the layer's output y is read (a group's z, or a gate)


@dataclass(frozen=True, eq=False)
class Plan:
    """A linear rule's groups and settings with its compiled programs (built per call site)."""

    groups: tuple[Group, ...]
    stabilizer: Callable[[Tensor], Tensor]
    zero_params: tuple[str, ...]
    programs: dict = field(default_factory=dict, repr=False)  # (sign, has_bias) -> Program

    def zeroed(self, term: Term) -> frozenset[str]:
        return frozenset(term.zero) | frozenset(self.zero_params)

    @property
    def splits_sign(self) -> bool:
        """Whether some term takes the positive or negative part of the input."""
        return any(term.input in ("positive", "negative")
                   for group in self.groups for term in group.terms)

    def program(self, sign: str | None, has_bias: bool) -> Program:
        program = self.programs.get((sign, has_bias))
        if program is None:
            program = self.programs[sign, has_bias] = _compile(self, sign, has_bias)
        return program

    def uses_output(self, has_bias: bool) -> bool:
        """Whether the backward may read the layer's output (for any input sign)."""
        signs = _SIGNS if self.splits_sign else (None,)
        return any(self.program(sign, has_bias).uses_output for sign in signs)


Table = tuple[dict, dict]  # products {(key, primitive): c}, biases {primitive: c}


def _coefficients(plan: Plan, sign: str | None, has_bias: bool) -> list[Table]:
    """Per group: the coefficient of every (input, parameter primitive) product in ``z``, and
    of every bias primitive; terms whose input is exactly zero are dropped."""
    tables = []
    for group in plan.groups:
        products: dict[tuple[Hashable, Any], float] = {}
        biases: dict[Any, float] = {}
        for term in group.terms:
            key = input_key(term.input, sign)
            zeroed = plan.zeroed(term)
            for primitive, coefficient in term.param_mod.terms:
                factor = term.sign * coefficient
                if key is not None and "weight" not in zeroed:
                    products[key, primitive] = products.get((key, primitive), 0.0) + factor
                if has_bias and "bias" not in zeroed:
                    biases[primitive] = biases.get(primitive, 0.0) + factor
        tables.append((products, biases))
    return tables


def _read_output(tables: list[Table], has_bias: bool) -> list[float]:
    """Per group, the coefficient of ``y`` where ``z`` holds ``c f(x; W) + c b`` (or ``c f(x;
    W)`` without a bias); that product and bias leave the table."""
    outputs = []
    for products, biases in tables:
        coefficient = products.get(_OUTPUT, 0.0)
        if coefficient != 0.0 and (not has_bias or biases.get("identity", 0.0) == coefficient):
            del products[_OUTPUT]
            biases.pop("identity", None)
            outputs.append(coefficient)
        else:
            outputs.append(0.0)
    return outputs


def _gated_parts(plan: Plan, tables: list[Table], outputs: list[float], sign: str | None,
                 has_bias: bool) -> None:
    """Where a gate makes it exact, a group reads the one-signed part of ``y`` it needs as
    ``y`` minus the other part, computed for another group (see the module docstring)."""
    if sign != "nonnegative":
        return
    computed: dict[str, int] = Counter()  # parts other groups compute as products
    for products, _ in tables:
        for part in ("positive", "negative"):
            computed[part] += products.get(("identity", part), 0.0) != 0.0
    derived = set()
    for index, group in enumerate(plan.groups):
        if group.gate is None:
            continue
        part = group.gate  # under y > 0, P = y - N; under y < 0, N = y - P
        other = "negative" if part == "positive" else "positive"
        products, biases = tables[index]
        c = products.get(("identity", part), 0.0)
        if (c == 0.0 or computed[part] != 1 or other in derived or part in derived
                or products.get(("identity", other), 0.0) != 0.0
                or (has_bias and biases.get(part, 0.0) != c) or computed[other] == 0):
            continue
        del products["identity", part]
        products["identity", other] = -c
        if has_bias:
            del biases[part]
            biases[other] = biases.get(other, 0.0) - c
        outputs[index] += c
        derived.add(part)


def _foldable_biases(tables: list[Table]) -> dict:
    """Products that can carry a bias primitive inside the convolution (saving a pass): the
    primitive's bias coefficient equals the product's coefficient in every group, and no
    other product uses that primitive."""
    folded = {}
    pairs = {pair for products, _ in tables for pair in products}
    for key, primitive in pairs:
        if sum(1 for _, p in pairs if p == primitive) != 1:
            continue
        if all(biases.get(primitive, 0.0) == products.get((key, primitive), 0.0)
               for products, biases in tables):
            folded[key, primitive] = primitive
    return folded


def _vjps(plan: Plan, tables: list[Table]) -> tuple:
    """Per input key, the primitives to pull back through and, for each, the groups whose
    quotient goes into it with which coefficient (``W = W+ + W-`` where all three meet)."""
    vjps = []
    for key in dict.fromkeys(key for products, _ in tables for key, _ in products):
        uses: dict[Any, dict[int, float]] = {}
        for index, (group, (products, _)) in enumerate(zip(plan.groups, tables, strict=True)):
            for (k, primitive), c in products.items():
                if k == key and group.weight * c != 0.0:
                    row = uses.setdefault(primitive, {})
                    row[index] = row.get(index, 0.0) + group.weight * c
        if {"identity", "positive", "negative"} <= uses.keys():
            for index, c in uses.pop("identity").items():
                for part in ("positive", "negative"):
                    uses[part][index] = uses[part].get(index, 0.0) + c
        primitives = tuple((primitive, tuple((i, c) for i, c in row.items() if c != 0.0))
                           for primitive, row in uses.items())
        vjps.append((key, tuple((p, row) for p, row in primitives if row)))
    return tuple(vjps)


_KEY_SIGNS = {"positive": 1, "negative": -1, "ones": 1}
_PRIMITIVE_SIGNS = {"positive": 1, "negative": -1, "ones": 1, "square": 1}


def _sign_of(name: Any, signs: Mapping[str, int], input_sign: str | None = None) -> int:
    """+1 / -1 where a modified input or parameter provably has that sign (zeros allowed),
    else 0; the identity input has the input's sign."""
    if name == "identity" and input_sign is not None:
        return 1 if input_sign == "nonnegative" else -1
    return signs.get(name, 0) if isinstance(name, str) else 0


def _compile(plan: Plan, sign: str | None, has_bias: bool) -> Program:
    tables = _coefficients(plan, sign, has_bias)
    vjps = _vjps(plan, tables)  # the terms' own products; what follows rewrites only z
    outputs = _read_output(tables, has_bias)
    _gated_parts(plan, tables, outputs, sign, has_bias)
    folded = _foldable_biases(tables) if has_bias else {}
    items = []
    for (products, biases), output in zip(tables, outputs, strict=True):
        computed = tuple((key, primitive, c) for (key, primitive), c in products.items()
                         if c != 0.0)
        bias_items = tuple((primitive, c) for primitive, c in biases.items()
                           if c != 0.0 and primitive not in folded.values())
        items.append((output, computed, bias_items))
    counts = Counter((key, primitive) for _, computed, _ in items for key, primitive, _ in computed)
    groups = tuple(
        GroupProgram(
            output, computed, bias_items,
            frozenset(pair for pair in ((k, p) for k, p, _ in computed) if counts[pair] == 1),
            output == 0.0 and all(
                _sign_of(key, _KEY_SIGNS, sign) * _sign_of(primitive, _PRIMITIVE_SIGNS) * c > 0
                for key, primitive, c in computed)
            and all(_sign_of(primitive, _PRIMITIVE_SIGNS) * c > 0 for primitive, c in bias_items),
        )
        for output, computed, bias_items in items
    )
    uses_output = any(outputs) or any(group.gate is not None for group in plan.groups)
    return Program(groups, folded, vjps, uses_output)
