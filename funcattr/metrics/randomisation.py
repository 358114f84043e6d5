"""Randomisation: does the explanation depend on what the model learned?

* :func:`model_parameter_randomisation` [adebayo2018] — randomise the parameters layer by
  layer (cascading from the output, or one layer at a time) and compare the explanations;
* :func:`random_logit` [sixt2020] — compare the explanation of the target class with that of
  a random other class.

A funcattr explanation is a pure function of the parameters, so randomisation builds new
parameter dicts; the model and its parameter tensors are never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from funcattr.attribution.options import check_chunk_size, check_int, make_generator
from funcattr.attribution.targets import check_target
from funcattr.metrics.explainer import accepts_params, chunked_explain
from funcattr.metrics.inputs import check_input, pool_attribution
from funcattr.metrics.scores import Params
from funcattr.metrics.similarity import check_similarity, similarity

__all__ = [
    "RandomisationResult",
    "model_parameter_randomisation",
    "parameter_layers",
    "random_logit",
    "randomise_params",
]

_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def parameter_layers(params: Mapping[str, Tensor]) -> dict[str, list[str]]:
    """Group trainable-looking parameter names by module, in the dict's (forward) order.

    Batch-norm statistics (``running_mean``, ``running_var``, ``num_batches_tracked``) and
    non-floating tensors are left out: they are not learned by gradient descent.
    """
    layers: dict[str, list[str]] = {}
    for name, value in params.items():
        if name.endswith(_STATISTICS) or not value.is_floating_point():
            continue
        layers.setdefault(name.rpartition(".")[0], []).append(name)
    return layers


def randomise_params(params: Mapping[str, Tensor], names: Sequence[str],
                     generator: torch.Generator | None) -> dict[str, Tensor]:
    """A new dict with ``names`` replaced by random tensors; the input dict is unchanged.

    Each tensor is redrawn from a normal distribution truncated at two standard deviations,
    with the scale of the original (its root mean square; ``1/sqrt(numel)`` for an all-zero
    tensor), like Adebayo et al.'s truncated-normal re-initialisation. The draws come from
    ``generator`` (None: torch's global generator).
    """
    out = dict(params)
    for name in names:
        value = params[name]
        scale = value.detach().square().mean().sqrt()
        if not scale > 0:
            scale = torch.tensor(value.numel() ** -0.5)
        draw = torch.randn(value.shape, generator=generator, dtype=value.dtype)
        draw = torch.fmod(draw, 2.0)  # truncate at two standard deviations
        out[name] = (draw * scale.to(value.dtype).cpu()).to(value.device)
    return out


@dataclass(frozen=True)
class RandomisationResult:
    """Similarity of the original explanation to each randomised model's explanation.

    Attributes
    ----------
    layers : tuple of str
        The randomised layers (module names), in the order they were randomised.
    similarity : Tensor
        ``(len(layers), batch)``: row ``i`` after randomising ``layers[:i + 1]`` (cascading)
        or only ``layers[i]`` (independent).
    """

    layers: tuple[str, ...]
    similarity: Tensor

    def mean(self) -> dict[str, float]:
        """Batch-mean similarity per layer."""
        return {layer: float(row.mean()) for layer, row in zip(self.layers, self.similarity)}


def model_parameter_randomisation(
    explain: Callable,
    input: Tensor,
    target: Any,
    *,
    params: Params | None = None,
    layers: Sequence[str] | None = None,
    cascading: bool = True,
    similarity_measure: str = "spearman",
    attribution: Tensor | None = None,
    generator: torch.Generator | int | None = None,
    chunk_size: int | None = 32,
) -> RandomisationResult:
    """Model parameter randomisation test [adebayo2018].

    The layers' parameters are replaced by random draws (:func:`randomise_params`) from the
    output layer towards the input, cumulatively (``cascading=True``) or one at a time, and
    each randomised model's explanation is compared with the original one. A faithful
    explanation changes: low similarity is good.

    Parameters
    ----------
    explain : callable
        ``explain(input, target, params=...) -> attribution``; :func:`funcattr.metrics.explainer`
        builds one.
    params : dict, optional
        The parameters to randomise (a copy is made); ``explain.params`` by default.
    layers : sequence of str, optional
        Module names to randomise, output first; by default every module with learned
        parameters (:func:`parameter_layers`), reversed.
    cascading : bool
        Randomise cumulatively (Adebayo et al.'s cascading test) or each layer alone.
    similarity_measure : str
        ``"spearman"``, ``"spearman_abs"`` (Adebayo et al. report both), ``"pearson"``,
        ``"cosine"`` or ``"ssim"``; computed on channel-summed attributions.
    attribution : Tensor, optional
        The original explanation, if already computed.
    generator, chunk_size
        Randomness of the draws (an int seed, a generator, or ``None``: torch's global
        generator); model inputs (samples) per ``explain`` call.

    Returns
    -------
    RandomisationResult
    """
    owner = "model_parameter_randomisation"
    input = check_input(input, owner)
    target = check_target(target, input.shape[0], owner)
    check_chunk_size(chunk_size, owner)
    check_similarity(similarity_measure, owner)
    if not accepts_params(explain):
        raise TypeError(
            f"{owner}(explain={explain!r}): expected explain(input, target, params=...) so the "
            f"randomised parameters can be used, got a callable without a params keyword. Build "
            f"it with funcattr.metrics.explainer(model, composite) or add a params keyword."
        )
    if params is None:
        params = getattr(explain, "params", None)
        if params is None:
            raise TypeError(
                f"{owner}(params=None): expected the parameter dict to randomise, got None and "
                f"an explain without .params. Pass params=..."
            )
    if isinstance(params, nn.Module):
        raise TypeError(
            f"{owner}(params=Module): expected a dict of tensors, got a Module. Pass the params "
            f"of funcattr.functionalize(model)."
        )
    groups = parameter_layers(params)
    if layers is None:
        layers = list(reversed(groups))
    layers = list(layers)
    unknown = [layer for layer in layers if layer not in groups]
    if unknown or not layers:
        raise ValueError(
            f"{owner}(layers={unknown or layers!r}): expected names of modules with learned "
            f"parameters, from {list(groups)}, got {'unknown ones' if unknown else 'none'}. "
            f"Pass names from that list, or layers=None for all of them."
        )
    generator = make_generator(generator, owner)
    if attribution is None:
        attribution = chunked_explain(explain, input, target, chunk_size, owner, params)
    reference = pool_attribution(attribution, input, owner)
    rows = []
    randomised = dict(params)
    for layer in layers:
        base = randomised if cascading else dict(params)
        randomised = randomise_params(base, groups[layer], generator)
        changed = chunked_explain(explain, input, target, chunk_size, owner, randomised)
        rows.append(similarity(similarity_measure, reference,
                               pool_attribution(changed, input, owner), owner))
    return RandomisationResult(tuple(layers), torch.stack(rows))


def random_logit(
    explain: Callable,
    input: Tensor,
    target: Any,
    *,
    num_classes: int,
    similarity_measure: str = "ssim",
    attribution: Tensor | None = None,
    off_target: Tensor | None = None,
    generator: torch.Generator | int | None = None,
    chunk_size: int | None = 32,
) -> Tensor:
    """Random logit test [sixt2020]: similarity of the explanations of ``c`` and a random ``c'``.

    ``c'`` is drawn uniformly from the other ``num_classes - 1`` classes; a class-sensitive
    explanation gives a low similarity (Sixt et al. use SSIM of the heatmaps).

    Parameters
    ----------
    num_classes : int
        Number of classes of the model.
    similarity_measure : str
        As in :func:`model_parameter_randomisation`; ``"ssim"`` needs 2-D inputs.
    off_target : Tensor, optional
        The other classes ``(batch,)``, instead of drawing them.
    attribution, generator, chunk_size
        The explanation of ``target`` if already computed; randomness and chunking as in
        :func:`model_parameter_randomisation`.

    Returns
    -------
    Tensor
        ``(batch,)`` similarity; lower is better.
    """
    owner = "random_logit"
    input = check_input(input, owner)
    batch = input.shape[0]
    target = check_target(target, batch, owner)
    check_chunk_size(chunk_size, owner)
    check_similarity(similarity_measure, owner)
    check_int(num_classes, "num_classes", owner, minimum=2, example="10")
    if bool((target >= num_classes).any()) or bool((target < 0).any()):
        raise ValueError(
            f"{owner}(target=...): expected classes in [0, {num_classes - 1}] for "
            f"num_classes={num_classes}, got {target.unique().tolist()}. Pass the model's "
            f"number of classes as num_classes."
        )
    generator = make_generator(generator, owner)
    if off_target is None:
        draw = torch.randint(0, num_classes - 1, (batch,), generator=generator)
        off_target = draw + (draw >= target.cpu()).long()
    else:
        off_target = check_target(off_target, batch, owner)
        if bool((off_target == target).any()):
            raise ValueError(
                f"{owner}(off_target=...): expected classes other than target, got the target "
                f"class for some samples. Pass off_target=None to draw them."
            )
    off_target = off_target.to(target.device)
    if attribution is None:
        attribution = chunked_explain(explain, input, target, chunk_size, owner)
    other = chunked_explain(explain, input, off_target, chunk_size, owner)
    return similarity(similarity_measure, pool_attribution(attribution, input, owner),
                      pool_attribution(other, input, owner), owner)
