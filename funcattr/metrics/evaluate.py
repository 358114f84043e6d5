"""``evaluate``: several attributors x several metrics on one batch, as a table (``funcattr
evaluate``), with CSV/Markdown output and a pixel-flipping plot.

Every attributor sees the same random draws (each metric's generator is re-seeded with ``seed``
per attributor), so differences between rows are not sampling noise of different draws.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from funcattr.metrics._common import (
    as_model,
    check_chunk_size,
    check_input,
    check_target,
    chunked_explain,
    image_view,
    make_generator,
)
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
from funcattr.metrics.robustness import avg_sensitivity, max_sensitivity

__all__ = ["DEFAULT_METRICS", "METRICS", "EvaluationTable", "evaluate", "plot_pixel_flipping",
           "write_table"]

#: Metric name -> its columns and whether higher (True) or lower (False) is better.
METRICS: dict[str, dict[str, bool]] = {
    "pixel_flipping": {"pixel_flipping_morf_auc": False, "pixel_flipping_lerf_auc": True,
                       "pixel_flipping_difference": True},
    "region_perturbation": {"region_perturbation_morf_auc": False,
                            "region_perturbation_lerf_auc": True,
                            "region_perturbation_difference": True},
    "sensitivity_n": {"sensitivity_n": True},
    "infidelity": {"infidelity": False},
    "max_sensitivity": {"max_sensitivity": False},
    "avg_sensitivity": {"avg_sensitivity": False},
    "relevance_mass_accuracy": {"relevance_mass_accuracy": True},
    "relevance_rank_accuracy": {"relevance_rank_accuracy": True},
    "pointing_game": {"pointing_game": True},
    "random_logit": {"random_logit": False},
    "model_parameter_randomisation": {"model_parameter_randomisation": False},
    "completeness": {"completeness_abs_residual": False},
}
#: The metrics ``evaluate`` runs when none are named.
DEFAULT_METRICS: tuple[str, ...] = (
    "pixel_flipping", "region_perturbation", "max_sensitivity", "relevance_mass_accuracy",
    "relevance_rank_accuracy", "pointing_game", "random_logit",
)
_LOCALISATION = ("relevance_mass_accuracy", "relevance_rank_accuracy", "pointing_game")


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


def _divisor_near(spatial: Sequence[int], want: int) -> int:
    return max(d for d in range(1, want + 1) if all(s % d == 0 for s in spatial))


def evaluate(
    model: Any,
    images: Tensor,
    labels: Any,
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
    model : nn.Module or fn(params, x)
        The classifier (never changed).
    images : Tensor
        ``(batch, channels, H, W)`` (or any input the metrics accept).
    labels : Tensor
        The explained class per sample, ``(batch,)``.
    masks : Tensor or None
        Ground-truth object masks ``(batch, H, W)`` for the localisation metrics.
    attributors : dict of str to callable
        ``name -> explain(x, target) -> attribution``; for
        ``"model_parameter_randomisation"`` it must accept ``params=`` (e.g.
        :func:`funcattr.metrics.explainer`).
    metrics : sequence of str
        Names from :data:`METRICS`; default :data:`DEFAULT_METRICS`.
    params : dict, optional
        Parameters of a pure ``fn`` model.
    seed : int
        Seed of every metric's generator (the same draws for every attributor).
    chunk_size : int, optional
        Inputs per model / ``explain`` call.
    num_classes : int, optional
        For ``random_logit``; read from the model's output by default.
    options : dict of str to dict, optional
        Keyword overrides per metric, e.g. ``{"pixel_flipping": {"regions_per_step": 8}}``.
        Defaults: pixel flipping in 32 steps, region perturbation with 8-pixel patches
        (or the nearest divisor), sensitivities with 10 draws of radius 0.1, Sensitivity-N
        and infidelity with 32 draws.

    Returns
    -------
    EvaluationTable
        ``str(table)`` is a Markdown table; :func:`write_table` writes CSV/Markdown and
        :func:`plot_pixel_flipping` the curves.
    """
    owner = "evaluate"
    images = check_input(images, owner, "images")
    labels = check_target(labels, images.shape[0], owner)
    check_chunk_size(chunk_size, owner)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{owner}(seed={seed!r}): expected an int.")
    if not isinstance(attributors, Mapping) or not attributors:
        raise TypeError(
            f"{owner}(attributors={type(attributors).__name__}): expected a non-empty dict "
            f"name -> explain(x, target)."
        )
    for name, explain in attributors.items():
        if not callable(explain):
            raise TypeError(f"{owner}(attributors[{name!r}]={explain!r}): expected a callable.")
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(
            f"{owner}(metrics={unknown or list(metrics)!r}): expected names from "
            f"{list(METRICS)}."
        )
    options = dict(options or {})
    for key in options:
        if key not in metrics:
            raise ValueError(
                f"{owner}(options={{{key!r}: ...}}): expected options for the requested metrics "
                f"{list(metrics)}."
            )
    if masks is None and any(m in _LOCALISATION for m in metrics):
        raise ValueError(
            f"{owner}(masks=None): the localisation metrics "
            f"{[m for m in metrics if m in _LOCALISATION]} need ground-truth masks. Pass masks "
            f"or leave these metrics out."
        )
    fn, params = as_model(model, params, owner)
    spatial = image_view(images).shape[2:]
    if num_classes is None and "random_logit" in metrics:
        with torch.no_grad():
            num_classes = int(fn(params, images[:1]).shape[1])

    defaults: dict[str, dict[str, Any]] = {
        "pixel_flipping": {"regions_per_step": max(1, math.ceil(math.prod(spatial) / 32))},
        "region_perturbation": {"patch_size": _divisor_near(spatial, 8)},
        "max_sensitivity": {"n_samples": 10, "radius": 0.1},
        "avg_sensitivity": {"n_samples": 10, "radius": 0.1},
        "sensitivity_n": {"n_subsets": 32},
        "infidelity": {"n_samples": 32},
        "random_logit": {"num_classes": num_classes},
    }

    def settings(metric: str) -> dict[str, Any]:
        return {**defaults.get(metric, {}), **options.get(metric, {})}

    columns: list[str] = [c for m in metrics for c in METRICS[m]]
    values: dict[str, dict[str, Tensor]] = {}
    curves: dict[str, dict[str, PerturbationCurves]] = {}
    for name, explain in attributors.items():
        attribution = chunked_explain(explain, images, labels, chunk_size, owner)
        row: dict[str, Tensor] = {}
        for metric in metrics:
            generator = make_generator(seed, owner)
            kwargs = settings(metric)
            common = {"generator": generator, "chunk_size": chunk_size}
            if metric in ("pixel_flipping", "region_perturbation"):
                run = pixel_flipping if metric == "pixel_flipping" else region_perturbation
                result = run(fn, images, labels, attribution, params=params, **common, **kwargs)
                curves.setdefault(metric, {})[name] = result
                row[f"{metric}_morf_auc"] = result.auc("morf")
                row[f"{metric}_lerf_auc"] = result.auc("lerf")
                row[f"{metric}_difference"] = result.difference
            elif metric == "sensitivity_n":
                _, correlation = sensitivity_n(fn, images, labels, attribution, params=params,
                                               **common, **kwargs)
                row[metric] = correlation.mean(dim=1)
            elif metric == "infidelity":
                row[metric] = infidelity(fn, images, labels, attribution, params=params,
                                         **common, **kwargs)
            elif metric in ("max_sensitivity", "avg_sensitivity"):
                run = max_sensitivity if metric == "max_sensitivity" else avg_sensitivity
                row[metric] = run(explain, images, labels, attribution=attribution, **common,
                                  **kwargs)
            elif metric in _LOCALISATION:
                run = {"relevance_mass_accuracy": relevance_mass_accuracy,
                       "relevance_rank_accuracy": relevance_rank_accuracy,
                       "pointing_game": pointing_game}[metric]
                row[metric] = run(attribution, masks, **kwargs)
            elif metric == "random_logit":
                row[metric] = random_logit(explain, images, labels, attribution=attribution,
                                           **common, **kwargs)
            elif metric == "model_parameter_randomisation":
                result = model_parameter_randomisation(explain, images, labels,
                                                       attribution=attribution, **common,
                                                       **kwargs)
                row[metric] = result.similarity.mean(dim=0)
            elif metric == "completeness":
                residual = completeness(fn, images, labels, attribution, params=params, **kwargs)
                row["completeness_abs_residual"] = residual.abs()
        values[name] = row
    higher = {c: better for m in metrics for c, better in METRICS[m].items()}
    return EvaluationTable(tuple(attributors), tuple(columns), values, higher, curves)


def write_table(table: EvaluationTable, path_csv: str | Path | None = None,
                path_md: str | Path | None = None) -> None:
    """Write the batch means of ``table`` as CSV and/or Markdown.

    The CSV has one row per attributor and the columns ``attributor, <metric columns>``.
    """
    if not isinstance(table, EvaluationTable):
        raise TypeError(
            f"write_table(table={type(table).__name__}): expected the EvaluationTable returned "
            f"by evaluate."
        )
    if path_csv is None and path_md is None:
        raise ValueError("write_table(path_csv=None, path_md=None): expected at least one path.")
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
                f"evaluate computed {list(curves.curves) or 'none'}. Include {metric!r} in "
                f"evaluate(metrics=...)."
            )
        curves = curves.curves[metric]
    if not isinstance(curves, Mapping) or not curves or not all(
        isinstance(c, PerturbationCurves) for c in curves.values()
    ):
        raise TypeError(
            "plot_pixel_flipping(curves=...): expected an EvaluationTable or a non-empty dict "
            "name -> PerturbationCurves."
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
