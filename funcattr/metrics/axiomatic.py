"""Axiomatic checks: completeness of the input attribution and conservation per layer.

:func:`conservation` shows *where* LRP relevance is lost or created: it captures the relevance
that enters and leaves every ruled (and every leaf) module call and reports ``sum in`` vs
``sum out`` per layer [bach2015, montavon2019].

How the relevance is captured, without touching the model: a fresh private copy of the
rule-applied module tree (shallow, sharing the parameter tensors) gets forward hooks that add
zero-valued *probes* to each module call's inputs and output. The probes are extra arguments of
one ``torch.func.vjp``; the cotangent of an output probe is the relevance arriving at that call's
output, the cotangent of an input probe is the relevance that call sends to its input. In
Zennit's convention the backward pass of an LRP rule carries relevance itself, so these
cotangents are relevances. The copy is dropped after the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from funcattr.attribution.targets import check_target, one_hot
from funcattr.functional import FunctionalModel, functionalize
from funcattr.metrics.inputs import check_input, pool_attribution
from funcattr.metrics.scores import Params, as_model, class_scores

__all__ = ["ConservationReport", "LayerConservation", "completeness", "conservation"]

_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")
_HOOK_REGISTRIES = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
                    "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


def completeness(model: Any, input: Tensor, target: Any, attribution: Tensor, *,
                 params: Params | None = None, baseline: float | Tensor | None = 0.0,
                 softmax: bool = False) -> Tensor:
    """Completeness / conservation residual: ``sum_i R_i - (f_c(x) - f_c(baseline))``.

    Integrated Gradients and LRP-0-like rules without biases satisfy ``sum R = f(x) - f(x')``
    [sundararajan2017] / ``sum R = f(x)`` [bach2015] (``baseline=None``: compare with ``f_c(x)``
    alone). The residual is 0 for a complete explanation; its sign says whether relevance was
    created (> 0) or lost (< 0).

    Returns
    -------
    Tensor
        ``(batch,)`` residual.
    """
    owner = "completeness"
    fn, params = as_model(model, params, owner)
    input = check_input(input, owner)
    target = check_target(target, input.shape[0], owner)
    pooled = pool_attribution(attribution, input, owner)
    total = pooled.reshape(pooled.shape[0], -1).sum(dim=1)
    score = class_scores(fn, params, input, target, softmax, owner)
    if baseline is not None:
        base = torch.as_tensor(baseline, dtype=input.dtype, device=input.device).expand_as(input)
        score = score - class_scores(fn, params, base.contiguous(), target, softmax, owner)
    return total - score


@dataclass(frozen=True)
class LayerConservation:
    """Relevance sums at one module call: ``relevance_in`` (sent to the inputs) and
    ``relevance_out`` (arriving at the output), each ``(batch,)``."""

    name: str
    module: str
    rule: str
    relevance_in: Tensor
    relevance_out: Tensor

    @property
    def created(self) -> Tensor:
        """``relevance_in - relevance_out``: > 0 where the layer creates relevance."""
        return self.relevance_in - self.relevance_out

    @property
    def ratio(self) -> Tensor:
        """``relevance_in / relevance_out`` (1 = conserving; NaN where nothing arrives)."""
        return self.relevance_in / self.relevance_out


_HEADER = ("layer", "module", "rule", "sum in", "sum out", "in - out", "in / out")


@dataclass(frozen=True)
class ConservationReport:
    """Per-layer relevance sums, in forward order, with the totals at output and input.

    ``str(report)`` prints a table of batch means.
    """

    layers: tuple[LayerConservation, ...]
    output_relevance: Tensor
    input_relevance: Tensor

    def rows(self, sample: int | None = None) -> list[tuple]:
        """Table rows ``(layer, module, rule, in, out, in - out, in / out)``; batch means
        (or one ``sample``)."""
        def pick(value: Tensor) -> float:
            return float(value.mean() if sample is None else value[sample])

        rows = [("<output>", "", "", pick(self.output_relevance), pick(self.output_relevance),
                 0.0, 1.0)]
        for layer in reversed(self.layers):
            rin, rout = pick(layer.relevance_in), pick(layer.relevance_out)
            rows.append((layer.name, layer.module, layer.rule, rin, rout, rin - rout,
                         rin / rout if rout != 0 else float("nan")))
        rin, rout = pick(self.input_relevance), pick(self.output_relevance)
        rows.append(("<input>", "", "", rin, rout, rin - rout,
                     rin / rout if rout != 0 else float("nan")))
        return rows

    def __str__(self) -> str:
        body = [[r[0], r[1], r[2], *(f"{v:.6g}" for v in r[3:])] for r in self.rows()]
        table = [list(_HEADER), *body]
        widths = [max(len(row[i]) for row in table) for i in range(len(_HEADER))]
        return "\n".join(
            "  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(row, widths)))
            for row in table
        )


def _resolve(model: Any, composite: Any, canonizers: Any, params: Params | None):
    owner = "conservation"
    if isinstance(model, nn.Module):
        fn, own = functionalize(model, composite, canonizers)
        return fn, own if params is None else dict(params)
    if isinstance(model, FunctionalModel):
        if composite is not None or canonizers is not None:
            raise ValueError(
                f"{owner}(composite=...): the functionalized model already has its rules; "
                f"expected composite=None with it, got a composite. Pass the nn.Module to apply "
                f"a composite here."
            )
        if params is None:
            raise TypeError(
                f"{owner}(params=None): a functionalized fn needs params; expected its params "
                f"dict, got None. Pass params=... (from funcattr.functionalize)."
            )
        return model, dict(params)
    raise TypeError(
        f"{owner}(model={type(model).__name__}): expected an nn.Module (with composite=...) "
        f"or the fn of funcattr.functionalize, got {type(model).__name__}; a plain function "
        f"has no layers to inspect. Pass the nn.Module."
    )


def conservation(
    model: Any,
    input: Tensor,
    target: Any,
    *,
    composite: Any = None,
    canonizers: Any = None,
    params: Params | None = None,
    times_output: bool = True,
    leaves: bool = True,
) -> ConservationReport:
    """Relevance sum entering and leaving every layer: where LRP loses or creates relevance.

    The explanation is the rule-modified gradient of ``one_hot(target)`` (times the output:
    Zennit's relevance convention, so the output relevance is ``f_c(x)``). For every call of a
    ruled module (and, with ``leaves``, every leaf module) the report holds the sum of the
    relevance arriving at its output and the sum it sends to its inputs. Per layer,
    ``in - out`` is the relevance created (> 0) or lost (< 0) there, e.g. absorbed by biases and
    the epsilon stabilizer, or dropped by the negative half of a ZPlus rule. ``<input>``
    compares the attribution's total with the output relevance.

    Parameters
    ----------
    model : nn.Module or FunctionalModel
        An ``nn.Module`` (with ``composite``/``canonizers``; never changed) or the ``fn`` of
        :func:`funcattr.functionalize` with ``params``.
    input : Tensor
        Inputs, batch first.
    target : int, sequence or Tensor
        The explained class(es).
    composite, canonizers
        The rules for an ``nn.Module`` (a composite name or object).
    params : dict, optional
        Parameters (keyed like the model).
    times_output : bool
        Seed ``output * one_hot`` (relevance) rather than ``one_hot``.
    leaves : bool
        Also report unruled leaf modules (activations, pooling, flatten ...).

    Returns
    -------
    ConservationReport
        ``print(report)`` shows the per-layer table.

    Examples
    --------
    >>> print(conservation(model, x, y, composite="epsilon_plus"))  # doctest: +SKIP
    """
    owner = "conservation"
    fn, params = _resolve(model, composite, canonizers, params)
    input = check_input(input, owner)
    target = check_target(target, input.shape[0], owner)
    tree = fn.module_tree()  # private copy: hooks never reach the model
    modules = dict(tree.named_modules())
    names = [name for name, module in modules.items()
             if name in fn.rules or (leaves and name and not module._modules)]
    view_params = {k: v.clone() if k.endswith(_STATISTICS) else v
                   for k, v in fn.transform(params).items()}

    # Calls are numbered in pre-order (a module's call before the calls nested in it); the
    # first pass records each call's input and output shapes, the second adds the probes.
    calls: list[list] = []  # [name, input shapes, output shape]
    state: dict[str, Any] = {"probes": None, "next": 0, "stack": []}

    def pre_hook(module: nn.Module, args: tuple) -> tuple | None:
        position = state["next"]
        state["next"] += 1
        state["stack"].append(position)
        if state["probes"] is None:
            calls.append([module_names[id(module)],
                          [a.shape for a in args if isinstance(a, Tensor)], None])
            return None
        probes = iter(state["probes"][0][position])
        return tuple(a + next(probes) if isinstance(a, Tensor) else a for a in args)

    def post_hook(module: nn.Module, args: tuple, output: Any) -> Any:
        position = state["stack"].pop()
        if state["probes"] is None:
            calls[position][2] = output.shape if isinstance(output, Tensor) else None
            return None
        if isinstance(output, Tensor):
            return output + state["probes"][1][position]
        return output

    def run(inputs: Tensor, probes_in=None, probes_out=None) -> Tensor:
        state.update(next=0, stack=[],
                     probes=None if probes_in is None else (probes_in, probes_out))
        try:
            return torch.func.functional_call(tree, view_params, (inputs,))
        finally:
            state["probes"] = None

    module_names = {id(modules[name]): name for name in names}
    for name in names:  # the copy shares its hook registries with the model: give it its own
        state_dict = modules[name].__dict__
        for key in _HOOK_REGISTRIES:
            if key in state_dict:
                state_dict[key] = type(state_dict[key])(state_dict[key])
    handles = []
    try:
        for name in names:
            handles.append(modules[name].register_forward_pre_hook(pre_hook))
            handles.append(modules[name].register_forward_hook(post_hook))
        with torch.no_grad():
            run(input)
        zeros_in = [[input.new_zeros(shape) for shape in shapes] for _, shapes, _ in calls]
        zeros_out = [input.new_zeros(shape if shape is not None else ()) for _, _, shape in calls]
        output, vjp_fn = torch.func.vjp(run, input, zeros_in, zeros_out)
        seed = one_hot(target, times_output=times_output)(output.detach())
        grad_x, grad_in, grad_out = vjp_fn(seed)
    finally:
        for handle in handles:
            handle.remove()

    counts: dict[str, int] = {}
    layers = []
    for (name, _, out_shape), g_in, g_out in zip(calls, grad_in, grad_out):
        counts[name] = counts.get(name, 0) + 1
        label = name if counts[name] == 1 else f"{name}#{counts[name]}"
        batch = input.shape[0]
        rin = sum((g.reshape(batch, -1).sum(1) for g in g_in if g.ndim and g.shape[0] == batch),
                  start=input.new_zeros(batch))
        rout = g_out.reshape(batch, -1).sum(1) if out_shape is not None else input.new_full(
            (batch,), float("nan"))
        rule = fn.rules.get(name)
        layers.append(LayerConservation(label, type(modules[name]).__name__,
                                        repr(rule) if rule is not None else "-", rin, rout))
    output_relevance = seed.reshape(input.shape[0], -1).sum(1)
    input_relevance = grad_x.reshape(input.shape[0], -1).sum(1)
    return ConservationReport(tuple(layers), output_relevance, input_relevance)
