"""Training configuration and learning-rate schedules: presets, files, overrides, refusals."""

from __future__ import annotations

import itertools
import math

import pytest

from alexnet.cli import main
from alexnet.training.config import (
    PRESETS,
    ConfigError,
    TrainConfig,
    from_dict,
    parse_override,
    preset,
    resolve,
)
from alexnet.training.schedules import LRSchedule


def test_defaults_are_the_papers_recipe():
    cfg = TrainConfig()
    assert (cfg.model, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == ("alexnet", 128, 0.01, 0.9, 5e-4)
    assert (cfg.schedule, cfg.plateau_factor, cfg.plateau_max_reductions, cfg.epochs) == ("plateau", 0.1, 3, 90)
    assert cfg.label_smoothing == 0.0 and cfg.norm_mode == "image" and cfg.lighting == 0.1


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid(name):
    cfg = preset(name).validate()
    assert cfg.preset == name


@pytest.mark.reliability
def test_unknown_key_is_refused_by_name():
    with pytest.raises(ConfigError, match="'learning_rate'"):
        from_dict({"learning_rate": 0.1})


@pytest.mark.reliability
@pytest.mark.parametrize(
    "key,value",
    [("epochs", "ten"), ("epochs", 2.5), ("lr", "fast"), ("deterministic", "yes"), ("split_devices", 3),
     ("model_options", [1, 2]), ("crop", True)],
)
def test_wrong_type_is_refused_by_name(key, value):
    with pytest.raises(ConfigError, match=repr(key)):
        from_dict({key: value})


@pytest.mark.reliability
def test_bad_values_are_refused_by_name():
    with pytest.raises(ConfigError, match="'schedule'"):
        from_dict({"schedule": "exponential"}).validate()
    with pytest.raises(ConfigError, match="'batch_size'"):
        from_dict({"batch_size": 0}).validate()


def test_precedence_preset_file_overrides(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "cifar10"\nepochs = 7\nlr = 0.2\n[model_options]\nwidth = 0.5\n')
    cfg = resolve(file=toml, overrides={"lr": 0.3})
    assert cfg.preset == "cifar10" and cfg.model == "alexnet_fast"  # from the preset
    assert cfg.epochs == 7 and cfg.model_options == {"width": 0.5}  # from the file
    assert cfg.lr == 0.3  # the command line wins
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("epochs: 3\nschedule: cosine\nwarmup_epochs: 1\n")
    cfg = resolve("imagenet-paper", yaml_file)
    assert (cfg.epochs, cfg.schedule, cfg.warmup_epochs, cfg.model) == (3, "cosine", 1.0, "alexnet")


def test_documented_order_preset_file_flags_set(tmp_path):
    """preset < file < flags < --set, as `alexnet train --help` says."""
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "cifar10"\nepochs = 7\nlr = 0.2\nbatch_size = 16\nseed = 5\n')
    flags = {"epochs": 1, "batch_size": 32, "lr": None}  # None: a flag not given
    sets = dict(parse_override(s) for s in ["epochs=2", "crop=", "schedule=cosine"])
    cfg = resolve(None, toml, flags, sets=sets)
    assert cfg.epochs == 2  # --set beats the flag
    assert cfg.batch_size == 32  # the flag beats the file
    assert cfg.lr == 0.2 and cfg.seed == 5  # the file beats the preset; an absent flag changes nothing
    assert cfg.crop is None  # an empty --set value is null, not "not given"
    assert cfg.schedule == "cosine" and cfg.model == "alexnet_fast" and cfg.preset == "cifar10"
    # the preset: --set preset beats --preset beats the file's beats the default
    assert resolve("demo", toml, sets={"preset": "imagenet-paper"}).preset == "imagenet-paper"
    assert resolve("demo", toml).preset == "demo"
    assert resolve(None, None, default_preset="demo").preset == "demo"


def test_default_preset_may_depend_on_the_data_the_layers_settle_on(tmp_path):
    seen = []

    def pick(data):
        seen.append(data)
        return "cifar10" if data == "cifar" else "demo"

    toml = tmp_path / "run.toml"
    toml.write_text('data = "from-file"\n')
    assert resolve(None, toml, {"data": "flag"}, default_preset=pick, sets={"data": "cifar"}).preset == "cifar10"
    assert resolve(None, toml, {"data": None}, default_preset=pick).data == "from-file"
    assert seen == ["cifar", "from-file"]
    assert resolve("imagenet-paper", toml, default_preset=pick).preset == "imagenet-paper"
    assert len(seen) == 2  # not asked when a preset is named


@pytest.mark.parametrize("text", ["lr: 1e-3\n", "lr: 1E-3\n", "lr = 1e-3\n", '{"lr": 1e-3}'])
def test_exponent_floats_read_as_numbers_in_files(tmp_path, text):
    suffix = ".yaml" if ":" in text and "{" not in text else ".json" if "{" in text else ".toml"
    path = tmp_path / f"run{suffix}"
    path.write_text(text)
    assert resolve("demo", path).lr == 1e-3


@pytest.mark.parametrize(("item", "stored"), [("lr=1e-3", 1e-3), ("weight-decay=5e-4", 5e-4), ("max_steps=1e3", 1000)])
def test_exponent_floats_read_as_numbers_in_overrides(item, stored):
    key, value = parse_override(item)
    assert getattr(resolve("demo", sets={key: value}), key) == stored


@pytest.mark.reliability
@pytest.mark.parametrize(("item", "key"), [("lr=1e-3x", "lr"), ("seed=1e20", "seed"), ("epochs=[1, 2", "epochs"),
                                           ("lr=.nan", "lr"), ("model_options=[&a [1], *a]", "model_options")])
def test_cli_refuses_bad_override_by_key(item, key, capsys):
    assert main(["train", "--set", item]) == 2
    assert f"config key '{key}'" in capsys.readouterr().err


@pytest.mark.reliability
def test_cli_refuses_bad_config_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = 2\nmomentun = 0.9\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert "'momentun'" in capsys.readouterr().err
    bad.write_text('epochs = "many"\n')
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert "'epochs'" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("epochs: [1, 2\n")
    assert main(["train", "--config", str(broken)]) == 2
    assert "not valid" in capsys.readouterr().err
    assert main(["train", "--set", "nonsense=1"]) == 2
    assert "'nonsense'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- schedules


def _sched(steps_per_epoch=10, **kw):
    return LRSchedule(from_dict({"epochs": 10, "lr": 0.01, **kw}), steps_per_epoch)


def test_plateau_divides_by_ten_three_times():
    s = _sched(schedule="plateau", plateau_patience=1)
    assert s.lr(0) == pytest.approx(0.01)
    fired = [s.epoch_end(e) for e in (0.9, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7)]
    assert fired == [False, False, True, False, True, True, False, False, False]  # never a 4th time
    assert s.reductions == 3 and s.lr(50) == pytest.approx(1e-5)
    t = _sched(schedule="plateau", plateau_patience=1)
    t.load_state_dict(s.state_dict())
    assert t.lr(50) == s.lr(50) and t.best_error == s.best_error


def test_step_cosine_onecycle_shapes():
    step = _sched(schedule="step", step_size=3, step_gamma=0.1)
    assert step.lr(29) == pytest.approx(0.01) and step.lr(30) == pytest.approx(0.001)
    cos = _sched(schedule="cosine", warmup_epochs=1, min_lr=0.0)
    assert cos.lr(0) == pytest.approx(0.001) and cos.lr(9) == pytest.approx(0.01)
    assert cos.lr(10) == pytest.approx(0.01) and cos.lr(99) < 1e-5
    lrs = [cos.lr(i) for i in range(10, 100)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    one = _sched(schedule="onecycle", onecycle_pct=0.25, onecycle_div=25, onecycle_final_div=1e4)
    assert one.lr(0) == pytest.approx(0.01 / 25)
    assert max(one.lr(i) for i in range(100)) == pytest.approx(0.01)
    assert math.isclose(one.lr(100), 0.01 / 1e4, rel_tol=1e-6)


def test_a_presets_model_options_stay_with_its_model(tmp_path):
    assert resolve("imagenet-paper").model_options == {"init_bias": 0.1}
    # another model named on the command line, in a file or by --set starts from its own defaults
    assert resolve("imagenet-paper", overrides={"model": "alexnet_owt"}).model_options == {}
    assert resolve("demo", sets={"model": "alexnet"}).model_options == {}
    toml = tmp_path / "run.toml"
    toml.write_text('model = "alexnet_owt"\n')
    assert resolve("imagenet-paper", toml).model_options == {}
    # options given beside the model are kept, and naming the preset's own model keeps the preset's
    cfg = resolve("demo", overrides={"model": "alexnet_owt"}, sets={"model_options": {"dropout": 0.3}})
    assert cfg.model_options == {"dropout": 0.3}
    assert resolve("imagenet-paper", overrides={"model": "alexnet"}).model_options == {"init_bias": 0.1}
