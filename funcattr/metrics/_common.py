"""Shared pieces of the metrics: model and target handling, regions, chunked scoring, similarity.

Conventions used by every metric
--------------------------------
* ``model`` is an ``nn.Module`` (run through :func:`funcattr.functionalize` without rules, so
  it is never changed) or a pure ``fn(params, x)`` with ``params`` passed as a keyword.
* ``x`` is a batch: ``(batch, channels, *spatial)`` (images, volumes, sequences) or
  ``(batch, features)`` (tabular, treated as one channel along one spatial axis).
* A *feature* is one spatial location with **all its channels**; a *region* is a square (cube)
  ``patch_size`` patch of features on a grid. Perturbing a region perturbs every channel of it.
* Attributions are shaped like ``x`` or lack the channel axis or have one channel; they are
  pooled over channels by summing.
* ``explain(x, target) -> attribution`` is any callable; :func:`explainer` builds one from
  funcattr's attributors. Randomisation metrics also pass ``params=``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

Params = Mapping[str, Tensor]
Fill = float | str | Tensor

__all__ = ["Explain", "Explainer", "explainer"]


class Explain(Protocol):
    """``explain(x, target) -> attribution`` (shaped like ``x``), optionally with ``params=``."""

    def __call__(self, x: Tensor, target: Tensor, /) -> Tensor: ...


# ------------------------------------------------------------------------------------------
# models and targets
# ------------------------------------------------------------------------------------------

def as_model(model: Any, params: Params | None, owner: str) -> tuple[Callable, dict[str, Tensor]]:
    """``(fn, params)`` for an ``nn.Module`` or a pure ``fn(params, x)`` with ``params``."""
    if isinstance(model, nn.Module):
        from funcattr.functional import functionalize

        fn, own = functionalize(model)
        if params is not None:
            missing = sorted(set(own) - set(params))
            if missing:
                raise ValueError(
                    f"{owner}(params=...): expected the keys of model.named_parameters() and "
                    f"named_buffers(), missing {missing[:5]}. Pass params=None to use the "
                    f"model's own."
                )
            own = dict(params)
        return fn, own
    if callable(model):
        if params is None:
            raise TypeError(
                f"{owner}(model={type(model).__name__}, params=None): a pure model "
                f"fn(params, x) needs its params. Pass params=... (e.g. from "
                f"funcattr.functionalize), params={{}} for a function without parameters, or "
                f"an nn.Module."
            )
        if not isinstance(params, Mapping):
            raise TypeError(
                f"{owner}(params={type(params).__name__}): expected a dict of str to Tensor."
            )
        plain = getattr(model, "plain", None)  # same output, no rule bookkeeping
        return (plain if callable(plain) else model), dict(params)
    raise TypeError(
        f"{owner}(model={type(model).__name__}): expected a torch.nn.Module or a callable "
        f"fn(params, x)."
    )


def check_input(x: Any, owner: str, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner}({name}={type(x).__name__}): expected a torch.Tensor.")
    if x.ndim < 2:
        raise ValueError(
            f"{owner}({name}=tensor of shape {tuple(x.shape)}): expected a batch, "
            f"(batch, features) or (batch, channels, *spatial). Add the batch dimension with "
            f"x[None]."
        )
    if not x.is_floating_point():
        raise TypeError(
            f"{owner}({name}=tensor of dtype {x.dtype}): expected a floating point tensor."
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError(
            f"{owner}({name}=tensor of shape {tuple(x.shape)}): expected finite values, got "
            f"NaN or infinity."
        )
    return x.detach()


def check_target(target: Any, batch: int, owner: str) -> Tensor:
    """One integer class per sample, shape ``(batch,)``."""
    if isinstance(target, bool) or not isinstance(target, int | Tensor | Sequence):
        raise TypeError(
            f"{owner}(target={target!r}): expected an int, a sequence of ints or an integer "
            f"tensor of shape (batch,)."
        )
    target = torch.as_tensor(target)
    if target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(
            f"{owner}(target=tensor of dtype {target.dtype}): expected integer classes."
        )
    if target.ndim == 0:
        target = target.expand(batch)
    if target.shape != (batch,):
        raise ValueError(
            f"{owner}(target=tensor of shape {tuple(target.shape)}): expected one class for "
            f"the batch or one per sample, shape ({batch},)."
        )
    return target.long()


def check_chunk_size(chunk_size: int | None, owner: str) -> None:
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(
            f"{owner}(chunk_size={chunk_size!r}): expected a positive int or None (all at once)."
        )


def check_positive_int(value: Any, name: str, owner: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}({name}={value!r}): expected an int >= {minimum}.")
    return value


def make_generator(seed: int | torch.Generator | None, owner: str) -> torch.Generator:
    """An explicit generator: a given one, or a new one seeded with ``seed`` (0 when None)."""
    if isinstance(seed, torch.Generator):
        return seed
    if seed is None:
        seed = 0
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(
            f"{owner}(generator={seed!r}): expected a torch.Generator, an int seed or None."
        )
    return torch.Generator().manual_seed(seed)


def chunks(total: int, chunk_size: int | None) -> Iterator[slice]:
    size = total if chunk_size is None else chunk_size
    for start in range(0, total, max(size, 1)):
        yield slice(start, min(start + size, total))


def class_scores(fn: Callable, params: Params, x: Tensor, target: Tensor, softmax: bool) -> Tensor:
    """``fn(params, x)[i, target[i]]`` (optionally of the softmax), without autograd."""
    with torch.inference_mode():
        output = fn(params, x)
        if output.ndim != 2:
            raise ValueError(
                f"metrics: expected a model output of shape (batch, classes), got "
                f"{tuple(output.shape)}. Wrap the model so that it returns class scores."
            )
        if softmax:
            output = torch.softmax(output, dim=1)
        return output.gather(1, target[:, None].to(output.device))[:, 0]


def chunked_scores(fn: Callable, params: Params, total: int,
                   make: Callable[[Tensor], tuple[Tensor, Tensor]],
                   chunk_size: int | None, softmax: bool) -> Tensor:
    """Scores of ``total`` inputs built by ``make(indices) -> (inputs, targets)``, in chunks.

    The perturbed inputs of every step and sample are stacked into batches of ``chunk_size``
    and sent through ``fn`` at once; nothing larger than one chunk is ever built.
    """
    out = []
    for part in chunks(total, chunk_size):
        inputs, targets = make(torch.arange(part.start, part.stop))
        out.append(class_scores(fn, params, inputs, targets, softmax))
    return torch.cat(out) if out else torch.empty(0)


# ------------------------------------------------------------------------------------------
# attributions, regions and fill values
# ------------------------------------------------------------------------------------------

def image_view(x: Tensor) -> Tensor:
    """``(batch, channels, *spatial)`` view; ``(batch, features)`` becomes ``(batch, 1, F)``."""
    return x[:, None] if x.ndim == 2 else x


def pool_attribution(attribution: Any, x: Tensor, owner: str,
                     name: str = "attribution") -> Tensor:
    """Sum an attribution over channels: ``(batch, *spatial)`` of the image view of ``x``."""
    if not isinstance(attribution, Tensor):
        raise TypeError(f"{owner}({name}={type(attribution).__name__}): expected a tensor.")
    view = image_view(x)
    batch, _, *spatial = view.shape
    shape = tuple(attribution.shape)
    if x.ndim == 2 and shape == tuple(x.shape):
        return attribution.detach().to(x.dtype)
    if shape == tuple(view.shape) or shape == (batch, 1, *spatial):
        return attribution.detach().to(x.dtype).sum(dim=1)
    if shape == (batch, *spatial):
        return attribution.detach().to(x.dtype)
    raise ValueError(
        f"{owner}({name}=tensor of shape {shape}): expected the input's shape "
        f"{tuple(x.shape)}, or {(batch, *spatial)} / {(batch, 1, *spatial)} for one value per "
        f"location. Pass one attribution per sample of x."
    )


def check_patch_size(patch_size: Any, spatial: Sequence[int], owner: str) -> int:
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"{owner}(patch_size={patch_size!r}): expected a positive int.")
    remainders = tuple(size % patch_size for size in spatial)
    if any(remainders):
        divisors = [d for d in range(1, min(spatial) + 1) if all(s % d == 0 for s in spatial)]
        raise ValueError(
            f"{owner}(patch_size={patch_size}): expected a patch size that divides the spatial "
            f"shape {tuple(spatial)}, got remainders {remainders}. Use one of {divisors}."
        )
    return patch_size


def region_index(spatial: Sequence[int], patch_size: int, device=None) -> tuple[Tensor, int]:
    """For each location (flattened), the index of its ``patch_size`` region; and the count."""
    grid = [size // patch_size for size in spatial]
    index = torch.zeros((), dtype=torch.long, device=device)
    for size, cells in zip(spatial, grid):
        axis = torch.arange(size, device=device) // patch_size
        index = index[..., None] * cells + axis
    return index.reshape(-1), math.prod(grid)


def region_relevance(pooled: Tensor, locations: Tensor, regions: int) -> Tensor:
    """Sum of pooled relevance per region: ``(batch, regions)``."""
    flat = pooled.reshape(pooled.shape[0], -1)
    out = flat.new_zeros(flat.shape[0], regions)
    return out.index_add_(1, locations, flat)


def fill_tensor(fill: Fill, x: Tensor, generator: torch.Generator, owner: str) -> Tensor:
    """The replacement values for removed features, broadcastable to the image view of ``x``."""
    view = image_view(x)
    if isinstance(fill, bool):
        raise TypeError(
            f"{owner}(fill={fill!r}): expected a number, 'mean', 'uniform' or a tensor."
        )
    if isinstance(fill, int | float):
        return view.new_full((1,) * view.ndim, float(fill))
    if isinstance(fill, str):
        reduce = tuple(range(2, view.ndim))
        if fill == "mean":
            return view.mean(dim=reduce, keepdim=True)
        if fill == "uniform":
            low = view.amin(dim=tuple(range(1, view.ndim)), keepdim=True)
            high = view.amax(dim=tuple(range(1, view.ndim)), keepdim=True)
            noise = torch.rand(view.shape, generator=generator, dtype=view.dtype)
            return low + (high - low) * noise.to(view.device)
        raise ValueError(
            f"{owner}(fill={fill!r}): expected a number, 'mean' (per-channel image mean), "
            f"'uniform' (noise in the image's value range) or a tensor."
        )
    if isinstance(fill, Tensor):
        fill = fill.to(view.dtype)
        fill = fill[:, None] if x.ndim == 2 and fill.shape == x.shape else fill
        try:
            torch.broadcast_shapes(fill.shape, view.shape)
        except RuntimeError:
            raise ValueError(
                f"{owner}(fill=tensor of shape {tuple(fill.shape)}): expected a tensor "
                f"broadcastable to the input's shape {tuple(x.shape)}."
            ) from None
        return fill
    raise TypeError(
        f"{owner}(fill={type(fill).__name__}): expected a number, 'mean', 'uniform' or a tensor."
    )


def select_fill(fill: Tensor, rows: Tensor) -> Tensor:
    """The fill values of the samples ``rows`` (fill may be shared by the batch)."""
    return fill[rows] if fill.shape[0] != 1 else fill


def to_input_shape(view: Tensor, x: Tensor) -> Tensor:
    return view[:, 0] if x.ndim == 2 else view


# ------------------------------------------------------------------------------------------
# explanations
# ------------------------------------------------------------------------------------------

def call_explain(explain: Callable, x: Tensor, target: Tensor, owner: str,
                 params: Params | None = None) -> Tensor:
    """Run ``explain`` and check that it returned one attribution per sample."""
    if params is None:
        attribution = explain(x, target)
    else:
        attribution = explain(x, target, params=params)
    if isinstance(attribution, tuple) and len(attribution) == 2:  # (output, attribution)
        attribution = attribution[1]
    if not isinstance(attribution, Tensor) or attribution.shape[:1] != x.shape[:1]:
        got = tuple(attribution.shape) if isinstance(attribution, Tensor) else type(
            attribution).__name__
        raise ValueError(
            f"{owner}(explain=...): expected explain(x, target) to return an attribution with "
            f"the batch size {x.shape[0]} first, got {got}."
        )
    return attribution.detach()


def chunked_explain(explain: Callable, x: Tensor, target: Tensor, chunk_size: int | None,
                    owner: str, params: Params | None = None) -> Tensor:
    parts = [call_explain(explain, x[part], target[part], owner, params)
             for part in chunks(x.shape[0], chunk_size)]
    return torch.cat(parts)


def accepts_params(explain: Callable) -> bool:
    try:
        signature = inspect.signature(explain)
    except (TypeError, ValueError):
        return False
    return "params" in signature.parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
    )


class Explainer:
    """``explain(x, target, params=None) -> attribution`` from a funcattr attributor.

    Built by :func:`explainer`; ``params`` replaces the model's parameters for one call (the
    randomisation metrics use this), nothing is stored between calls.
    """

    def __init__(self, fn: Callable, params: dict[str, Tensor], method: Callable,
                 times_output: bool, options: dict[str, Any], name: str) -> None:
        self.fn = fn
        self.params = params
        self.method = method
        self.times_output = times_output
        self.options = options
        self.name = name

    def __call__(self, x: Tensor, target: Tensor, params: Params | None = None) -> Tensor:
        from funcattr.attribution import in_fast_layout, one_hot

        target = check_target(target, x.shape[0], self.name)
        seed = one_hot(target, times_output=self.times_output)
        params = self.params if params is None else params

        def attribute(view: Tensor) -> Tensor:
            return self.method(self.fn, params, view, seed, **self.options)[1]

        # channels-last images: the demo CNN's explanations take 15% less time
        return in_fast_layout(attribute, x.detach()).detach().contiguous()

    def __repr__(self) -> str:
        return self.name


def explainer(model: Any, composite: Any = None, *, method: Callable | None = None,
              params: Params | None = None, canonizers: Any = None, times_output: bool = False,
              **options: Any) -> Explainer:
    """Build ``explain(x, target, params=None)`` from a model and a funcattr attributor.

    Parameters
    ----------
    model : nn.Module or callable
        An ``nn.Module`` (functionalized with ``composite`` and ``canonizers``; never changed)
        or a pure ``fn(params, x)`` such as the ``fn`` of :func:`funcattr.functionalize`, with
        ``params``.
    composite : Composite or str, optional
        The LRP composite for an ``nn.Module`` (``None``: the plain gradient).
    method : callable, optional
        A pure attributor ``method(fn, params, input, attr_output_fn, **options) -> (output,
        attribution)``; :func:`funcattr.gradient` by default (``smooth_grad``,
        ``integrated_gradients`` ... when available).
    params : dict of str to Tensor, optional
        The parameters of a pure ``fn``.
    canonizers : Canonizer or sequence, optional
        Extra canonizers for an ``nn.Module``.
    times_output : bool
        Seed with ``output * one_hot(target)`` (Zennit's relevance convention) instead of
        ``one_hot(target)``.
    **options
        Passed to ``method`` (e.g. ``n_iter=``, ``generator=``, ``chunk_size=``).

    Returns
    -------
    Explainer
        ``explain(x, target, params=None) -> attribution``.

    Examples
    --------
    >>> explain = explainer(model, "epsilon_plus_flat")              # doctest: +SKIP
    >>> curves = pixel_flipping(model, x, target, explain(x, target))  # doctest: +SKIP
    """
    from funcattr.attribution import gradient

    if isinstance(model, nn.Module):
        from funcattr.functional import functionalize

        fn, own = functionalize(model, composite, canonizers)
        params = own if params is None else dict(params)
    elif callable(model):
        if composite is not None or canonizers is not None:
            raise ValueError(
                "explainer(composite=...): a composite applies to an nn.Module; functionalize "
                "the model with it instead and pass fn, params=params."
            )
        if params is None:
            raise TypeError(
                f"explainer(model={type(model).__name__}, params=None): a pure fn(params, x) "
                f"needs params=..."
            )
        fn, params = model, dict(params)
    else:
        raise TypeError(
            f"explainer(model={type(model).__name__}): expected an nn.Module or fn(params, x)."
        )
    method = gradient if method is None else method
    if not callable(method):
        raise TypeError(f"explainer(method={method!r}): expected a callable attributor.")
    name = getattr(method, "__name__", type(method).__name__)
    if composite is not None:
        name += f"[{composite if isinstance(composite, str) else type(composite).__name__}]"
    return Explainer(fn, params, method, times_output, options, name)


# ------------------------------------------------------------------------------------------
# similarity (for randomisation metrics)
# ------------------------------------------------------------------------------------------

def _ranks(values: Tensor) -> Tensor:
    """Average ranks along the last axis (ties share their mean rank), as in Spearman's rho."""
    order = values.argsort(dim=-1, stable=True)
    sorted_values = values.gather(-1, order)
    n = values.shape[-1]
    position = torch.arange(n, dtype=values.dtype, device=values.device).expand_as(values)
    # tie groups: mean of first and last position of each run of equal values
    new_group = torch.ones_like(sorted_values, dtype=torch.bool)
    new_group[..., 1:] = sorted_values[..., 1:] != sorted_values[..., :-1]
    group = new_group.long().cumsum(-1) - 1
    first = torch.zeros_like(sorted_values).scatter_reduce(-1, group, position, "amin",
                                                           include_self=False)
    last = torch.zeros_like(sorted_values).scatter_reduce(-1, group, position, "amax",
                                                          include_self=False)
    mean_rank = ((first + last) / 2).gather(-1, group)
    return torch.empty_like(mean_rank).scatter_(-1, order, mean_rank)


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation along the last axis (0 where either side is constant)."""
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    denominator = (a.square().sum(-1) * b.square().sum(-1)).sqrt()
    value = (a * b).sum(-1) / denominator.clamp_min(torch.finfo(a.dtype).tiny)
    return torch.where(denominator > 0, value, torch.zeros_like(value))


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation along the last axis (Pearson of average ranks)."""
    return pearson(_ranks(a), _ranks(b))


def cosine(a: Tensor, b: Tensor) -> Tensor:
    denominator = a.norm(dim=-1) * b.norm(dim=-1)
    value = (a * b).sum(-1) / denominator.clamp_min(torch.finfo(a.dtype).tiny)
    return torch.where(denominator > 0, value, torch.zeros_like(value))


def ssim(a: Tensor, b: Tensor, *, window: int = 7) -> Tensor:
    """Structural similarity of 2-D maps ``(batch, H, W)`` [wang2004]; skimage's defaults.

    Uniform ``window`` x ``window`` filter, ``K1=0.01``, ``K2=0.03``, sample covariance, the
    data range of both maps together, and the mean over the valid (unpadded) window positions.
    """
    if a.ndim != 3:
        raise ValueError(
            f"ssim(a=tensor of shape {tuple(a.shape)}): expected (batch, H, W) maps; SSIM is "
            f"defined for images. Use similarity='spearman' for other inputs."
        )
    if min(a.shape[-2:]) < window:
        raise ValueError(
            f"ssim(window={window}): expected maps of at least {window}x{window}, got "
            f"{tuple(a.shape[-2:])}. Use similarity='spearman'."
        )
    both = torch.stack([a, b])
    data_range = both.amax(dim=(0, 2, 3)) - both.amin(dim=(0, 2, 3))
    data_range = torch.where(data_range > 0, data_range, torch.ones_like(data_range))
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    n = window * window
    pool = torch.nn.functional.avg_pool2d
    x, y = a[:, None], b[:, None]
    mx, my = pool(x, window, 1), pool(y, window, 1)
    cov = n / (n - 1)
    vx = cov * (pool(x * x, window, 1) - mx * mx)
    vy = cov * (pool(y * y, window, 1) - my * my)
    vxy = cov * (pool(x * y, window, 1) - mx * my)
    c1, c2 = c1[:, None, None, None], c2[:, None, None, None]
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


SIMILARITIES = ("spearman", "spearman_abs", "pearson", "cosine", "ssim")


def similarity(name: str, a: Tensor, b: Tensor, owner: str) -> Tensor:
    """Similarity of pooled attributions ``(batch, *spatial)`` per sample."""
    if name == "ssim":
        return ssim(a, b) if a.ndim == 3 else _raise_ssim(a, owner)
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    if name == "spearman":
        return spearman(a, b)
    if name == "spearman_abs":
        return spearman(a.abs(), b.abs())
    if name == "pearson":
        return pearson(a, b)
    if name == "cosine":
        return cosine(a, b)
    raise ValueError(f"{owner}(similarity={name!r}): expected one of {SIMILARITIES}.")


def _raise_ssim(a: Tensor, owner: str) -> Tensor:
    raise ValueError(
        f"{owner}(similarity='ssim'): SSIM needs 2-D maps, got pooled attributions of shape "
        f"{tuple(a.shape)}. Use similarity='spearman'."
    )


def check_similarity(name: Any, owner: str) -> str:
    if name not in SIMILARITIES:
        raise ValueError(f"{owner}(similarity={name!r}): expected one of {SIMILARITIES}.")
    return name
