"""Explaining ``transformers`` language models at their input embeddings.

Token ids are integers and carry no gradient, so a language model is explained at its input
embeddings (``inputs_embeds``): :func:`input_embeddings` looks them up,
:func:`embedding_function` turns a functionalized model into ``g(params, embeddings) ->
tensor`` (the attention mask held fixed, one chosen output: logits at a position, a pooled
sentence embedding, ...), and :func:`token_relevance` sums the relevance over the embedding
dimension, one number per token (padding gets exactly 0).

>>> fn, params = funcattr.functionalize(model, AttnLRP())                      # doctest: +SKIP
>>> words = input_embeddings(model, ids)                                       # doctest: +SKIP
>>> embed = embedding_function(fn, attention_mask=mask, pool="mean")           # doctest: +SKIP
>>> e, r = funcattr.relevance(embed, params, words, cosine_to(other))          # doctest: +SKIP
>>> tokens = token_relevance(r, mask)                                          # doctest: +SKIP

Nothing here imports ``transformers``: the helpers work on any model that takes
``inputs_embeds`` (and ``attention_mask``) as keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "POOLS",
    "EmbeddingFunction",
    "cosine_to",
    "embedding_function",
    "input_embeddings",
    "mean_pool",
    "token_logit",
    "token_relevance",
    "token_targets",
]

#: How :func:`embedding_function` reduces ``(batch, tokens, ...)`` to one row per sequence.
POOLS = ("mean", "first", "last")


def input_embeddings(model: nn.Module, input_ids: Tensor) -> Tensor:
    """The input embeddings of ``input_ids`` (``model.get_input_embeddings()``), detached:
    the tensor to explain."""
    if not isinstance(input_ids, Tensor) or input_ids.is_floating_point():
        got = f"dtype {input_ids.dtype}" if isinstance(input_ids, Tensor) else \
            type(input_ids).__name__
        raise TypeError(f"input_embeddings(input_ids={got}): expected integer token ids, got "
                        f"{got}. Pass the tokenizer's input_ids tensor.")
    getter = getattr(model, "get_input_embeddings", None)
    if getter is None:
        raise TypeError(f"input_embeddings(model={type(model).__name__}): expected a "
                        f"transformers model (with get_input_embeddings()), got one without. "
                        f"Look the embeddings up yourself, e.g. model.embed(ids).detach().")
    with torch.no_grad():
        return getter()(input_ids).detach()


def mean_pool(hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
    """The mean of ``hidden`` ``(batch, tokens, dim)`` over the tokens the mask keeps
    (sentence-transformers' pooling); over all tokens without a mask."""
    if attention_mask is None:
        return hidden.mean(1)
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1)


def _select(output: Any, name: str | int) -> Tensor:
    if isinstance(name, int):
        return output[name]
    if isinstance(output, Tensor):
        raise TypeError(
            f"embedding_function(output={name!r}): expected a model output with fields (a "
            f"transformers ModelOutput), got a tensor. Pass output=None to use it as it is.")
    try:
        return output[name]
    except (KeyError, TypeError, IndexError):
        fields = ", ".join(map(str, output.keys())) if hasattr(output, "keys") else "none"
        raise ValueError(
            f"embedding_function(output={name!r}): expected a field of the model's output, got "
            f"one it does not have; its fields are {fields}. Pass one of them.") from None


@dataclass(frozen=True, eq=False)
class EmbeddingFunction:
    """``g(params, inputs_embeds) -> tensor``: a model called on embeddings, one output chosen.

    Built by :func:`embedding_function`; ``form`` is the wrapped function's (so
    :func:`funcattr.relevance` reads the composite's form through it).
    """

    fn: Callable[..., Any]
    attention_mask: Tensor | None = None
    output: str | int | Callable[[Any], Tensor] | None = "last_hidden_state"
    pool: str | None = None
    position: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def form(self) -> str | None:
        return getattr(self.fn, "form", None)

    def __call__(self, params: Any, inputs_embeds: Tensor) -> Tensor:
        if not isinstance(inputs_embeds, Tensor) or not inputs_embeds.is_floating_point():
            got = getattr(inputs_embeds, "dtype", type(inputs_embeds).__name__)
            raise TypeError(
                f"embedding_function(...)(inputs_embeds={got}): expected floating point "
                f"embeddings (batch, tokens, dim), got {got}. Look token ids up with "
                f"funcattr.transformers.input_embeddings(model, ids).")
        kwargs = dict(self.kwargs)
        if self.attention_mask is not None:
            kwargs["attention_mask"] = self.attention_mask
        result = self.fn(params, None, inputs_embeds=inputs_embeds, **kwargs)
        if callable(self.output):
            result = self.output(result)
        elif self.output is not None:
            result = _select(result, self.output)
        if not isinstance(result, Tensor):
            raise TypeError(
                f"embedding_function(output={self.output!r}): expected it to choose one tensor "
                f"of the model's output, got {type(result).__name__}. Pass the name of a "
                f"tensor field (e.g. 'logits', 'last_hidden_state') or a callable.")
        if self.pool == "mean":
            result = mean_pool(result, self.attention_mask)
        elif self.pool == "first":
            result = result[:, 0]
        elif self.pool == "last":
            result = result[:, -1]
        if self.position is not None:
            result = result[:, self.position]
        return result


def embedding_function(fn: Callable[..., Any], *, attention_mask: Tensor | None = None,
                       output: str | int | Callable[[Any], Tensor] | None = None,
                       pool: str | None = None, position: int | None = None,
                       **model_kwargs: Any) -> EmbeddingFunction:
    """A functionalized ``transformers`` model as a function of its input embeddings.

    The result ``g(params, inputs_embeds)`` calls ``fn(params, None,
    inputs_embeds=inputs_embeds, attention_mask=attention_mask, **model_kwargs)`` and returns
    one tensor of the output, pooled or at one position, ready for :func:`funcattr.relevance`.

    Parameters
    ----------
    fn : callable
        ``fn(params, input_ids, **kwargs)``, e.g. from :func:`funcattr.functionalize`.
    attention_mask : Tensor, optional
        ``(batch, tokens)``, 1 for tokens and 0 for padding; held fixed (not explained). Under
        ``torch.func.vmap`` pass an unbatched one.
    output : str, int or callable, optional
        The output field (``'logits'``, ``'last_hidden_state'``, ``'pooler_output'``), a
        tuple index, or ``output -> tensor``. Default: ``'logits'`` if the model returns
        logits, else ``'last_hidden_state'`` (decided on the first call).
    pool : {'mean', 'first', 'last'}, optional
        Reduce the tokens: the mean over the mask (a sentence embedding), the first token
        (``[CLS]``) or the last.
    position : int, optional
        Keep one position of the (pooled) output, e.g. ``position=-1`` for the logits of the
        next token: then ``one_hot(token)`` explains that token's logit.
    **model_kwargs
        Further keyword arguments of the model call (e.g. ``token_type_ids``).

    Examples
    --------
    >>> logits_at = embedding_function(fn, attention_mask=mask, output="logits", position=-1)
    ...                                                                      # doctest: +SKIP
    >>> _, r = funcattr.relevance(logits_at, params, words, one_hot(token))  # doctest: +SKIP
    """
    if not callable(fn):
        raise TypeError(f"embedding_function(fn={type(fn).__name__}): expected the function of "
                        f"funcattr.functionalize(model, composite), got "
                        f"{type(fn).__name__}. Pass fn, not params.")
    if pool is not None and pool not in POOLS:
        raise ValueError(f"embedding_function(pool={pool!r}): expected None or one of {POOLS}, "
                         f"got {pool!r}. Pass e.g. pool='mean' for a sentence embedding.")
    if attention_mask is not None and (not isinstance(attention_mask, Tensor)
                                       or attention_mask.ndim != 2):
        raise ValueError(f"embedding_function(attention_mask=...): expected a (batch, tokens) "
                         f"tensor of 1 (token) and 0 (padding), got "
                         f"{getattr(attention_mask, 'shape', type(attention_mask).__name__)}. "
                         f"Pass the tokenizer's attention_mask.")
    if output is None:
        output = _default_output
    return EmbeddingFunction(fn, attention_mask, output, pool, position, dict(model_kwargs))


def _default_output(result: Any) -> Any:
    if isinstance(result, Tensor):
        return result
    if hasattr(result, "keys"):
        for name in ("logits", "last_hidden_state"):
            if name in result.keys():
                return result[name]
    return result[0] if isinstance(result, tuple) else result


def token_relevance(relevance: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """One number per token: ``relevance`` ``(..., tokens, dim)`` summed over the embedding
    dimension, padding (mask 0) set to exactly 0."""
    tokens = relevance.sum(-1)
    if attention_mask is not None:
        tokens = tokens * (attention_mask != 0).to(tokens.dtype)
    return tokens


def cosine_to(other: Tensor) -> Callable[[Tensor], Tensor]:
    """``attr_output_fn`` for the cosine similarity of each output row to ``other``.

    ``output -> other_hat / |output|`` (``other_hat = other / |other|``): the explained value
    ``sum(attr * output)`` is ``cos(output, other)``, with ``|output|`` held constant.
    """
    if not isinstance(other, Tensor) or not other.is_floating_point():
        raise TypeError(f"cosine_to(other={type(other).__name__}): expected a floating point "
                        f"embedding tensor, got {type(other).__name__}. Pass the second "
                        f"sentence's pooled embedding.")
    unit = other / other.norm(dim=-1, keepdim=True)

    def cosine(output: Tensor) -> Tensor:
        return unit.to(output.dtype) / output.norm(dim=-1, keepdim=True)

    return cosine


def token_logit(position: int, token: int) -> Callable[[Tensor], Tensor]:
    """``attr_output_fn`` selecting the logit of ``token`` at ``position`` of
    ``(batch, tokens, vocabulary)`` logits."""
    one_hots = _one_hots([position], [token], "token_logit")
    return lambda output: one_hots(output)[0]


def token_targets(positions: Sequence[int], tokens: Sequence[int]) -> Callable[[Tensor], Tensor]:
    """``attr_output_fn`` for ``multi_target=True``: K one-hot weightings of
    ``(batch, tokens, vocabulary)`` logits, target ``k`` the logit of ``tokens[k]`` at
    ``positions[k]`` (e.g. every generated token of a prompt's continuation)."""
    return _one_hots(list(positions), list(tokens), "token_targets")


def _one_hots(positions: list, tokens: list, owner: str) -> Callable[[Tensor], Tensor]:
    if len(positions) != len(tokens) or not positions or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in positions + tokens):
        raise ValueError(f"{owner}(positions={positions!r}, tokens={tokens!r}): expected "
                         f"K >= 1 integer positions and as many token ids, got "
                         f"{len(positions)} and {len(tokens)}. Pass e.g. positions=[11, 12], "
                         f"tokens=[42, 7].")

    def targets(output: Tensor) -> Tensor:
        if output.ndim != 3:
            raise ValueError(f"{owner}(...): expected (batch, tokens, vocabulary) logits, "
                             f"got shape {tuple(output.shape)}. Explain the model's logits "
                             f"(embedding_function(fn, output='logits')).")
        seeds = output.new_zeros((len(positions), *output.shape))
        for k, (position, token) in enumerate(zip(positions, tokens, strict=True)):
            seeds[k, :, position, token] = 1
        return seeds

    return targets
