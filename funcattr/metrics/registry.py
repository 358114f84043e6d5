"""The metric registry: one :class:`MetricSpec` per metric, in table order.

:func:`funcattr.metrics.evaluate` and ``funcattr evaluate`` read it for the names, the table
columns and their directions, which metrics need masks, the defaults ``evaluate`` picks for a
batch and how it calls each metric. Adding a metric is one :func:`register_metric` call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from funcattr.metrics.axiomatic import completeness
from funcattr.metrics.faithfulness import (
    PerturbationCurves,
    infidelity,
    pixel_flipping,
    region_perturbation,
    sensitivity_n,
)
from funcattr.metrics.localisation import (
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)
from funcattr.metrics.randomisation import model_parameter_randomisation, random_logit
from funcattr.metrics.robustness import avg_sensitivity, max_sensitivity, sensitivities

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "METRIC_SPECS",
    "SUPPLIED",
    "MetricCase",
    "MetricSpec",
    "get_metric",
    "metric_keywords",
    "register_metric",
]

#: Keywords ``evaluate`` supplies itself (an option cannot set them).
SUPPLIED = frozenset({"model", "input", "target", "attribution", "params", "generator",
                      "chunk_size", "explain", "masks", "owner", "options"})


@dataclass(frozen=True)
class MetricCase:
    """What ``evaluate`` knows when it runs one metric for one explanation method."""

    fn: Callable
    params: Mapping[str, Tensor]
    input: Tensor
    target: Tensor
    attribution: Tensor
    explain: Callable
    masks: Tensor | None
    generator: Any
    chunk_size: int | None
    num_classes: int | None

    @property
    def spatial(self) -> tuple[int, ...]:
        """The spatial shape of the input (``(features,)`` for ``(batch, features)``)."""
        return tuple(self.input.shape[2:]) if self.input.ndim > 2 else tuple(self.input.shape[1:])


@dataclass(frozen=True)
class MetricSpec:
    """One metric as ``evaluate`` runs it.

    Attributes
    ----------
    name : str
        The metric's name (``--metric NAME``).
    function : callable
        The public metric function.
    columns : dict of str to bool
        Its table columns and whether higher (True) or lower (False) is better.
    run : callable
        ``run(case, **options) -> result``: the metric on a :class:`MetricCase`.
    values : callable, optional
        ``result -> {column: (batch,) tensor}``; default ``{name: result}``.
    defaults : callable, optional
        ``case -> options`` that ``evaluate`` uses unless overridden.
    needs_masks : bool
        A localisation metric (needs ground-truth masks).
    default : bool
        Part of :data:`DEFAULT_METRICS`.
    curves : bool
        Its result is a :class:`PerturbationCurves` (kept in the table, drawn by ``--plot``).
    keywords_from : tuple of callable
        Functions whose keywords its options may set (besides ``function``).
    """

    name: str
    function: Callable
    columns: Mapping[str, bool]
    run: Callable[..., Any]
    values: Callable[[Any], dict[str, Tensor]] | None = None
    defaults: Callable[[MetricCase], dict[str, Any]] | None = None
    needs_masks: bool = False
    default: bool = False
    curves: bool = False
    keywords_from: tuple[Callable, ...] = ()

    def columns_of(self, result: Any) -> dict[str, Tensor]:
        """The table columns of one result."""
        return {self.name: result} if self.values is None else self.values(result)

    def options_for(self, case: MetricCase, options: Mapping[str, Any]) -> dict[str, Any]:
        """``evaluate``'s defaults for ``case`` overridden by ``options``."""
        return {**(self.defaults(case) if self.defaults else {}), **options}


#: Name -> spec, in table order.
METRIC_SPECS: dict[str, MetricSpec] = {}


class _Columns(Mapping):
    """``METRICS``: a live view name -> ``{column: higher is better}`` of the registry."""

    def __getitem__(self, name: str) -> dict[str, bool]:
        return dict(METRIC_SPECS[name].columns)

    def __iter__(self) -> Iterator[str]:
        return iter(METRIC_SPECS)

    def __len__(self) -> int:
        return len(METRIC_SPECS)

    def __repr__(self) -> str:
        return repr(dict(self))


#: Metric name -> its columns and whether higher (True) or lower (False) is better.
METRICS: Mapping[str, dict[str, bool]] = _Columns()


class _Defaults(Sequence):
    """``DEFAULT_METRICS``: a live view of the registered metrics marked ``default``."""

    def _names(self) -> tuple[str, ...]:
        return tuple(name for name, spec in METRIC_SPECS.items() if spec.default)

    def __getitem__(self, index):
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __eq__(self, other: object) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, Sequence) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


#: The metrics ``evaluate`` runs when none are named.
DEFAULT_METRICS: Sequence[str] = _Defaults()


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Add ``spec`` to the registry (after the metrics registered before it)."""
    if not isinstance(spec, MetricSpec):
        raise TypeError(
            f"register_metric(spec={type(spec).__name__}): expected a MetricSpec, got "
            f"{type(spec).__name__}. Pass MetricSpec(name=..., function=..., columns=..., "
            f"run=...)."
        )
    taken = {column for other in METRIC_SPECS.values() for column in other.columns}
    clashes = [c for c in spec.columns if c in taken]
    if spec.name in METRIC_SPECS or clashes:
        raise ValueError(
            f"register_metric(spec=MetricSpec(name={spec.name!r})): expected a new name and "
            f"new columns, got {[spec.name] if spec.name in METRIC_SPECS else clashes}, already "
            f"registered. Choose other names."
        )
    METRIC_SPECS[spec.name] = spec
    return spec


def get_metric(name: str, owner: str = "get_metric") -> MetricSpec:
    """The spec of a registered metric."""
    if name not in METRIC_SPECS:
        raise ValueError(
            f"{owner}(metrics={[name]!r}): expected names from {list(METRIC_SPECS)}, got "
            f"{name!r}. Pass registered metric names."
        )
    return METRIC_SPECS[name]


def metric_keywords(name: str) -> list[str]:
    """The keywords of metric ``name`` that an option may set (not those in :data:`SUPPLIED`)."""
    spec = get_metric(name, "metric_keywords")
    names: list[str] = []
    for function in (spec.function, *spec.keywords_from):
        names += list(inspect.signature(function).parameters)
    return [n for n in dict.fromkeys(names) if n not in SUPPLIED]


# --------------------------------------------------------------------------------------------
# The metrics, in table order
# --------------------------------------------------------------------------------------------

def _divisor_near(spatial: Sequence[int], want: int) -> int:
    return max(d for d in range(1, want + 1) if all(s % d == 0 for s in spatial))


def _curve_columns(name: str) -> Callable[[PerturbationCurves], dict[str, Tensor]]:
    def values(result: PerturbationCurves) -> dict[str, Tensor]:
        return {f"{name}_morf_auc": result.auc("morf"), f"{name}_lerf_auc": result.auc("lerf"),
                f"{name}_difference": result.difference}
    return values


def _on_model(function: Callable) -> Callable[..., Any]:
    """``run`` for a metric of ``(model, input, target, attribution)``."""
    def run(case: MetricCase, **options: Any) -> Any:
        return function(case.fn, case.input, case.target, case.attribution, params=case.params,
                        generator=case.generator, chunk_size=case.chunk_size, **options)
    return run


def _on_explain(function: Callable) -> Callable[..., Any]:
    """``run`` for a metric of ``(explain, input, target)`` with the attribution given."""
    def run(case: MetricCase, **options: Any) -> Any:
        return function(case.explain, case.input, case.target, attribution=case.attribution,
                        generator=case.generator, chunk_size=case.chunk_size, **options)
    return run


def _on_masks(function: Callable) -> Callable[..., Any]:
    """``run`` for a localisation metric of ``(attribution, masks)``."""
    def run(case: MetricCase, **options: Any) -> Any:
        return function(case.attribution, case.masks, **options)
    return run


def _sensitivity_draws(case: MetricCase) -> dict[str, Any]:
    return {"n_samples": 10, "radius": 0.1}


register_metric(MetricSpec(
    name="pixel_flipping", function=pixel_flipping, run=_on_model(pixel_flipping),
    columns={"pixel_flipping_morf_auc": False, "pixel_flipping_lerf_auc": True,
             "pixel_flipping_difference": True},
    values=_curve_columns("pixel_flipping"), default=True, curves=True,
))
register_metric(MetricSpec(
    name="region_perturbation", function=region_perturbation,
    run=_on_model(region_perturbation),
    columns={"region_perturbation_morf_auc": False, "region_perturbation_lerf_auc": True,
             "region_perturbation_difference": True},
    values=_curve_columns("region_perturbation"), default=True, curves=True,
    defaults=lambda case: {"patch_size": _divisor_near(case.spatial, 8)},
    keywords_from=(pixel_flipping,),
))
register_metric(MetricSpec(
    name="sensitivity_n", function=sensitivity_n, columns={"sensitivity_n": True},
    run=_on_model(sensitivity_n), values=lambda result: {"sensitivity_n": result[1].mean(dim=1)},
    defaults=lambda case: {"n_subsets": 32},
))
register_metric(MetricSpec(
    name="infidelity", function=infidelity, columns={"infidelity": False},
    run=_on_model(infidelity), defaults=lambda case: {"n_samples": 32},
))
register_metric(MetricSpec(
    name="max_sensitivity", function=max_sensitivity, columns={"max_sensitivity": False},
    run=_on_explain(max_sensitivity), defaults=_sensitivity_draws, default=True,
    keywords_from=(sensitivities,),
))
register_metric(MetricSpec(
    name="avg_sensitivity", function=avg_sensitivity, columns={"avg_sensitivity": False},
    run=_on_explain(avg_sensitivity), defaults=_sensitivity_draws,
    keywords_from=(sensitivities,),
))
register_metric(MetricSpec(
    name="relevance_mass_accuracy", function=relevance_mass_accuracy,
    columns={"relevance_mass_accuracy": True}, run=_on_masks(relevance_mass_accuracy),
    needs_masks=True, default=True,
))
register_metric(MetricSpec(
    name="relevance_rank_accuracy", function=relevance_rank_accuracy,
    columns={"relevance_rank_accuracy": True}, run=_on_masks(relevance_rank_accuracy),
    needs_masks=True, default=True,
))
register_metric(MetricSpec(
    name="pointing_game", function=pointing_game, columns={"pointing_game": True},
    run=_on_masks(pointing_game), needs_masks=True, default=True,
))
register_metric(MetricSpec(
    name="random_logit", function=random_logit, columns={"random_logit": False},
    run=_on_explain(random_logit), defaults=lambda case: {"num_classes": case.num_classes},
    default=True,
))
register_metric(MetricSpec(
    name="model_parameter_randomisation", function=model_parameter_randomisation,
    columns={"model_parameter_randomisation": False}, run=_on_explain(
        model_parameter_randomisation),
    values=lambda result: {"model_parameter_randomisation": result.similarity.mean(dim=0)},
))
register_metric(MetricSpec(
    name="completeness", function=completeness, columns={"completeness_abs_residual": False},
    run=lambda case, **options: completeness(case.fn, case.input, case.target,
                                             case.attribution, params=case.params, **options),
    values=lambda result: {"completeness_abs_residual": result.abs()},
))
