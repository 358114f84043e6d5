"""The demo ViT (issue 12): shipped weights, accuracy, deterministic training, and
``funcattr explain --model demo-vit`` with the mask localisation figures of
docs/transformers.md beside the CNN's."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import funcattr
from funcattr.canonizers import SequentialMergeBatchNorm
from funcattr.cli import main
from funcattr.cli.heatmaps import positive_fraction_in_mask
from funcattr.demo import load_demo_samples, make_dataset
from funcattr.demo import train as demo_train
from funcattr.demo.vit import VIT_CONFIG, VIT_STEM, build_demo_vit, load_demo_vit
from funcattr.transformers import CPLRP, AttnLRP

ROOT = Path(__file__).resolve().parents[1]
NEAR_MASK_PIXELS = 2


def test_shipped_vit_reaches_its_recorded_accuracy() -> None:
    """The whole test split of the training script: accuracy >= 0.99, as recorded."""
    record = json.loads(resources.files("funcattr.demo").joinpath("vit_weights.json")
                        .read_text(encoding="utf-8"))
    assert record["config"] == VIT_CONFIG and record["conv_stem"] == list(VIT_STEM)
    model = load_demo_vit()
    assert not model.training and next(model.parameters()).dtype == torch.float32
    images, labels, _ = make_dataset(demo_train.TEST_SIZE, demo_train.TEST_SEED)
    accuracy = demo_train.evaluate(model, images, labels)
    assert accuracy == record["test_accuracy"] >= 0.99


def test_vit_training_is_deterministic() -> None:
    def tiny():
        with demo_train.deterministic(threads=None):
            return demo_train.train(epochs=1, samples_per_epoch=16, batch_size=8, seed=5,
                                    build=lambda: build_demo_vit(torch.float32))

    model, losses = tiny()
    again, again_losses = tiny()
    assert losses == again_losses and not model.training
    assert set(model.state_dict()) == set(build_demo_vit().state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_a_fresh_process_knows_the_transformer_composites() -> None:
    """``attn_lrp``/``cp_lrp`` are registered by funcattr.transformers, a layer above the
    registry: a fresh process that never imported it still finds them (the registry loads
    its providers), so ``functionalize(model, 'attn_lrp')`` and ``funcattr explain --model
    demo-vit`` (``--composite auto``: AttnLRP for a model with attention) work."""
    script = (
        "import sys, funcattr\n"
        "from funcattr.demo.vit import load_demo_vit\n"
        "assert 'funcattr.transformers' not in sys.modules\n"
        "assert {'attn_lrp', 'cp_lrp'} <= set(funcattr.COMPOSITES), list(funcattr.COMPOSITES)\n"
        "fn, _ = funcattr.functionalize(load_demo_vit(), 'cp_lrp')\n"
        "assert fn.form == 'gradient_x_input'\n"
        "from click.testing import CliRunner\n"
        "from funcattr.cli import main\n"
        "result = CliRunner().invoke(main, ['list', 'composites'])\n"
        "assert 'attn_lrp' in result.output and 'cp_lrp' in result.output, result.output\n"
        "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=ROOT, timeout=300, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# --------------------------------------------------------------------------------------------
# The mask localisation figures of docs/transformers.md
# --------------------------------------------------------------------------------------------

def _figures() -> list[tuple[str, float, float]]:
    """The rows of docs/transformers.md's table: (what was run, in mask, within 2 px)."""
    text = (ROOT / "docs" / "transformers.md").read_text(encoding="utf-8")
    table = re.search(r"^ *\| explained by \| in mask \| within 2 px \|\n *\|---[^\n]*\n"
                      r"((?: *\|[^\n]*\n)+)", text, re.M)
    assert table is not None, "docs/transformers.md lost its table of mask figures"
    return [(what, float(inside), float(near)) for what, inside, near in
            re.findall(r"^ *\| `([^`]+)`[^|]*\| ([\d.]+) \| ([\d.]+) \|$", table.group(1), re.M)]


FIGURES = _figures()
#: The Python rows: the ViT explained by these composites (as the CLI does: BatchNorm merged,
#: the predicted class, relevance summed over the colour channels).
PYTHON_ROWS = {"AttnLRP(conv_gamma=0.25)": AttnLRP(conv_gamma=0.25),
               "AttnLRP(conv_gamma=1.0)": AttnLRP(conv_gamma=1.0)}


def test_the_table_has_the_cnn_beside_the_vit() -> None:
    rows = [what for what, _, _ in FIGURES]
    assert rows[0] == "funcattr explain --model demo"
    assert "funcattr explain --model demo-vit" in rows
    assert set(PYTHON_ROWS) <= set(rows)


def _python_fractions(composite) -> tuple[float, float]:
    images, _, masks, _ = load_demo_samples()
    model = load_demo_vit()
    fn, params = funcattr.functionalize(model, composite, SequentialMergeBatchNorm())
    with torch.no_grad():
        predicted = model(images).argmax(1)
    _, relevance = funcattr.relevance(fn, params, images, funcattr.one_hot(predicted))
    summed = relevance.sum(1).detach().numpy()
    inside = [positive_fraction_in_mask(r, m) for r, m in zip(summed, masks.numpy(), strict=True)]
    near = [positive_fraction_in_mask(r, m, dilate=NEAR_MASK_PIXELS)
            for r, m in zip(summed, masks.numpy(), strict=True)]
    return float(np.mean(inside)), float(np.mean(near))


@pytest.mark.parametrize(("what", "inside", "near"), FIGURES, ids=[w for w, _, _ in FIGURES])
def test_documented_figures_are_what_runs(what: str, inside: float, near: float,
                                          tmp_path) -> None:
    if what in PYTHON_ROWS:
        measured = _python_fractions(PYTHON_ROWS[what])
    else:
        command = what.split()
        assert command[:2] == ["funcattr", "explain"], what
        out = tmp_path / "out"
        result = CliRunner().invoke(main, [*command[1:], "-o", str(out), "-q",
                                           "--relevance-format", "none"])
        assert result.exit_code == 0, result.output
        summary = json.loads((out / "summary.json").read_text())
        measured = summary["mean_fraction_in_mask"], summary["mean_fraction_near_mask"]
    assert (round(measured[0], 3), round(measured[1], 3)) == (inside, near)


def test_the_python_figures_are_the_clis() -> None:
    """The helper above computes what ``funcattr explain`` computes (checked on AttnLRP and
    CP-LRP, whose CLI rows the table has)."""
    by_row = {what: (inside, near) for what, inside, near in FIGURES}
    for composite, row in ((AttnLRP(), "funcattr explain --model demo-vit"),
                           (CPLRP(), "funcattr explain --model demo-vit --composite cp_lrp")):
        inside, near = _python_fractions(composite)
        assert (round(inside, 3), round(near, 3)) == by_row[row]
