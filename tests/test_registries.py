"""The attributor and metric registries: one spec adds an attributor (library, ``funcattr
explain``, ``funcattr evaluate``, ``funcattr list``) or a metric (``evaluate`` and ``funcattr
evaluate``); old command-line names work with a note."""

from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import funcattr
import funcattr.metrics as fm
from funcattr.attribution import (
    ATTRIBUTORS,
    AttributorOption,
    AttributorSpec,
    get_attributor,
    gradient,
    register_attributor,
)
from funcattr.cli import main
from funcattr.cli.evaluate import parse_methods, parse_metrics, parse_options
from funcattr.demo import load_demo_model
from funcattr.metrics.registry import METRIC_SPECS, MetricSpec, metric_keywords


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def sample_file() -> Path:
    folder = Path(str(resources.files("funcattr.demo") / "samples"))
    return sorted(p for p in folder.glob("*.png") if not p.stem.endswith("_mask"))[0]


def scaled_gradient(fn, params, input, attr_output_fn=None, *, n_iter=20, chunk_size=None):
    """A test attributor: the gradient times ``n_iter``."""
    output, grad = gradient(fn, params, input, attr_output_fn)
    return output, grad * n_iter


@pytest.fixture
def extra_attributor():
    spec = register_attributor(AttributorSpec(
        name="scaled_gradient", function=scaled_gradient, chunked=True,
        summary="the gradient times --n-iter (a test attributor)",
        options=(AttributorOption("n_iter", "count", 20, "the factor."),),
    ))
    yield spec
    del ATTRIBUTORS[spec.name]


@pytest.fixture
def extra_metric():
    def mean_attribution(attribution):
        return attribution.flatten(1).mean(dim=1)

    spec = fm.register_metric(MetricSpec(
        name="mean_attribution", function=mean_attribution, columns={"mean_attribution": True},
        run=lambda case: mean_attribution(case.attribution),
    ))
    yield spec
    del METRIC_SPECS[spec.name]


def test_one_spec_adds_an_attributor_to_the_command_line(extra_attributor, tmp_path):
    file = sample_file()
    result = invoke("list", "attributors")
    assert "scaled_gradient" in result.stdout and "a test attributor" in result.stdout
    out = tmp_path / "out"
    result = invoke("explain", file, "-a", "scaled_gradient", "--n-iter", "3", "-o", out,
                    "--composite", "none", "--canonizer", "none")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["attributor"] == "scaled_gradient"
    assert summary["settings"]["n_iter"] == 3
    relevance = np.load(out / "relevance.npz")["relevance"][0, 0]
    model = load_demo_model(dtype=torch.float32)
    image, _ = funcattr.cli.samples.load_sample(funcattr.cli.samples.collect_samples([file])[0],
                                                64, 64)
    fn, params = funcattr.functionalize(model)
    predicted = model(image[None]).argmax(dim=1)
    _, expected = gradient(fn, params, image[None], funcattr.one_hot(predicted))
    np.testing.assert_allclose(relevance, 3 * expected[0].numpy(), rtol=1e-4, atol=1e-7)
    # an option the attributor does not declare is refused, naming its users
    result = invoke("explain", file, "-a", "scaled_gradient", "--noise-level", "0.2",
                    "-o", tmp_path / "other")
    assert result.exit_code != 0
    assert "--noise-level applies to --attributor smooth_grad, not scaled_gradient" in (
        result.output)
    # funcattr evaluate takes it too
    assert [m.spec for m in parse_methods(("scaled_gradient:epsilon_plus",), ())] == [
        extra_attributor]


def test_one_spec_adds_a_metric(extra_metric, tmp_path):
    assert "mean_attribution" in fm.METRICS and "mean_attribution" not in fm.DEFAULT_METRICS
    assert parse_metrics(("all",))[0][-1] == "mean_attribution"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    x = torch.rand(2, 3, 2, 2)
    explain = fm.explainer(model)
    table = fm.evaluate(model, x, [0, 1], None, {"gradient": explain}, ["mean_attribution"])
    torch.testing.assert_close(table.values["gradient"]["mean_attribution"],
                               explain(x, torch.tensor([0, 1])).flatten(1).mean(dim=1))
    assert table.higher_is_better == {"mean_attribution": True}
    result = invoke("evaluate", "-n", "1", "-a", "gradient", "-M", "mean_attribution",
                    "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    with open(tmp_path / "out" / "table.csv", newline="") as file:
        assert list(next(csv.DictReader(file))) == ["attributor", "mean_attribution"]


def test_metric_keywords_come_from_the_registry():
    assert metric_keywords("pixel_flipping") == ["patch_size", "regions_per_step", "n_steps",
                                                 "fill", "orders", "softmax"]
    assert metric_keywords("region_perturbation")[0] == "patch_size"  # own, then pixel_flipping
    assert "radius" in metric_keywords("max_sensitivity")  # from sensitivities
    assert parse_options(("region_perturbation.n_steps=4",), ("region_perturbation",)) == {
        "region_perturbation": {"n_steps": 4}}


def test_registry_errors():
    with pytest.raises(ValueError, match=r"register_attributor\(spec=AttributorSpec\(name="
                                         r"'gradient'\)\): expected new names, got \['gradient'\], "
                                         r"already registered\. Choose another name\.$"):
        register_attributor(AttributorSpec(name="gradient", function=gradient, summary="again"))
    with pytest.raises(ValueError, match=r"expected new names, got \['smoothgrad'\]"):
        register_attributor(AttributorSpec(name="new", function=gradient, summary="x",
                                           aliases=("smoothgrad",)))
    with pytest.raises(TypeError, match=r"register_attributor\(spec=dict\): expected an "
                                        r"AttributorSpec, got dict\. Pass AttributorSpec"):
        register_attributor({})
    with pytest.raises(ValueError, match=r"AttributorSpec\(name='bad'\): expected its function to "
                                         r"take the keywords \['n_iter'\].*Declare only the "
                                         r"function's own options\.$"):
        AttributorSpec(name="bad", function=gradient, summary="x",
                       options=(AttributorOption("n_iter", "count", 1, "n"),))
    with pytest.raises(ValueError, match=r"AttributorOption\(kind='many'\): expected one of "
                                         r"\['count', 'level', 'size'\].*Pick the kind"):
        AttributorOption("n_iter", "many", 1, "n")
    with pytest.raises(ValueError, match=r"get_attributor\(name='lime'\): expected one of "
                                         r"\['gradient'.*Pass a registered name\.$"):
        get_attributor("lime")
    with pytest.raises(ValueError, match=r"register_metric\(spec=MetricSpec\(name='infidelity'\)\)"
                                         r": expected a new name and new columns, got "
                                         r"\['infidelity'\].*Choose other names\.$"):
        fm.register_metric(MetricSpec(name="infidelity", function=fm.infidelity,
                                      columns={"x": True}, run=print))
    with pytest.raises(TypeError, match=r"register_metric\(spec=str\): expected a MetricSpec"):
        fm.register_metric("infidelity")


def test_attributor_names_equal_the_library_functions():
    for name, spec in ATTRIBUTORS.items():
        if name != "inputxgrad":  # no library function of its own (IG with one point)
            assert spec.function.__name__ == name
            assert getattr(funcattr.attribution, name) is spec.function
    assert get_attributor("smoothgrad") == (ATTRIBUTORS["smooth_grad"], True)
    assert get_attributor("integrads") == (ATTRIBUTORS["integrated_gradients"], True)


def test_old_cli_names_work_with_a_note(tmp_path):
    file = sample_file()
    runs = {}
    for name in ("smoothgrad", "smooth_grad"):
        out = tmp_path / name
        result = invoke("explain", file, "-a", name, "--n-iter", "3", "-o", out)
        assert result.exit_code == 0, result.output
        runs[name] = (result, np.load(out / "relevance.npz")["relevance"])
    note = ("note: --attributor smoothgrad is deprecated; use smooth_grad (the name of "
            "funcattr.attribution.smooth_grad).")
    assert runs["smoothgrad"][0].stderr.strip() == note
    assert runs["smooth_grad"][0].stderr == ""
    np.testing.assert_array_equal(runs["smoothgrad"][1], runs["smooth_grad"][1])
    result = invoke("evaluate", "-n", "1", "-a", "integrads", "-M", "pointing_game",
                    "--n-iter", "2", "-o", tmp_path / "evaluate", "-q")
    assert result.exit_code == 0, result.output
    assert "note: --attributor integrads is deprecated; use integrated_gradients" in (
        result.stderr)
