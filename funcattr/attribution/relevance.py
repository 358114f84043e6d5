"""One call for relevance, whatever the composite: :func:`relevance`.

Two conventions carry LRP through a backward pass:

- Zennit's **relevance form** (its composites): the backward carries relevance itself; seeded
  with ``output * attr_output_fn(output)``, the gradient at the input *is* the relevance;
- the **Gradient x Input form** (AttnLRP, CP-LRP, LXT): the backward carries relevance divided
  by the activation; seeded with ``attr_output_fn(output)``, relevance is
  ``input * gradient``. With no rules at all this is input x gradient.

``functionalize`` records the composite's form on the function it returns (``fn.form``);
:func:`relevance` reads it, so the same call explains the same value,
``sum(attr_output_fn(output) * output)``, in both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from funcattr.attribution.batched import stacked_pullback
from funcattr.attribution.options import check_chunk_size, check_input, check_params, shown
from funcattr.attribution.pullback import Params, checked_pullback
from funcattr.attribution.targets import AttrOutput, as_attr_output_fn

__all__ = ["FORMS", "form_of", "relevance"]

#: The two conventions: see the module docstring.
FORMS = ("relevance", "gradient_x_input")

def form_of(fn: Callable, form: str | None, owner: str = "relevance") -> str:
    """``form`` if given, else ``fn.form``; checked against :data:`FORMS`."""
    if form is None:
        form = getattr(fn, "form", None)
        if form is None:
            name = getattr(fn, "__qualname__", type(fn).__name__)
            raise TypeError(
                f"{owner}(fn={name}): expected a function that says how its rules carry "
                f"relevance (the fn of funcattr.functionalize has fn.form), got one without a "
                f"form attribute. Pass form='gradient_x_input' (AttnLRP, CP-LRP, no rules) or "
                f"form='relevance' (Zennit's composites), or set fn.form on your wrapper.")
    if form not in FORMS:
        raise ValueError(f"{owner}(form={form!r}): expected one of {FORMS}, got {form!r}. Pass "
                         f"form='gradient_x_input' or form='relevance'.")
    return form


def _check_output(output: Any, owner: str) -> Tensor:
    if isinstance(output, Tensor):
        return output
    fields = ""
    if hasattr(output, "keys"):
        fields = f" with fields {', '.join(map(str, output.keys()))}"
    raise TypeError(
        f"{owner}(fn=...): expected a model that returns one tensor, got "
        f"{type(output).__name__}{fields}. Pick the output to explain with a wrapper, e.g. "
        f"funcattr.transformers.embedding_function(fn, output='logits') for a transformers "
        f"model, or lambda params, x: fn(params, x)[0].")


def _check_floating(input: Tensor, owner: str) -> None:
    if not input.is_floating_point():
        raise TypeError(
            f"{owner}(input={shown(input)} of dtype {input.dtype}): expected a floating point "
            f"input, got {input.dtype}. Token ids cannot carry relevance: explain the input "
            f"embeddings (funcattr.transformers.input_embeddings(model, ids) with "
            f"funcattr.transformers.embedding_function), or pass input.float().")


def _seeds(output: Tensor, attr_output_fn: Callable[[Tensor], Any], multi: bool,
           owner: str) -> Tensor:
    seed = attr_output_fn(output)
    shape = tuple(output.shape)
    if multi:
        if not isinstance(seed, Tensor) or seed.ndim != output.ndim + 1 or (
                tuple(seed.shape[1:]) != shape) or seed.shape[0] == 0:
            got = tuple(seed.shape) if isinstance(seed, Tensor) else type(seed).__name__
            raise ValueError(
                f"{owner}(attr_output_fn=..., multi_target=True): expected K >= 1 output "
                f"gradients stacked as (K, *output.shape) = (K, {', '.join(map(str, shape))}), "
                f"got {got}. Stack one output gradient per target, e.g. "
                f"funcattr.transformers.token_targets(positions, tokens).")
    elif not isinstance(seed, Tensor) or tuple(seed.shape) != shape:
        got = tuple(seed.shape) if isinstance(seed, Tensor) else type(seed).__name__
        raise ValueError(
            f"{owner}(attr_output_fn=...): expected an output gradient of the output's shape "
            f"{shape}, got {got}. Return a tensor shaped like the output, e.g. from "
            f"one_hot(target); for several targets pass multi_target=True.")
    return seed.to(output.dtype) if seed.dtype != output.dtype else seed


def relevance(fn: Callable, params: Params, input: Tensor, attr_output_fn: AttrOutput,
              *, multi_target: bool = False, chunk_size: int | None = None,
              form: str | None = None) -> tuple[Tensor, Tensor]:
    """Relevance of ``input`` for ``sum(attr_output_fn(output) * output)``, in any form.

    ``attr_output_fn(output)`` is held constant (so ``one_hot(t)`` explains logit ``t``, and
    ``unit / output.norm(dim=-1, keepdim=True)`` the cosine similarity to ``unit`` with the
    norm held constant). For Zennit's composites this equals
    ``gradient(fn, params, input, lambda y: y * attr_output_fn(y))``; for AttnLRP/CP-LRP (and
    no rules) it is ``input * gradient(fn, params, input, attr_output_fn)``.

    Parameters
    ----------
    fn, params, input
        As in :func:`gradient`: ``fn(params, input)`` returns one tensor, ``input`` is
        floating point (token ids: explain their embeddings instead).
    attr_output_fn : callable, tensor or None
        ``output -> weights`` shaped like the output (``None``: the output itself). With
        ``multi_target``, ``output -> (K, *output.shape)``: K weightings at once.
    multi_target : bool
        K explanations from one forward pass and a batched backward: relevance is
        ``(K, *input.shape)``, row ``k`` equal to the call with the ``k``-th weighting.
    chunk_size : int, optional
        With ``multi_target``: model inputs per backward step (``chunk_size // batch``
        targets at once, at least one); ``None``: all at once. Any value gives the same result.
    form : str, optional
        ``'relevance'`` or ``'gradient_x_input'``; default ``fn.form`` (set by
        ``functionalize`` from the composite).

    Returns
    -------
    output : Tensor
        ``fn(params, input)``.
    relevance : Tensor
        Shaped like ``input`` (``(K, *input.shape)`` with ``multi_target``).

    Examples
    --------
    >>> fn, params = functionalize(vit, AttnLRP())                          # doctest: +SKIP
    >>> logits, relevance = funcattr.relevance(fn, params, x, one_hot(3))  # doctest: +SKIP
    """
    owner = "relevance"
    form = form_of(fn, form, owner)
    attr_output_fn = as_attr_output_fn(attr_output_fn, owner)
    check_input(input, owner)
    _check_floating(input, owner)
    if not isinstance(multi_target, bool):
        raise TypeError(f"{owner}(multi_target={multi_target!r}): expected True or False, got "
                        f"{type(multi_target).__name__}. Pass multi_target=True for K targets.")
    check_chunk_size(chunk_size, owner)
    if chunk_size is not None and not multi_target:
        raise ValueError(f"{owner}(chunk_size={chunk_size}): expected chunk_size only with "
                         f"multi_target=True (it sets how many targets share a backward step), "
                         f"got it for one target. Leave chunk_size out, or pass "
                         f"multi_target=True.")

    def model(params: Params, x: Tensor) -> Tensor:
        return _check_output(fn(params, x), owner)

    if multi_target:
        output, pull = stacked_pullback(model, params, input, chunk_size, owner)
    else:
        check_params(params, owner)
        output, pull_one = checked_pullback(model, params, input, owner)

        def pull(seed: Tensor) -> Tensor:
            return pull_one(seed, last=True)
    seed = _seeds(output, attr_output_fn, multi_target, owner)
    if form == "relevance":
        return output, pull(seed * output)
    return output, input * pull(seed)

