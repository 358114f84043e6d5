"""Batch-norm merging: Zennit's sequential and named pairs, and pairs from the traced data flow.

For a batch norm with ``scale = weight / sqrt(running_var + eps)``, each linear layer it
follows gets ``W' = W * scale`` along its output channels and ``b' = (b - running_mean) *
scale + bias``; the batch norm becomes an ``nn.Identity`` in the view. Merged tensors are
recomputed from the params on every call of the transform.
"""

from __future__ import annotations

import difflib
from abc import abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from funcattr import types
from funcattr.canonizers.base import Canonizer, ParamTransform
from funcattr.canonizers.tracing import trace
from funcattr.canonizers.view import ViewBuilder

__all__ = [
    "MergeBatchNorm",
    "NamedMergeBatchNorm",
    "SequentialMergeBatchNorm",
    "TracedMergeBatchNorm",
]

_TRAINING = (
    "{owner}(model={model}): expected batch norms in eval mode (merging uses their running "
    "statistics), got {names} in training mode. Call model.eval() before explaining the model."
)


def _bn_scale(weight: Tensor | None, running_var: Tensor, eps: float) -> Tensor:
    denominator = (running_var + eps) ** 0.5
    return (torch.ones_like(running_var) if weight is None else weight) / denominator


@dataclass(frozen=True)
class _MergeInto:
    """Merge a batch norm that follows a linear layer: ``W' = W s``, ``b' = (b - m) s + beta``."""

    transpose: bool
    groups: int
    eps: float

    def __call__(self, weight, bias, bn_weight, bn_bias, running_mean, running_var):
        scale = _bn_scale(bn_weight, running_var, self.eps)
        if bias is None:
            bias = torch.zeros_like(running_mean if bn_bias is None else bn_bias)
        if self.transpose:
            shape = weight.shape
            grouped = weight.reshape(self.groups, shape[0] // self.groups, *shape[1:])
            index = (self.groups, 1, shape[1], *(1,) * (weight.ndim - 2))
            merged = (grouped * scale.reshape(index)).reshape(shape)
        else:
            merged = weight * scale.reshape(-1, *(1,) * (weight.ndim - 1))
        shifted = (bias - running_mean) * scale
        return merged, shifted if bn_bias is None else shifted + bn_bias


@dataclass(frozen=True)
class _MergeFrom:
    """Merge a batch norm that precedes a linear layer: ``W' = W diag(s)``, ``b' = b + W t``."""

    groups: int
    eps: float

    def __call__(self, weight, bias, bn_weight, bn_bias, running_mean, running_var):
        scale = _bn_scale(bn_weight, running_var, self.eps)
        shift = -running_mean * scale
        if bn_bias is not None:
            shift = shift + bn_bias
        shape = weight.shape  # (out, in // groups, *kernel)
        groups = self.groups
        grouped = weight.reshape(groups, shape[0] // groups, shape[1], -1)
        merged = grouped * scale.reshape(groups, 1, shape[1], 1)
        offset = (grouped * shift.reshape(groups, 1, shape[1], 1)).sum(dim=(2, 3)).reshape(-1)
        new_bias = offset if bias is None else bias + offset
        return merged.reshape(shape), new_bias


def _channels_out(linear: nn.Module) -> int:
    if isinstance(linear, nn.Linear):
        return linear.out_features
    return linear.out_channels


def _channels_in(linear: nn.Module) -> int:
    if isinstance(linear, nn.Linear):
        return linear.in_features
    return linear.in_channels


def _bn_features(bn: nn.Module) -> int:
    return bn.running_mean.shape[0] if isinstance(bn.running_mean, Tensor) else -1


def _bn_inputs(bn: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(bn, name) for name in ("weight", "bias", "running_mean", "running_var")]


def _identity_for(bn: nn.Module) -> nn.Module:
    """The merged batch norm's place in the view: an identity in the batch norm's mode."""
    return nn.Identity().train(bn.training)


def _describe(module: nn.Module) -> str:
    return type(module).__name__


@dataclass(frozen=True)
class MergeBatchNorm(Canonizer):
    """Abstract: merge batch norms into the linear layers before them (Zennit's name).

    For a batch norm with ``scale = weight / sqrt(running_var + eps)``, each linear layer it
    follows gets ``W' = W * scale`` along its output channels (dimension 1 of a transposed
    convolution's weight, per group) and ``b' = (b - running_mean) * scale + bias`` (a missing
    bias counts as zero); the batch norm becomes an ``nn.Identity`` in the view. Merged
    weights are recomputed from the params on every call, so gradients reach the original
    weights and batch-norm statistics. The model must be in eval mode. Returns a new model
    view and params; the inputs are unchanged.

    Subclasses say which pairs to merge by implementing :meth:`pairs`.
    """

    linear_type: ClassVar[tuple[type, ...]] = (types.Linear,)
    batch_norm_type: ClassVar[tuple[type, ...]] = (types.BatchNorm,)

    @abstractmethod
    def pairs(self, model: nn.Module) -> list[tuple[tuple[str, ...], str]]:
        """The ``(linear layer names, batch-norm name)`` pairs to merge in ``model``."""

    def apply(self, model: nn.Module) -> tuple[nn.Module, ParamTransform]:
        pairs = self.pairs(model)
        modules = dict(model.named_modules(remove_duplicate=False))
        self._check(model, modules, pairs)
        builder = ViewBuilder(model)
        for linear_names, bn_name in pairs:
            bn = modules[bn_name]
            for name in linear_names:
                self._merge_into(builder, modules[name], bn)
            builder.replace(bn, _identity_for(bn))
        return builder.build()

    @staticmethod
    def _merge_into(builder: ViewBuilder, linear: nn.Module, bn: nn.Module) -> None:
        transpose = isinstance(linear, types.ConvolutionTranspose)
        fn = _MergeInto(transpose, getattr(linear, "groups", 1), float(bn.eps))
        builder.derive(fn, [(linear, "weight"), (linear, "bias"), *_bn_inputs(bn)],
                       [(linear, "weight"), (linear, "bias")])

    def _owner(self) -> str:
        return f"{type(self).__name__}.apply"

    def _check(self, model: nn.Module, modules: dict[str, nn.Module],
               pairs: list[tuple[tuple[str, ...], str]]) -> None:
        """Report every problem of ``pairs`` at once."""
        training = sorted({bn for _, bn in pairs if modules[bn].training})
        if training:
            raise ValueError(_TRAINING.format(owner=self._owner(), model=_describe(model),
                                              names=", ".join(repr(n) for n in training)))
        problems = _pair_problems(modules, pairs)
        if problems:
            raise ValueError(
                f"{self._owner()}(model={_describe(model)}): expected mergeable (linear layer, "
                f"batch norm) pairs, got: {'; '.join(problems)}. The model's children are "
                f"probably not registered in forward order; use TracedMergeBatchNorm() or "
                f"NamedMergeBatchNorm(name_map) for this model."
            )


def _pair_problems(modules: dict[str, nn.Module],
                   pairs: list[tuple[tuple[str, ...], str]]) -> list[str]:
    """Why the ``(linear names, batch-norm name)`` pairs cannot merge (empty: they can)."""
    problems = []
    for linear_names, bn_name in pairs:
        bn = modules[bn_name]
        if not isinstance(bn.running_mean, Tensor) or not isinstance(bn.running_var, Tensor):
            problems.append(f"{bn_name!r} keeps no running statistics "
                            f"(track_running_stats=False)")
        for name in linear_names:
            linear = modules[name]
            if _channels_out(linear) != _bn_features(bn):
                problems.append(
                    f"{name!r} ({type(linear).__name__}) has {_channels_out(linear)} output "
                    f"channels but {bn_name!r} normalises {_bn_features(bn)}"
                )
    return problems


def _named_leaves(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Leaves in depth-first, registration order (Zennit's ``collect_leaves``), with names."""
    children = list(module.named_children())
    if not children:
        yield prefix, module
    for name, child in children:
        yield from _named_leaves(child, f"{prefix}.{name}" if prefix else name)


@dataclass(frozen=True)
class SequentialMergeBatchNorm(MergeBatchNorm):
    """Merge every batch norm that directly follows a linear layer in *registration order*.

    Zennit's semantics: the model's leaf modules are walked depth-first in the order in which
    they were registered; a batch norm whose previous leaf is a linear layer (dense or any
    convolution) is merged into it. Anything registered between them (an activation module)
    blocks the merge; operations in ``forward`` are invisible. Use
    :class:`TracedMergeBatchNorm` where registration order is not the data flow. Returns a
    new model view and params; the inputs are unchanged.

    Examples
    --------
    >>> SequentialMergeBatchNorm()
    SequentialMergeBatchNorm()
    """

    @classmethod
    def fits(cls, model: nn.Module) -> bool:
        """Whether ``model`` has batch norms after linear layers in registration order, all
        mergeable, and (where the model traces) they are the pairs of the real data flow."""
        pairs = cls().pairs(model)
        modules = dict(model.named_modules(remove_duplicate=False))
        if not pairs or _pair_problems(modules, pairs):
            return False
        try:
            traced = TracedMergeBatchNorm(following=False).pairs(model)
        except ValueError:
            return True  # not traceable: the registration order is all there is
        return sorted(traced) == sorted(pairs)

    def pairs(self, model: nn.Module) -> list[tuple[tuple[str, ...], str]]:
        found = []
        previous: tuple[str, nn.Module] | None = None
        for name, leaf in _named_leaves(model):
            if (previous is not None and isinstance(previous[1], self.linear_type)
                    and isinstance(leaf, self.batch_norm_type)):
                found.append(((previous[0],), name))
            previous = (name, leaf)
        return found


@dataclass(frozen=True)
class NamedMergeBatchNorm(MergeBatchNorm):
    """Merge batch norms into linear layers given by name.

    Parameters
    ----------
    name_map : sequence of (sequence of str, str)
        ``[([linear names...], batch-norm name), ...]``, names as in ``model.named_modules()``
        (the format of Zennit's ``share/merge_maps``, e.g. ``[(["features.0"], "features.1")]``).

    Examples
    --------
    >>> NamedMergeBatchNorm([(["features.0"], "features.1")])
    NamedMergeBatchNorm(name_map=((('features.0',), 'features.1'),))
    """

    name_map: Any

    def __post_init__(self) -> None:
        raw = self.name_map
        entries = []
        for entry in list(raw) if isinstance(raw, Iterable) and not isinstance(raw, str) else [raw]:
            try:
                linears, bn = entry
                entries.append(((linears,) if isinstance(linears, str) else tuple(linears), bn))
            except (TypeError, ValueError) as error:
                raise TypeError(
                    f"NamedMergeBatchNorm(name_map={self.name_map!r}): expected a sequence of "
                    f"([linear names...], batch-norm name) pairs, got {entry!r}. Write e.g. "
                    f"name_map=[(['features.0'], 'features.1')]."
                ) from error
        entries = tuple(entries)
        bad = [entry for entry in entries
               if not isinstance(entry[1], str) or not all(isinstance(n, str) for n in entry[0])]
        if bad:
            raise TypeError(
                f"NamedMergeBatchNorm(name_map={self.name_map!r}): expected module names "
                f"(str), got {bad[0]!r}. Write e.g. name_map=[(['features.0'], 'features.1')]."
            )
        object.__setattr__(self, "name_map", entries)

    def pairs(self, model: nn.Module) -> list[tuple[tuple[str, ...], str]]:
        modules = dict(model.named_modules(remove_duplicate=False))
        problems = []
        for linears, bn in self.name_map:
            for name, kind, label in [*((n, self.linear_type, "a linear layer") for n in linears),
                                      (bn, self.batch_norm_type, "a batch norm")]:
                if name not in modules:
                    close = difflib.get_close_matches(name, list(modules), n=3)
                    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
                    problems.append(f"{name!r} is not a module of the model{hint}")
                elif not isinstance(modules[name], kind):
                    problems.append(f"{name!r} is a {type(modules[name]).__name__}, expected "
                                    f"{label}")
        if problems:
            raise ValueError(
                f"NamedMergeBatchNorm(name_map=...): expected names of linear layers and batch "
                f"norms of the model, got: {'; '.join(problems)}. Use names from "
                f"model.named_modules()."
            )
        return list(self.name_map)


# --------------------------------------------------------------------------------------------
# Data-flow merging with torch.fx
# --------------------------------------------------------------------------------------------

_UNTRACEABLE = (
    "TracedMergeBatchNorm.apply(model={model}): expected a model that torch.fx can trace "
    "symbolically, got {error}. Use SequentialMergeBatchNorm() or "
    "NamedMergeBatchNorm(name_map) for this model, or make its forward traceable (no "
    "control flow that depends on tensor values)."
)


def _trace(model: nn.Module, linear_type: tuple, batch_norm_type: tuple) -> torch.fx.Graph:
    try:
        return trace(model, linear_type + batch_norm_type)
    except Exception as error:  # fx raises many kinds; all mean "not traceable"
        first = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(_UNTRACEABLE.format(
            model=_describe(model), error=f"{type(error).__name__}: {first}"
        )) from error


def _zero_padding(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    padding = module.padding
    if isinstance(padding, str):
        return padding == "valid" or all(k == 1 for k in module.kernel_size)
    return all(p == 0 for p in padding)


@dataclass(frozen=True)
class TracedMergeBatchNorm(MergeBatchNorm):
    """Merge batch norms along the model's real data flow, found with ``torch.fx``.

    The model is traced symbolically (``torch.fx``; linear layers and batch norms are leaves).
    A batch norm is merged into the linear layer before it when its only input is that
    layer's output, the layer's output is used nowhere else, and each module is called once.
    This is right for any module order, where :class:`SequentialMergeBatchNorm` follows the
    order of registration (and merges e.g. DenseNet's concatenated features wrongly).

    Parameters
    ----------
    following : bool
        Also merge a batch norm into the linear layer *after* it, where that is exact: the
        batch norm's output is used only by a dense layer or by a convolution without padding
        (``W' = W diag(scale)``, ``b' = b + W shift``). A batch norm before a ReLU stays.

    Raises
    ------
    ValueError
        When the model cannot be traced (data-dependent control flow); the message names the
        fx error and the alternatives.

    Notes
    -----
    Tracing runs the forward of a private copy of the model with proxy values once per
    :meth:`apply`, i.e. once per ``functionalize``, without changing anything global (unlike
    ``torch.fx.symbolic_trace``): other threads may run models meanwhile
    (:mod:`funcattr.canonizers.tracing`).

    Examples
    --------
    >>> TracedMergeBatchNorm()
    TracedMergeBatchNorm(following=True)
    """

    following: bool = True

    @classmethod
    def fits(cls, model: nn.Module) -> bool:
        """Whether ``model`` traces and has batch norms to merge into the layer before them."""
        try:
            pairs = cls(following=False).pairs(model)
        except ValueError:
            return False
        modules = dict(model.named_modules(remove_duplicate=False))
        return bool(pairs) and not _pair_problems(modules, pairs)

    def _graph_pairs(self, model: nn.Module):
        graph = _trace(model, self.linear_type, self.batch_norm_type)
        modules = dict(model.named_modules())
        calls: dict[str, int] = {}
        for node in graph.nodes:
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
        before, after = [], []
        merged_bn = set()
        for node in graph.nodes:
            if node.op != "call_module" or not isinstance(modules[node.target],
                                                          self.batch_norm_type):
                continue
            if calls[node.target] != 1 or len(node.args) != 1 or node.kwargs:
                continue
            source = node.args[0]
            if (isinstance(source, torch.fx.Node) and source.op == "call_module"
                    and isinstance(modules[source.target], self.linear_type)
                    and calls[source.target] == 1 and len(source.users) == 1):
                before.append(((source.target,), node.target))
                merged_bn.add(node.target)
        if self.following:
            used: set[str] = set()
            for node in graph.nodes:
                if (node.op != "call_module" or node.target in merged_bn
                        or not isinstance(modules[node.target], self.batch_norm_type)
                        or calls[node.target] != 1 or len(node.args) != 1 or node.kwargs
                        or len(node.users) != 1):
                    continue
                (user,) = node.users
                if user.op != "call_module" or user.args[:1] != (node,) or len(user.args) != 1:
                    continue
                linear = modules[user.target]
                if (not isinstance(linear, self.linear_type)
                        or isinstance(linear, types.ConvolutionTranspose)
                        or calls[user.target] != 1 or user.target in used
                        or not _zero_padding(linear)):
                    continue
                after.append(((user.target,), node.target))
                used.add(user.target)
        return before, after

    def pairs(self, model: nn.Module) -> list[tuple[tuple[str, ...], str]]:
        """The pairs ``(linear names, batch-norm name)`` merged into the layer before them."""
        return self._graph_pairs(model)[0]

    def following_pairs(self, model: nn.Module) -> list[tuple[tuple[str, ...], str]]:
        """The pairs ``(linear names, batch-norm name)`` merged into the layer after them."""
        return self._graph_pairs(model)[1] if self.following else []

    def apply(self, model: nn.Module) -> tuple[nn.Module, ParamTransform]:
        before, after = self._graph_pairs(model)
        modules = dict(model.named_modules(remove_duplicate=False))
        self._check(model, modules, before)
        self._check_following(model, modules, after)
        builder = ViewBuilder(model)
        for (linear_name,), bn_name in before:
            self._merge_into(builder, modules[linear_name], modules[bn_name])
            builder.replace(modules[bn_name], _identity_for(modules[bn_name]))
        for (linear_name,), bn_name in after:
            linear, bn = modules[linear_name], modules[bn_name]
            fn = _MergeFrom(getattr(linear, "groups", 1), float(bn.eps))
            builder.derive(fn, [(linear, "weight"), (linear, "bias"), *_bn_inputs(bn)],
                           [(linear, "weight"), (linear, "bias")])
            builder.replace(bn, _identity_for(bn))
        return builder.build()

    def _check_following(self, model, modules, pairs) -> None:
        training = sorted({bn for _, bn in pairs if modules[bn].training})
        if training:
            raise ValueError(_TRAINING.format(owner=self._owner(), model=_describe(model),
                                              names=", ".join(repr(n) for n in training)))
        problems = [
            f"{bn!r} keeps no running statistics (track_running_stats=False)"
            if not isinstance(modules[bn].running_var, Tensor) else
            f"{names[0]!r} has {_channels_in(modules[names[0]])} input channels but {bn!r} "
            f"normalises {_bn_features(modules[bn])}"
            for names, bn in pairs
            if not isinstance(modules[bn].running_var, Tensor)
            or _channels_in(modules[names[0]]) != _bn_features(modules[bn])
        ]
        if problems:
            raise ValueError(
                f"{self._owner()}(model={_describe(model)}): expected mergeable (batch norm, "
                f"linear layer) pairs, got: {'; '.join(problems)}. Use "
                f"TracedMergeBatchNorm(following=False)."
            )

