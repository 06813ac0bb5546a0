"""Training configuration and learning-rate schedules: presets, files, overrides, refusals."""

from __future__ import annotations

import itertools
import math

import pytest

from alexnet.cli import main
from alexnet.training.config import PRESETS, ConfigError, TrainConfig, from_dict, preset, resolve
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
    assert cfg.preset == "cifar10" and cfg.model == "alexnet_small"  # from the preset
    assert cfg.epochs == 7 and cfg.model_options == {"width": 0.5}  # from the file
    assert cfg.lr == 0.3  # the command line wins
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("epochs: 3\nschedule: cosine\nwarmup_epochs: 1\n")
    cfg = resolve("imagenet-paper", yaml_file)
    assert (cfg.epochs, cfg.schedule, cfg.warmup_epochs, cfg.model) == (3, "cosine", 1.0, "alexnet")


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
