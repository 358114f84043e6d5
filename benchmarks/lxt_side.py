"""Issue 12 benchmark, LXT side: one plain gradient vs LXT 2.1's AttnLRP and CP-LRP, CPU.

LXT 2.1 needs ``transformers`` 4.52.4, so this runs in LXT's side environment, not in the
project's venv (which may hold ``transformers`` 5.x). Build that environment once and run::

    /work/main/.venv/bin/python tests/reference/lxt/regenerate.py --env-only
    PYTHONPATH=~/.cache/funcattr-lxt/site /work/main/.venv/bin/python benchmarks/lxt_side.py

Options: ``--rounds N`` (default 7), ``--quick`` (3 rounds, vit_b_16 and MiniLM only),
``--workloads vit minilm gpt2`` (a subset).

float32, one thread (``torch.set_num_threads(1)``), parameters frozen, every method warmed up
first. The methods of a workload are timed in alternation, one call each per round (the order
rotates per round), so that load from other processes on the machine hits them alike. Each call
is timed by two clocks: wall time (``perf_counter``) and this process' CPU time
(``process_time``; with one thread it leaves out the time other processes hold the core, so it
is the steadier figure on a shared machine). Per clock the table gives the median and range of
the seconds, the median and range over rounds of each round's ratio to that round's plain
gradient, and the ratio of the fastest calls (``min/min``).

Workloads and methods (the models of ``tests/reference/lxt/models.py`` where they exist):

- ``vit_b_16`` (seeded random init, 224 px, batch 1), logit of the argmax class: plain gradient;
  CP-LRP = LXT's shipped ``vit_torch.cp_LRP``; AttnLRP = the same map with the uniform rule on
  ``MultiheadAttention`` (LXT ships no AttnLRP map for torch MHA; ``lxt_recipes.py``).
- all-MiniLM-L6-v2 (SDPA attention, 128 tokens), cosine similarity of the mean-pooled embedding
  to a fixed unit vector with the norm held constant: plain gradient on ``transformers``' BERT;
  AttnLRP = LXT's shipped BERT copy; CP-LRP = ``transformers``' BERT with LXT's patches and
  detached query/key (LXT ships no CP map for BERT; ``lxt_recipes.py``).
- GPT-2 small (random init, SDPA), a 24-token prompt and K=8 greedily generated tokens: every
  generated token's logit explained with K separate calls (forward + backward over the 31 input
  tokens each), plain / LXT AttnLRP / LXT CP-LRP (both shipped), plus one plain gradient and
  LXT AttnLRP as one forward with K backward passes (``retain_graph``).

LXT's patches are process-wide; :class:`lxt_recipes.PatchStates` switches between them and the
script checks, before timing, that each state reproduces its first result bit for bit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reference" / "lxt"))

import lxt_recipes
import models

MINILM_TEXT = (
    "Layer-wise relevance propagation explains the prediction of a neural network by passing "
    "the output backwards through the layers, sharing it among the inputs of each layer in "
    "proportion to their contribution. For transformers, the attention heads, the layer norms "
    "and the gated activations each need their own rule, and the rules must be cheap: one "
    "backward pass should cost about as much as one gradient. "
)
GPT2_PROMPT = 24
GPT2_NEW_TOKENS = 8


def frozen(model: nn.Module) -> nn.Module:
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()


class Task:
    """One timed method: a patch state and a call returning the input gradient it produces
    (LXT's modified gradient; relevance = input x gradient, a negligible product left out)."""

    def __init__(self, label: str, state: str, run: Callable[[], Tensor]) -> None:
        self.label, self.state, self.run = label, state, run


def vit_tasks(states: lxt_recipes.PatchStates) -> list[Task]:
    from lxt.efficient import monkey_patch
    from torchvision.models import vision_transformer

    model = frozen(models.vit_b_16().float())
    x = models.vit_b_16_input().float()
    with torch.no_grad():
        target = int(model(x).argmax())

    def explain() -> Tensor:
        xx = x.clone().requires_grad_()
        model(xx)[0, target].backward()
        return xx.grad

    for variant in ("cp", "attnlrp"):
        monkey_patch(vision_transformer, patch_map=lxt_recipes.vit_patch_map(variant))
        states.capture(f"vit_{variant}")
        states.activate("plain")
    return [
        Task("plain gradient", "plain", explain),
        Task("LXT AttnLRP (composed)", "vit_attnlrp", explain),
        Task("LXT CP-LRP", "vit_cp", explain),
    ]


def minilm_tasks(states: lxt_recipes.PatchStates) -> list[Task]:
    import transformers.activations
    from lxt.efficient import monkey_patch
    from transformers import AutoTokenizer
    from transformers.models.bert import modeling_bert

    tokenizer = AutoTokenizer.from_pretrained(models.minilm_path(), local_files_only=True)
    encoded = tokenizer(MINILM_TEXT * 4, truncation=True, max_length=128, return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    assert ids.shape == (1, 128), ids.shape
    unit = torch.randn(384, generator=torch.Generator().manual_seed(0))
    unit = unit / unit.norm()

    def load(cls: type) -> nn.Module:
        return frozen(
            cls.from_pretrained(
                models.minilm_path(), local_files_only=True, attn_implementation="sdpa"
            )
        )

    plain = load(modeling_bert.BertModel)
    composed = load(modeling_bert.BertModel)
    lxt_recipes.hook_bert_attention(composed, "cp")
    monkey_patch(modeling_bert)  # LXT's BERT copy replaces the module's classes
    lxt_bert = load(modeling_bert.BertModel)
    assert type(lxt_bert).__module__ == "lxt.efficient.models.bert"
    states.capture("bert_attnlrp")
    states.activate("plain")
    monkey_patch(transformers.activations, patch_map=lxt_recipes.bert_composed_patch_map())
    states.capture("bert_cp")
    states.activate("plain")

    def explain(model: nn.Module) -> Tensor:
        words = model.get_input_embeddings()(ids).detach().requires_grad_()
        hidden = model(inputs_embeds=words, attention_mask=mask).last_hidden_state
        sentence = models.mean_pool(hidden, mask)[0]
        ((sentence @ unit) / sentence.norm().detach()).backward()
        return words.grad

    return [
        Task("plain gradient", "plain", lambda: explain(plain)),
        Task("LXT AttnLRP", "bert_attnlrp", lambda: explain(lxt_bert)),
        Task("LXT CP-LRP (composed)", "bert_cp", lambda: explain(composed)),
    ]


def gpt2_tasks(states: lxt_recipes.PatchStates) -> list[Task]:
    from lxt.efficient import monkey_patch
    from lxt.efficient.models import gpt2 as lxt_gpt2
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.models.gpt2 import modeling_gpt2

    config = GPT2Config()
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = frozen(GPT2LMHeadModel(config))
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (1, GPT2_PROMPT), generator=generator)
    with torch.no_grad():
        for _ in range(GPT2_NEW_TOKENS):
            step = model(input_ids=ids).logits[0, -1].argmax().view(1, 1)
            ids = torch.cat([ids, step], dim=1)
    inputs = ids[:, :-1]
    positions = range(GPT2_PROMPT - 1, GPT2_PROMPT - 1 + GPT2_NEW_TOKENS)
    targets = [int(ids[0, p + 1]) for p in positions]
    for label, patch_map in (("gpt2_attnlrp", lxt_gpt2.attnLRP), ("gpt2_cp", lxt_gpt2.cp_LRP)):
        monkey_patch(modeling_gpt2, patch_map=patch_map)
        states.capture(label)
        states.activate("plain")

    def embeddings() -> Tensor:
        return model.get_input_embeddings()(inputs).detach().requires_grad_()

    def one(position: int, target: int) -> Tensor:
        words = embeddings()
        model(inputs_embeds=words).logits[0, position, target].backward()
        return words.grad

    def separate() -> Tensor:
        return torch.stack([one(p, t) for p, t in zip(positions, targets)])

    def retained() -> Tensor:
        words = embeddings()
        logits = model(inputs_embeds=words).logits
        return torch.stack(
            [
                torch.autograd.grad(logits[0, p, t], words, retain_graph=True)[0]
                for p, t in zip(positions, targets)
            ]
        )

    k = GPT2_NEW_TOKENS
    return [
        Task("plain gradient, 1 token", "plain", lambda: one(positions[0], targets[0])),
        Task(f"plain gradient, {k} separate", "plain", separate),
        Task(f"LXT AttnLRP, {k} separate", "gpt2_attnlrp", separate),
        Task(f"LXT CP-LRP, {k} separate", "gpt2_cp", separate),
        Task(f"LXT AttnLRP, 1 fwd + {k} bwd", "gpt2_attnlrp", retained),
    ]


def patch_targets() -> list[tuple[object, str]]:
    import transformers.activations
    from transformers.models.gpt2 import modeling_gpt2

    targets: list[tuple[object, str]] = []
    for owner in (nn.LayerNorm, nn.GELU, nn.MultiheadAttention, nn.Dropout):
        targets += [(owner, "forward"), (owner, "original_forward")]
    targets += [
        (transformers.activations.GELUActivation, "forward"),
        (transformers.activations.GELUActivation, "original_forward"),
        (modeling_gpt2.GPT2MLP, "forward"),
        (modeling_gpt2, "eager_attention_forward"),
        (modeling_gpt2, "ALL_ATTENTION_FUNCTIONS"),
    ]
    return targets


def check_states(states: lxt_recipes.PatchStates, tasks: list[Task]) -> dict[str, Tensor]:
    """Each task's result, computed twice with its state re-activated in between: must match."""
    first = {}
    for task in tasks:
        states.activate(task.state)
        first[task.label] = task.run().detach().clone()
    for task in reversed(tasks):
        states.activate(task.state)
        again = task.run()
        if not torch.equal(again, first[task.label]):
            raise RuntimeError(f"{task.label}: result changed after switching patch states")
    states.activate("plain")
    return first


def measure(
    states: lxt_recipes.PatchStates, tasks: list[Task], rounds: int
) -> dict[str, dict[str, list[float]]]:
    """Per clock ("wall": ``perf_counter``, "cpu": ``process_time``), per task, the seconds."""
    for task in tasks:  # warm-up (check_states already ran each twice)
        states.activate(task.state)
        task.run()
    seconds = {clock: {task.label: [] for task in tasks} for clock in ("wall", "cpu")}
    for r in range(rounds):
        for task in tasks[r % len(tasks) :] + tasks[: r % len(tasks)]:
            states.activate(task.state)
            wall, cpu = time.perf_counter(), time.process_time()
            task.run()
            seconds["cpu"][task.label].append(time.process_time() - cpu)
            seconds["wall"][task.label].append(time.perf_counter() - wall)
    states.activate("plain")
    return seconds


def report(workload: str, tasks: list[Task], seconds: dict[str, dict[str, list[float]]]) -> None:
    print(f"\n{workload}")
    print(
        f"  {'method':<30} {'clock':<5} {'median s':>9} {'min..max s':>17} {'x plain':>8}"
        f" {'min..max':>13} {'min/min':>8}"
    )
    for task in tasks:
        for clock, by_task in seconds.items():
            base, times = by_task[tasks[0].label], by_task[task.label]
            ratios = [t / b for t, b in zip(times, base)]
            print(
                f"  {task.label if clock == 'wall' else '':<30} {clock:<5}"
                f" {statistics.median(times):9.4f} {min(times):8.4f}..{max(times):<8.4f}"
                f" {statistics.median(ratios):8.3f} {min(ratios):6.3f}..{max(ratios):<6.3f}"
                f" {min(times) / min(base):8.3f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--workloads",
        nargs="+",
        choices=["vit", "minilm", "gpt2"],
        default=["vit", "minilm", "gpt2"],
    )
    args = parser.parse_args()
    rounds = 3 if args.quick else args.rounds
    torch.set_num_threads(1)
    import importlib.metadata as md

    print(
        f"torch {torch.__version__}, lxt {md.version('lxt')}, transformers"
        f" {md.version('transformers')}, float32, {torch.get_num_threads()} thread,"
        f" {rounds} rounds"
    )
    states = lxt_recipes.PatchStates(patch_targets())
    states.capture("plain")
    builders = {
        "vit": ("vit_b_16, 224 px, batch 1", vit_tasks),
        "minilm": ("MiniLM (SDPA), 128 tokens", minilm_tasks),
        "gpt2": (
            f"GPT-2 small, {GPT2_PROMPT}-token prompt, {GPT2_NEW_TOKENS} generated",
            gpt2_tasks,
        ),
    }
    chosen = [w for w in args.workloads if not (args.quick and w == "gpt2")]
    for workload, build in (builders[w] for w in chosen):
        tasks = build(states)
        results = check_states(states, tasks)
        plain = {results[t.label].shape: results[t.label] for t in tasks if t.state == "plain"}
        for task in tasks:
            result = results[task.label]
            if task.state != "plain" and torch.equal(result, plain[result.shape]):
                raise RuntimeError(f"{task.label}: same result as the plain gradient")
        report(workload, tasks, measure(states, tasks, rounds))


if __name__ == "__main__":
    main()
