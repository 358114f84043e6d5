"""The model check: no quietly wrong relevance (issue 12 "no more silent failure", issue 14
items 4 and 34). Each silent-failure case of the issues reports at functionalize."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torchvision
from torch import nn

import funcattr
from funcattr.composites import (
    EpsilonPlus,
    EpsilonPlusFlat,
    GuidedBackprop,
    LayerMapComposite,
    MixedComposite,
)
from funcattr.rules import Epsilon, Pass
from funcattr.transformers import CPLRP, AttnLRP, IdentityRule

HAS_TEXT = importlib.util.find_spec("transformers") is not None


def small_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2,
                             hidden_dim=8, mlp_dim=8, num_classes=3).eval()


def report(model: nn.Module, composite, **kwargs) -> str:
    with pytest.raises(ValueError) as error:
        funcattr.functionalize(model, composite, check="raise", **kwargs)
    return str(error.value)


def test_a_vit_under_a_zennit_composite_reports_everything_at_once() -> None:
    text = report(small_vit(), EpsilonPlusFlat())
    assert text.startswith("functionalize(model=VisionTransformer, composite=EpsilonPlusFlat): "
                           "9 module(s) would make the relevance quietly wrong:")
    assert ("LayerNorm encoder.layers.encoder_layer_0.ln_1, encoder.layers.encoder_layer_0.ln_2, "
            "encoder.layers.encoder_layer_1.ln_1, encoder.layers.encoder_layer_1.ln_2, "
            "encoder.ln: no rule") in text
    assert ("MultiheadAttention encoder.layers.encoder_layer_0.self_attention, "
            "encoder.layers.encoder_layer_1.self_attention: no rule") in text
    assert ("NonDynamicallyQuantizableLinear encoder.layers.encoder_layer_0.self_attention."
            "out_proj, encoder.layers.encoder_layer_1.self_attention.out_proj: "
            "Epsilon(epsilon=1e-06, zero_params=None) never runs") in text
    assert "Fix: use funcattr.transformers.AttnLRP() or CPLRP()" in text
    assert text.endswith("make it an error with check='raise'.")


def test_the_default_warns_once_and_ignore_is_silent() -> None:
    with pytest.warns(funcattr.ModelCheckWarning, match="9 module") as record:
        funcattr.functionalize(small_vit(), EpsilonPlusFlat())
    assert len(record) == 1
    assert record[0].filename == __file__  # points at the caller's functionalize
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        funcattr.functionalize(small_vit(), EpsilonPlusFlat(), check="ignore")
        funcattr.functionalize(small_vit(), AttnLRP())
        funcattr.functionalize(small_vit(), CPLRP(conv_gamma=0.25, linear_gamma=0.1))
        funcattr.functionalize(small_vit())  # the plain gradient claims no relevance


def test_check_argument_is_checked() -> None:
    with pytest.raises(ValueError, match=r"^functionalize\(check='loud'\): expected one of "
                                         r"\('warn', 'raise', 'ignore'\), got 'loud'\. Pass"):
        funcattr.functionalize(small_vit(), AttnLRP(), check="loud")


def test_activations_outside_the_map_and_recurrent_layers() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 4), nn.SiLU(),
                          nn.LSTM(4, 4), ).eval()
    text = report(model, LayerMapComposite([(nn.Linear, Epsilon())]))
    assert "GELU/SiLU 1, 3: no rule: the gradient of a non-linear activation" in text
    assert "Fix: map it to funcattr.rules.Pass(), e.g. MixedComposite([LayerMapComposite(" in text
    assert "map it to funcattr.rules.Pass()" in text
    assert "LSTM 4: no rule: funcattr has no LRP rule for recurrent layers" in text
    # ReLU's gradient already is relevance: not reported
    quiet = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    funcattr.functionalize(quiet, LayerMapComposite([(nn.Linear, Epsilon())]), check="raise")
    ruled = LayerMapComposite([(nn.Linear, Epsilon()), ((nn.GELU, nn.SiLU), Pass())])
    assert "GELU" not in report(model, ruled)


def test_gradient_x_input_knows_its_own_safe_activations() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(), nn.Linear(4, 4), nn.Tanh())
    text = report(model, _gxi(LayerMapComposite([(nn.Linear, IdentityRule())])))
    assert "Tanh 3: no rule" in text
    assert "LeakyReLU" not in text  # f(x) / x is its derivative: already the identity rule
    assert "map it to funcattr.transformers.IdentityRule()" in text


def test_a_mixed_composite_takes_the_gradient_x_input_form() -> None:
    mixed = MixedComposite([LayerMapComposite([(nn.ReLU, IdentityRule())]), AttnLRP()])
    assert mixed.form == "gradient_x_input"
    assert LayerMapComposite([(nn.Linear, Epsilon())]).form == "relevance"
    fn, _ = funcattr.functionalize(small_vit(), mixed)
    assert fn.form == "gradient_x_input"


def _gxi(composite):
    """A Gradient x Input composite with only ``composite``'s rules."""
    class Only(type(composite)):
        form = "gradient_x_input"

    return Only(composite.layer_map)


def test_an_uncanonized_resnet_suggests_its_canonizer() -> None:
    """README's quick start without a canonizer (issue 14 item 34)."""
    model = torchvision.models.resnet18(weights=None).eval()
    text = report(model, EpsilonPlusFlat())
    assert "ResNet <model>: un-canonized" in text
    assert "pass canonizers=funcattr.canonizers_for(model), here [ResNetCanonizer()]" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        funcattr.functionalize(model, EpsilonPlusFlat(), funcattr.canonizers_for(model))
        funcattr.functionalize(model, EpsilonPlus(canonizers=funcattr.canonizers_for(model)))
        funcattr.functionalize(model, GuidedBackprop())  # a modified gradient, not LRP


def test_an_unruled_batch_norm_in_an_lrp_composite() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)).eval()
    text = report(model, LayerMapComposite([(nn.Conv2d, Epsilon())]))
    assert "BatchNorm2d 2: no rule: a batch norm's gradient rescales relevance" in text


def test_composite_context_checks_too() -> None:
    with pytest.warns(funcattr.ModelCheckWarning, match=r"^EpsilonPlusFlat\.context"):
        with EpsilonPlusFlat().context(small_vit()):
            pass


@pytest.mark.skipif(not HAS_TEXT, reason="needs the text extra: pip install 'funcattr[text]'")
def test_bert_under_a_zennit_composite() -> None:
    """Issue 12: BERT's activations, LayerNorms and attention got nothing, and Flat went to its
    first query projection: all reported."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=8)
    text = report(BertModel(config).eval(), EpsilonPlusFlat())
    assert "GELUActivation encoder.layer.0.intermediate.intermediate_act_fn: no rule" in text
    assert "BertSelfAttention encoder.layer.0.attention.self: no rule: the gradient through " \
           "attention" in text
    assert "LayerNorm embeddings.LayerNorm, encoder.layer.0.attention.output.LayerNorm" in text
    funcattr.functionalize(BertModel(config).eval(), AttnLRP(), check="raise")


def test_the_model_check_does_not_touch_the_model() -> None:
    from helpers import assert_unchanged, snapshot

    model = small_vit()
    before = snapshot(model)
    with pytest.warns(funcattr.ModelCheckWarning):
        funcattr.functionalize(model, EpsilonPlusFlat())
    assert_unchanged(model, before)


@pytest.mark.skipif(not HAS_TEXT, reason="needs the text extra: pip install 'funcattr[text]'")
def test_the_issues_bert_crashes_are_errors_that_say_the_fix() -> None:
    """Issue 12: integer input_ids ("only Tensors of floating point dtype can require
    gradients"), an HF output object ("... object has no attribute 'detach'") and a rule on a
    module returning a tuple (Pass on attention: "'tuple' object has no attribute '_base'")."""
    import torch
    from transformers import BertConfig, BertModel
    from transformers.models.bert.modeling_bert import BertSelfAttention

    from funcattr.transformers import input_embeddings

    config = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=8)
    model = BertModel(config).eval()
    ids = torch.randint(20, (1, 5), generator=torch.Generator().manual_seed(0))
    fn, params = funcattr.functionalize(model, AttnLRP())
    with pytest.raises(TypeError, match=r"^relevance\(input=tensor of shape \(1, 5\) of dtype "
                                        r"torch\.int64\): expected a floating point input.*"
                                        r"funcattr\.transformers\.input_embeddings"):
        funcattr.relevance(fn, params, ids, funcattr.one_hot(0))
    words = input_embeddings(model, ids)

    def whole(params, x):
        return fn(params, None, inputs_embeds=x)

    with pytest.raises(TypeError, match=r"^relevance\(fn=\.\.\.\): expected a model that returns "
                                        r"one tensor, got BaseModelOutputWithPoolingAndCrossAtten"
                                        r"tions with fields last_hidden_state, pooler_output\. "
                                        r"Pick the output.*embedding_function"):
        funcattr.relevance(whole, params, words, funcattr.one_hot(0), form="gradient_x_input")
    with pytest.raises(TypeError, match=r"^gradient\(fn=\.\.\.\): expected a model that returns "
                                        r"one tensor, got a BaseModelOutputWithPoolingAndCross"
                                        r"Attentions with keys \['last_hidden_state', "
                                        r"'pooler_output'\]\. Pick the output .*select_output"):
        funcattr.gradient(whole, params, words, funcattr.one_hot(0))
    for attention in (nn.MultiheadAttention, BertSelfAttention):
        composite = MixedComposite([LayerMapComposite([(attention, Pass())]), AttnLRP()])
        target = model if attention is BertSelfAttention else small_vit()
        fn, params = funcattr.functionalize(target, composite, check="ignore")
        x = words if attention is BertSelfAttention else torch.randn(1, 3, 16, 16)
        call = ((lambda p, u, fn=fn: fn(p, None, inputs_embeds=u).last_hidden_state)
                if attention is BertSelfAttention else fn)
        with pytest.raises(TypeError, match=rf"^Pass\(\) on {attention.__name__} .*: expected a "
                                            r"module that returns one tensor shaped like its "
                                            r"input, got tuple\. Give this module no rule"):
            funcattr.relevance(call, params, x, funcattr.one_hot(0), form="gradient_x_input")
