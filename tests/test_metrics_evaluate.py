"""``evaluate``: the table agrees with direct metric calls; CSV, Markdown and plot output."""

import csv

import pytest
import torch
from torch import nn

from funcattr.metrics import (
    METRICS,
    EvaluationTable,
    evaluate,
    explainer,
    max_sensitivity,
    pixel_flipping,
    plot_pixel_flipping,
    relevance_mass_accuracy,
    write_table,
)


@pytest.fixture
def setting():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 16, 3)).eval()
    images = torch.rand(4, 3, 8, 8)
    labels = torch.tensor([0, 1, 2, 1])
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 1:5] = True
    attributors = {"gradient": explainer(model),
                   "lrp": explainer(model, "epsilon_plus_flat", times_output=True)}
    return model, images, labels, masks, attributors


def test_evaluate_all_metrics_agrees_with_direct_calls(setting):
    model, images, labels, masks, attributors = setting
    light = {"sensitivity_n": {"ns": [1, 4], "n_subsets": 4}, "infidelity": {"n_samples": 4},
             "avg_sensitivity": {"n_samples": 2}}
    table = evaluate(model, images, labels, masks, attributors, list(METRICS), seed=3,
                     chunk_size=16, options={"pixel_flipping": {"regions_per_step": 4}, **light})
    assert table.attributors == ("gradient", "lrp")
    assert table.columns == tuple(c for m in METRICS for c in METRICS[m])
    for name in table.attributors:
        for column in table.columns:
            assert table.values[name][column].shape == (4,)
    lrp = attributors["lrp"]
    attribution = lrp(images, labels)
    curves = pixel_flipping(model, images, labels, attribution, regions_per_step=4, generator=3)
    torch.testing.assert_close(table.values["lrp"]["pixel_flipping_difference"],
                               curves.difference)
    torch.testing.assert_close(table.values["lrp"]["max_sensitivity"],
                               max_sensitivity(lrp, images, labels, n_samples=10, radius=0.1,
                                               generator=3))
    torch.testing.assert_close(table.values["gradient"]["relevance_mass_accuracy"],
                               relevance_mass_accuracy(attributors["gradient"](images, labels),
                                                       masks))
    assert table.mean("lrp", "pointing_game") == pytest.approx(
        float(table.values["lrp"]["pointing_game"].mean()))
    assert table.higher_is_better["pixel_flipping_morf_auc"] is False
    assert set(table.curves) == {"pixel_flipping", "region_perturbation"}
    # seeded: the same table again
    again = evaluate(model, images, labels, masks, attributors, ["random_logit"], seed=3)
    torch.testing.assert_close(again.values["lrp"]["random_logit"],
                               table.values["lrp"]["random_logit"])


def test_write_table_and_plot(setting, tmp_path):
    model, images, labels, masks, attributors = setting
    table = evaluate(model, images, labels, masks, attributors, chunk_size=None)
    assert isinstance(table, EvaluationTable)
    path_csv, path_md, path_png = tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "pf.png"
    write_table(table, path_csv, path_md)
    with open(path_csv, newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["attributor"] for row in rows] == ["gradient", "lrp"]
    assert list(rows[0])[1:] == list(table.columns)
    assert float(rows[1]["pointing_game"]) == pytest.approx(table.mean("lrp", "pointing_game"))
    text = path_md.read_text()
    assert text.startswith("| attributor | pixel_flipping_morf_auc ↓ |")
    assert text.count("\n") == 4 and str(table) == text
    plot_pixel_flipping(table, path_png, title="demo")
    assert path_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_pixel_flipping(table.curves["region_perturbation"], tmp_path / "rp.png")
    assert (tmp_path / "rp.png").stat().st_size > 1000


def test_evaluate_with_pure_fn(setting):
    model, images, labels, _, _ = setting
    import funcattr

    fn, params = funcattr.functionalize(model)
    table = evaluate(fn, images, labels, None, {"g": explainer(fn, params=params)},
                     ["pixel_flipping", "completeness"], params=params)
    assert table.columns[-1] == "completeness_abs_residual"


def test_evaluate_errors(setting, tmp_path):
    model, images, labels, masks, attributors = setting
    with pytest.raises(ValueError, match=r"evaluate\(metrics=\['faithfulness'\]\): expected "
                                         r"names from"):
        evaluate(model, images, labels, masks, attributors, ["faithfulness"])
    with pytest.raises(ValueError, match=r"evaluate\(masks=None\): the localisation metrics "
                                         r"\['pointing_game'\] need ground-truth masks"):
        evaluate(model, images, labels, None, attributors, ["pointing_game"])
    with pytest.raises(ValueError, match=r"evaluate\(options=\{'infidelity': \.\.\.\}\): "
                                         r"expected options for the requested metrics"):
        evaluate(model, images, labels, masks, attributors, ["pointing_game"],
                 options={"infidelity": {}})
    with pytest.raises(TypeError, match=r"evaluate\(attributors=dict\): expected a non-empty"):
        evaluate(model, images, labels, masks, {})
    with pytest.raises(TypeError, match=r"evaluate\(attributors\['x'\]=3\): expected a callable"):
        evaluate(model, images, labels, masks, {"x": 3})
    with pytest.raises(TypeError, match=r"evaluate\(seed='a'\): expected an int"):
        evaluate(model, images, labels, masks, attributors, seed="a")
    with pytest.raises(ValueError, match=r"evaluate\(target=tensor of shape \(2,\)\)"):
        evaluate(model, images, labels[:2], masks, attributors)
    with pytest.raises(ValueError, match=r"pointing_game\(masks=tensor of shape \(4, 4, 4\)\)"):
        evaluate(model, images, labels, masks[:, :4, :4], attributors, ["pointing_game"])
    with pytest.raises(TypeError, match=r"write_table\(table=dict\): expected the "
                                        r"EvaluationTable"):
        write_table({}, tmp_path / "a.csv")
    table = evaluate(model, images, labels, masks, attributors, ["pointing_game"])
    with pytest.raises(ValueError, match=r"write_table\(path_csv=None, path_md=None\)"):
        write_table(table)
    with pytest.raises(ValueError, match=r"plot_pixel_flipping\(metric='pixel_flipping'\): the "
                                         r"table has no curves"):
        plot_pixel_flipping(table, tmp_path / "x.png")
    with pytest.raises(TypeError, match=r"plot_pixel_flipping\(curves=\.\.\.\): expected an "
                                        r"EvaluationTable"):
        plot_pixel_flipping({"a": 1}, tmp_path / "x.png")
