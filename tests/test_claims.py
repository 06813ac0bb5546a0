"""bench/claims.py (the paper's claims as experiments) and bench/paper_recipe.py: the harness on
tiny synthetic data in the default suite; every claim's --quick run on real photos in the slow one."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import claims  # noqa: E402
import paper_recipe  # noqa: E402

TINY = claims.RunSettings(steps=2, batch_size=8, window=2)


@pytest.fixture(scope="module")
def tiny_data() -> claims.Data:
    return claims.synthetic_data(classes=4, train_per_class=4, val_per_class=2)


def test_every_variant_builds_and_differs_only_in_its_factor():
    for claim in claims.CLAIMS.values():
        for name, v in claim.variants.items():
            net = claims.SmallAlexNet(v.spec, 10, 28)
            assert net(torch.zeros(2, 3, 28, 28)).shape == (2, 10), (claim.key, name)
    towers = claims.CLAIMS["towers"].variants
    two = claims.SmallAlexNet(towers["two towers"].spec, 10, 28)
    one = claims.SmallAlexNet(towers["one tower, half width"].spec, 10, 28)
    convs2 = [m for m in two.features if isinstance(m, torch.nn.Conv2d)]
    convs1 = [m for m in one.features if isinstance(m, torch.nn.Conv2d)]
    assert [m.groups for m in convs2] == [1, 2, 1, 2, 2] and all(m.groups == 1 for m in convs1)
    assert [m.out_channels for m in convs1] == [m.out_channels // 2 for m in convs2]
    pools = [m for m in claims.SmallAlexNet(claims.CLAIMS["pool"].variants["2/2"].spec, 10, 28).features
             if isinstance(m, torch.nn.MaxPool2d)]
    assert {(p.kernel_size, p.stride) for p in pools} == {(2, 2)}
    depth = claims.SmallAlexNet(claims.CLAIMS["depth"].variants["without conv4"].spec, 10, 28)
    assert [m.layer_name for m in depth.features if isinstance(m, torch.nn.Conv2d)] == ["conv1", "conv2", "conv3", "conv5"]
    relu = claims.CLAIMS["relu"].variants
    assert relu["relu"].spec == dataclasses.replace(relu["tanh"].spec, act="relu")


def test_colourfulness_separates_grey_from_colour_kernels():
    grey = torch.randn(4, 1, 5, 5).expand(4, 3, 5, 5)
    colour = torch.zeros(4, 3, 5, 5)
    colour[:, 0] = torch.randn(4, 5, 5)  # red only
    assert torch.allclose(claims.colourfulness(grey), torch.zeros(4), atol=1e-6)
    c = claims.colourfulness(colour)
    assert torch.all(c > 0.6) and torch.all(c <= 1.0 + 1e-6)


def test_steps_to_and_mean_std():
    assert claims.steps_to([0.9, 0.5, 0.2, 0.3], 0.25) == 3
    assert claims.steps_to([0.9, 0.5], 0.25) is None
    mean, std, n = claims.mean_std([1.0, 3.0, None])
    assert (mean, n) == (2.0, 2) and std == pytest.approx(math.sqrt(2))
    assert claims.mean_std([None]) == (None, None, 0)
    assert "1/2 seeds reached" in claims._fmt(claims.mean_std([10, None]), "steps_to_target", 2)
    assert claims._fmt((0.25, 0.01, 3), "val_error", 3) == "25.0 ± 1.0%"


def test_run_claim_per_seed_figures_and_ensemble(tiny_data):
    res = claims.run_claim(claims.CLAIMS["testtime"], tiny_data, TINY, seeds=[0, 1])
    one = res["variants"]["1 CNN"]
    assert len(one["per_seed"]) == 2 and len(one["curves"][0]) == TINY.steps
    errs = [p["val_error"] for p in one["per_seed"]]
    assert one["summary"]["val_error"][0] == pytest.approx(sum(errs) / 2)
    ens = res["variants"]["2 CNNs (ensemble)"]
    assert ens["members"] == 2 and set(ens["summary"]) == {"val_error", "val_error_10crop"}
    table = claims.results_table(res)
    assert "| 1 CNN | " in table and "| 2 CNNs (ensemble) | " in table
    assert "40.7% / 18.2% (paper)" in table and "38.1% / 16.4% (5 CNNs) (paper)" in table
    # the same seed gives the same run: the experiments are repeatable
    again = claims.train_run(claims.BASE, tiny_data, TINY, 0)
    assert again.val_error == errs[0] and again.train_error_curve == one["curves"][0]
    members = [again, claims.train_run(claims.BASE, tiny_data, TINY, 1)]
    assert {m: ens["summary"][m][0] for m in ens["summary"]} == claims.ensemble_errors(members, tiny_data.val_y)


def test_ensemble_averages_softmax_per_view():
    def member(centre, ten):
        return claims.RunResult([], None, 0, 0, 0, torch.tensor(centre), torch.tensor(ten))

    # two images of class 0 and 1; alone each member gets one wrong, averaged they get both right
    a = member([[0.9, 0.1], [0.6, 0.4]], [[0.2, 0.8], [0.2, 0.8]])
    b = member([[0.4, 0.6], [0.1, 0.9]], [[0.3, 0.7], [0.4, 0.6]])
    errs = claims.ensemble_errors([a, b], torch.tensor([0, 1]))
    assert errs == {"val_error": 0.0, "val_error_10crop": 0.5}


def test_fastest_rate_prefers_more_seeds_reaching_then_fewer_steps():
    def v(name, lr, steps):
        return {"variant": name, "lr": lr, "summary": {"steps_to_target": claims.mean_std(steps)}}

    variants = {"a1": v("a", 0.1, [50, None]), "a2": v("a", 0.01, [80, 90]), "a3": v("a", 0.001, [None, None]),
                "b1": v("b", 0.1, [None, None]), "b2": v("b", 0.01, [400, 200]), "c": v("c", 0.1, [None, None])}
    best = claims.fastest_rates(variants)
    assert best["a"]["lr"] == 0.01 and best["a"]["steps"] == 85  # both seeds beat one seed at 50
    assert best["b"]["lr"] == 0.01 and best["b"]["steps"] == 300 and best["b"]["reached"] == 2
    assert best["c"]["lr"] is None
    text = claims.fastest_text({"title": "t", "fastest": {"a": best["a"], "b": best["b"]}}, 2)
    assert "lr 0.01, 85.0 ± 7.1 steps" in text and "ratio b / a: 3.53" in text


def test_common_level_is_the_lowest_every_variant_reaches():
    fast = {"curves": [[0.9, 0.5, 0.3, 0.2], [0.9, 0.7, 0.3, 0.2]]}  # mean 0.9, 0.6, 0.3, 0.2
    slow = {"curves": [[0.9, 0.8, 0.7, 0.4], [0.9, 0.8, 0.5, 0.4]]}  # mean 0.9, 0.8, 0.6, 0.4
    common = claims.common_level({"fast": fast, "slow": slow})
    assert common["level"] == pytest.approx(0.4) and common["steps"] == {"fast": 3, "slow": 4}
    text = claims.common_level_text({"title": "t", "common_level": common})
    assert "reaches 40.0%" in text and "fast 3, slow 4" in text and "ratio fast / slow: 0.75" in text


def test_several_learning_rates_run_every_variant_at_each(tiny_data):
    settings = dataclasses.replace(TINY, target_error=0.99)  # reached at once: every rate has a step count
    res = claims.run_claim(claims.CLAIMS["relu"], tiny_data, settings, seeds=[0], lrs=[0.05, 1e-6])
    assert list(res["variants"]) == ["relu, lr 0.05", "relu, lr 1e-06", "tanh, lr 0.05", "tanh, lr 1e-06"]
    fast, slow = res["variants"]["relu, lr 0.05"], res["variants"]["relu, lr 1e-06"]
    assert fast["lr"] == 0.05 and fast["variant"] == "relu"
    assert fast["curves"] != slow["curves"]  # the rate reached the optimiser: same seed, different run
    assert set(res["fastest"]) == {"relu", "tanh"}
    one = claims.run_claim(claims.CLAIMS["relu"], tiny_data, settings, seeds=[0])
    assert list(one["variants"]) == ["relu", "tanh"] and "fastest" not in one
    assert one["variants"]["relu"]["curves"] == claims.run_claim(
        claims.CLAIMS["relu"], tiny_data, dataclasses.replace(settings, lr=0.01), seeds=[0], lrs=[0.01])["variants"]["relu"]["curves"]
    assert claims.parse_args(["--lr", "0.001,0.01"]).lr == [0.001, 0.01]
    for bad in ("0.01,x", "0", "-1", "nan"):
        with pytest.raises(SystemExit):
            claims.parse_args(["--lr", bad])


def test_main_writes_table_results_and_plots(tmp_path):
    out = tmp_path / "claims"
    claims.main(["relu", "towers", "--data", "synthetic", "--train-per-class", "4", "--val-per-class", "2",
                 "--steps", "2", "--seeds", "2", "--batch-size", "8", "--out", str(out)])
    assert (out / "relu.png").stat().st_size > 0 and (out / "towers.png").stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    assert [c["claim"] for c in results["claims"]] == ["relu", "towers"] and results["meta"]["seeds"] == [0, 1]
    towers = results["claims"][1]["variants"]["two towers"]
    assert all(len(c) == 2 for c in towers["colour_towers"])  # conv1's kernels per tower
    md = (out / "claims.md").read_text()
    assert "ReLU vs tanh" in md and "~6x" in md and "colourfulness" in md


def test_combine_rebuilds_one_table_from_runs_at_different_rates(tmp_path):
    common = ["relu", "--data", "synthetic", "--train-per-class", "4", "--val-per-class", "2",
              "--steps", "2", "--seeds", "2", "--batch-size", "8", "--target-error", "0.99"]
    for lr in ("0.05", "0.001"):
        claims.main([*common, "--lr", lr, "--out", str(tmp_path / lr)])
    single = json.loads((tmp_path / "0.05" / "results.json").read_text())["claims"][0]
    combined = claims.main(["--combine", str(tmp_path / "0.05"), str(tmp_path / "0.001"), "--out", str(tmp_path / "all")])
    res = combined[0]
    assert list(res["variants"]) == ["relu, lr 0.05", "tanh, lr 0.05", "relu, lr 0.001", "tanh, lr 0.001"]
    assert res["variants"]["relu, lr 0.05"]["curves"] == single["variants"]["relu"]["curves"]
    assert set(res["fastest"]) == {"relu", "tanh"} and res["common_level"]["steps"]
    md = (tmp_path / "all" / "claims.md").read_text()
    assert md.count("`python bench/claims.py relu") == 2 and "Fastest learning rate" in md
    assert (tmp_path / "all" / "relu.png").stat().st_size > 0
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{not json")
    with pytest.raises(SystemExit, match=r"not a results\.json"):
        claims.main(["--combine", str(tmp_path / "bad"), "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="more than one run"):
        claims.main(["--combine", str(tmp_path / "0.05"), str(tmp_path / "0.05"), "--out", str(tmp_path / "x")])


def test_paper_recipe_verdict():
    v = paper_recipe.verdict([2.3] * 5 + [1.5] * 10, 0.5, classes=10, n_val=500)
    assert v["learned"] and v["chance_loss"] == pytest.approx(math.log(10))
    stuck = paper_recipe.verdict([2.3] * 15, 0.1, classes=10, n_val=500)
    assert not stuck["learned"] and not stuck["loss_below_chance"] and not stuck["val_above_chance"]
    lucky = paper_recipe.verdict([1.0] * 15, 0.12, classes=10, n_val=500)  # 12% is within noise of 10%
    assert not lucky["val_above_chance"]


def test_init_bias_changes_only_the_papers_ones_and_the_preset_uses_caffes():
    from alexnet import models
    from alexnet.training.config import preset

    net = models.create_model("alexnet", num_classes=4, init_bias=0.1)
    for name in ("conv2", "conv4", "conv5", "fc6", "fc7"):
        assert torch.all(getattr(net, name).bias == 0.1), name
    assert torch.all(net.conv1.bias == 0) and torch.all(net.conv3.bias == 0) and torch.all(net.fc8.bias == 0)
    paper = models.create_model("alexnet", num_classes=4)  # the model itself stays the paper's
    assert torch.all(paper.fc7.bias == 1) and torch.all(paper.conv3.bias == 0)
    split = models.create_model("alexnet", num_classes=4, devices=["cpu", "cpu"], init_bias=0.1)
    assert torch.all(split.a.fc7.bias == 0.1) and torch.all(split.b.conv2.bias == 0.1)
    assert preset("imagenet-paper").model_options == {"init_bias": 0.1}
    args = paper_recipe.parse_args(["--init-bias", "1"])
    assert paper_recipe.model_options(args) == {"init_bias": 1.0}
    assert paper_recipe.model_options(paper_recipe.parse_args([])) == {"init_bias": 0.1}


DATA = paper_recipe.default_data()


@pytest.mark.slow
@pytest.mark.skipif(DATA is None, reason="no CIFAR-10 folder (../shared/data)")
@pytest.mark.parametrize("claim", list(claims.CLAIMS))
def test_quick_claim_on_real_photos(claim, tmp_path):
    res = claims.main([claim, "--quick", "--out", str(tmp_path)])
    assert res[0]["claim"] == claim and (tmp_path / f"{claim}.png").is_file()


@pytest.mark.slow
@pytest.mark.skipif(DATA is None, reason="no CIFAR-10 folder (../shared/data)")
def test_paper_recipe_quick(tmp_path):
    r = paper_recipe.main(["--quick", "--json", str(tmp_path / "r.json")])
    assert r["steps"] == 3 and len(r["loss_per_step"]) == 3 and r["settings"]["quick"]


@pytest.mark.slow
@pytest.mark.skipif(DATA is None, reason="no CIFAR-10 folder (../shared/data)")
def test_paper_recipe_diagnose_runs_every_suspect():
    train_set, _ = paper_recipe.load_subset(DATA, classes=2, train_per_class=4, val_per_class=1)
    found = paper_recipe.diagnose(train_set, steps=1, batch_size=4)
    assert list(found) == list(paper_recipe.SUSPECTS)
    assert found["channel norm (unit-scale input)"]["steps"][0]["input_std"] < 2 < found["paper"]["steps"][0]["input_std"]
