"""``evaluate``: several attributors x several metrics on one batch, as a table (``funcattr
evaluate``), with CSV/Markdown output and a pixel-flipping plot.

Every attributor sees the same random draws (each metric's generator is re-seeded with ``seed``
per attributor), so differences between rows are not sampling noise of different draws.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from funcattr.attribution.options import check_chunk_size, make_generator
from funcattr.attribution.pullback import check_output
from funcattr.attribution.targets import check_target
from funcattr.metrics.explainer import chunked_explain
from funcattr.metrics.faithfulness import PerturbationCurves
from funcattr.metrics.inputs import check_input
from funcattr.metrics.registry import (
    DEFAULT_METRICS,
    METRIC_SPECS,
    METRICS,
    MetricCase,
    get_metric,
)
from funcattr.metrics.scores import as_model

__all__ = ["DEFAULT_METRICS", "METRICS", "EvaluationTable", "evaluate", "plot_pixel_flipping",
           "write_table"]


@dataclass(frozen=True)
class EvaluationTable:
    """Per-sample metric values of several attributors, with batch means as a table.

    Attributes
    ----------
    attributors : tuple of str
        Row names.
    columns : tuple of str
        Metric columns (see :data:`METRICS`).
    values : dict of str to dict of str to Tensor
        ``values[attributor][column]`` is ``(batch,)``.
    higher_is_better : dict of str to bool
        Direction of each column.
    curves : dict of str to dict of str to PerturbationCurves
        ``curves[metric][attributor]`` for ``pixel_flipping`` / ``region_perturbation``.
    """

    attributors: tuple[str, ...]
    columns: tuple[str, ...]
    values: dict[str, dict[str, Tensor]]
    higher_is_better: dict[str, bool]
    curves: dict[str, dict[str, PerturbationCurves]] = field(default_factory=dict)

    def mean(self, attributor: str, column: str) -> float:
        """Batch mean (NaN-ignoring) of one cell."""
        value = self.values[attributor][column]
        finite = value[~value.isnan()]
        return float(finite.mean()) if finite.numel() else float("nan")

    def rows(self) -> list[dict[str, Any]]:
        """One dict per attributor: ``{"attributor": name, column: mean, ...}``."""
        return [{"attributor": name, **{c: self.mean(name, c) for c in self.columns}}
                for name in self.attributors]

    def to_markdown(self) -> str:
        """A Markdown table of batch means; arrows say which direction is better."""
        header = ["attributor"] + [
            f"{c} {'↑' if self.higher_is_better[c] else '↓'}" for c in self.columns
        ]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in self.rows():
            cells = [row["attributor"]] + [f"{row[c]:.4g}" for c in self.columns]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()


def evaluate(
    model: Any,
    input: Tensor,
    target: Any,
    masks: Tensor | None,
    attributors: Mapping[str, Callable],
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    params: Mapping[str, Tensor] | None = None,
    seed: int = 0,
    chunk_size: int | None = 32,
    num_classes: int | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> EvaluationTable:
    """Evaluate several explanation methods with several metrics on one batch.

    Parameters
    ----------
    model : nn.Module or fn(params, input)
        The classifier (never changed).
    input : Tensor
        ``(batch, channels, H, W)`` (or any input the metrics accept).
    target : Tensor
        The explained class per sample, ``(batch,)``.
    masks : Tensor or None
        Ground-truth object masks ``(batch, H, W)`` for the localisation metrics.
    attributors : dict of str to callable
        ``name -> explain(input, target) -> attribution``; for
        ``"model_parameter_randomisation"`` it must accept ``params=`` (e.g.
        :func:`funcattr.metrics.explainer`).
    metrics : sequence of str
        Names from :data:`METRICS`; default :data:`DEFAULT_METRICS`.
    params : dict, optional
        Parameters of a pure ``fn``.
    seed : int
        Seed of every metric's generator (the same draws for every attributor).
    chunk_size : int, optional
        Model inputs per model / ``explain`` call.
    num_classes : int, optional
        For ``random_logit``; read from the model's output by default.
    options : dict of str to dict, optional
        Keyword overrides per metric, e.g. ``{"pixel_flipping": {"regions_per_step": 8}}``.
        Defaults: the functions' own (pixel flipping and region perturbation in about 32
        steps), region perturbation with 8-pixel patches (or the nearest divisor),
        sensitivities with 10 draws of radius 0.1, Sensitivity-N and infidelity with 32 draws.

    Returns
    -------
    EvaluationTable
        ``str(table)`` is a Markdown table; :func:`write_table` writes CSV/Markdown and
        :func:`plot_pixel_flipping` the curves.
    """
    owner = "evaluate"
    input = check_input(input, owner)
    target = check_target(target, input.shape[0], owner)
    check_chunk_size(chunk_size, owner)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(
            f"{owner}(seed={seed!r}): expected an int, got {type(seed).__name__}. Pass e.g. "
            f"seed=0."
        )
    if not isinstance(attributors, Mapping) or not attributors:
        raise TypeError(
            f"{owner}(attributors={type(attributors).__name__}): expected a non-empty dict "
            f"name -> explain(input, target), got {attributors!r}. Pass e.g. "
            f"attributors={{'gradient': explainer(model)}}."
        )
    for name, explain in attributors.items():
        if not callable(explain):
            raise TypeError(
                f"{owner}(attributors[{name!r}]={explain!r}): expected a callable, got "
                f"{type(explain).__name__}. Pass explain(input, target), e.g. from explainer."
            )
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRIC_SPECS]
    if unknown or not metrics:
        raise ValueError(
            f"{owner}(metrics={unknown or list(metrics)!r}): expected names from "
            f"{list(METRIC_SPECS)}, got {'unknown ones' if unknown else 'none'}. Pass "
            f"registered metric names."
        )
    specs = [get_metric(m, owner) for m in metrics]
    options = dict(options or {})
    for key in options:
        if key not in metrics:
            raise ValueError(
                f"{owner}(options={{{key!r}: ...}}): expected options for the requested metrics "
                f"{list(metrics)}, got options for {key!r}. Add {key!r} to metrics or drop its "
                f"options."
            )
    localisation = [spec.name for spec in specs if spec.needs_masks]
    if masks is None and localisation:
        raise ValueError(
            f"{owner}(masks=None): the localisation metrics {localisation} need ground-truth "
            f"masks; expected masks, got None. Pass masks or leave these metrics out."
        )
    fn, params = as_model(model, params, owner)
    if num_classes is None and "random_logit" in metrics:
        with torch.no_grad():
            num_classes = int(check_output(fn(params, input[:1]), owner, "model").shape[1])

    columns = tuple(c for spec in specs for c in spec.columns)
    values: dict[str, dict[str, Tensor]] = {}
    curves: dict[str, dict[str, PerturbationCurves]] = {}
    for name, explain in attributors.items():
        attribution = chunked_explain(explain, input, target, chunk_size, owner)
        row: dict[str, Tensor] = {}
        for spec in specs:
            # a fresh generator per metric and method: every method sees the same draws
            case = MetricCase(fn, params, input, target, attribution, explain, masks,
                              make_generator(seed, owner), chunk_size, num_classes)
            result = spec.run(case, **spec.options_for(case, options.get(spec.name, {})))
            row.update(spec.columns_of(result))
            if spec.curves:
                curves.setdefault(spec.name, {})[name] = result
        values[name] = row
    higher = {c: better for spec in specs for c, better in spec.columns.items()}
    return EvaluationTable(tuple(attributors), columns, values, higher, curves)


def write_table(table: EvaluationTable, path_csv: str | Path | None = None,
                path_md: str | Path | None = None) -> None:
    """Write the batch means of ``table`` as CSV and/or Markdown.

    The CSV has one row per attributor and the columns ``attributor, <metric columns>``.
    """
    if not isinstance(table, EvaluationTable):
        raise TypeError(
            f"write_table(table={type(table).__name__}): expected the EvaluationTable returned "
            f"by evaluate, got {type(table).__name__}. Pass table = evaluate(...)."
        )
    if path_csv is None and path_md is None:
        raise ValueError(
            "write_table(path_csv=None, path_md=None): expected at least one path, got none. "
            "Pass path_csv=... or path_md=...."
        )
    if path_csv is not None:
        with open(path_csv, "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=["attributor", *table.columns])
            writer.writeheader()
            for row in table.rows():
                writer.writerow({k: (f"{v:.10g}" if isinstance(v, float) else v)
                                 for k, v in row.items()})
    if path_md is not None:
        Path(path_md).write_text(table.to_markdown(), encoding="utf-8")


def plot_pixel_flipping(curves: EvaluationTable | Mapping[str, PerturbationCurves],
                        path_png: str | Path, *, metric: str = "pixel_flipping",
                        title: str | None = None) -> None:
    """Plot batch-mean perturbation curves (one panel per order, one line per attributor).

    Parameters
    ----------
    curves : EvaluationTable or dict of str to PerturbationCurves
        The table of :func:`evaluate` (its ``metric`` curves are used) or ``name -> curves``.
    path_png : str or Path
        The image file to write.
    metric : str
        ``"pixel_flipping"`` or ``"region_perturbation"`` when ``curves`` is a table.
    title : str, optional
        Figure title.
    """
    if isinstance(curves, EvaluationTable):
        if metric not in curves.curves:
            raise ValueError(
                f"plot_pixel_flipping(metric={metric!r}): the table has no curves for it; "
                f"expected one of the curves evaluate computed, got "
                f"{list(curves.curves) or 'none'}. Include {metric!r} in evaluate(metrics=...)."
            )
        curves = curves.curves[metric]
    if not isinstance(curves, Mapping) or not curves or not all(
        isinstance(c, PerturbationCurves) for c in curves.values()
    ):
        raise TypeError(
            f"plot_pixel_flipping(curves=...): expected an EvaluationTable or a non-empty dict "
            f"name -> PerturbationCurves, got {type(curves).__name__}. Pass the table of "
            f"evaluate(..., metrics=['pixel_flipping'])."
        )
    from matplotlib.figure import Figure  # no pyplot: no global backend state, no display

    orders = list(dict.fromkeys(o for c in curves.values() for o in c.curves))
    figure = Figure(figsize=(4.5 * len(orders), 3.6), layout="constrained")
    axes = figure.subplots(1, len(orders), squeeze=False)[0]
    for axis, order in zip(axes, orders):
        for name, result in curves.items():
            if order not in result.curves:
                continue
            mean = result.curves[order].mean(dim=0).cpu().numpy()
            auc = float(result.auc(order).mean())
            axis.plot(result.fractions.cpu().numpy(), mean, label=f"{name} (AUC {auc:.3g})")
        axis.set_title(order.upper())
        axis.set_xlabel("fraction of regions removed")
        axis.set_ylabel("class score")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    figure.savefig(path_png, dpi=100)
