"""Hostile and malformed configurations: every bad value is a ConfigError naming its key, and
no file or override can expand beyond what it holds (YAML aliases, huge files, deep nesting)."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch

from alexnet.training import config as C
from alexnet.training.config import (
    ConfigError,
    TrainConfig,
    check_value,
    from_dict,
    load_file,
    parse_override,
)

pytestmark = pytest.mark.reliability

KEYS = [f.name for f in dataclasses.fields(TrainConfig)]

# (key, value) pairs that must be refused: wrong type, out of range, non-finite, huge, junk.
BAD = [
    # wrong type
    ("epochs", "ten"), ("epochs", 2.5), ("epochs", "2.5"), ("epochs", True), ("epochs", [3]), ("epochs", None),
    ("batch_size", {"a": 1}), ("lr", "fast"), ("lr", "1e-3x"), ("lr", False), ("lr", b"0.1"), ("lr", 1j),
    ("crop", True), ("crop", "big"), ("flip", "yes"), ("flip", 1), ("deterministic", "true"),
    ("model", 5), ("device", 0), ("split_devices", 3), ("split_devices", [1, 2]), ("split_devices", [["cpu"]]),
    ("model_options", [1, 2]), ("model_options", "width=0.5"), ("seed", object()),
    # out of range
    ("epochs", 0), ("epochs", -5), ("batch_size", 0), ("lr", 0), ("lr", -0.1), ("momentum", 1.0),
    ("momentum", -0.1), ("weight_decay", -1e-4), ("label_smoothing", 1), ("val_fraction", 0), ("val_fraction", 1),
    ("plateau_factor", 1.5), ("plateau_patience", -1), ("plateau_max_reductions", -1), ("plateau_threshold", -1),
    ("step_size", 0), ("step_gamma", 0), ("min_lr", -1), ("onecycle_pct", 0), ("onecycle_pct", 1),
    ("onecycle_div", 0), ("onecycle_final_div", -2), ("warmup_epochs", -1), ("grad_clip", -1), ("lighting", -0.1),
    ("num_workers", -1), ("num_workers", 10**6), ("seed", -1), ("log_every", 0), ("checkpoint_every", -1),
    ("checkpoint_minutes", -1), ("max_steps", 0), ("time_limit_minutes", 0), ("crop", 4),
    ("schedule", "exponential"), ("amp", "fp16"), ("norm_mode", "batch"), ("preset", "imagenet"),
    ("model", "vgg16"), ("device", "gpu"), ("device", "cuda:x"), ("split_devices", "cpu,gpu"),
    ("out", ""), ("data", "  "), ("val_split", ""),
    # non-finite and huge
    ("lr", math.nan), ("lr", math.inf), ("lr", "nan"), ("lr", "-inf"), ("momentum", math.nan), ("min_lr", math.inf),
    ("time_limit_minutes", math.inf), ("lr", 10**400), ("seed", 1e20), ("seed", "1e20"), ("seed", 2**63),
    ("seed", 10**5000), ("epochs", "9" * 5000), ("max_steps", math.inf), ("epochs", math.nan),
    # nested junk and hostile strings
    ("model_options", {"width": {"deep": [1]}}), ("model_options", {"width": [0.5]}), ("model_options", {1: 2}),
    ("model_options", {"width": math.nan}), ("model_options", {"n": "a\0b"}), ("out", "runs/\0x"),
    ("data", "a\0"), ("split_devices", ["cpu\0", "cpu"]),
]


@pytest.mark.parametrize(("key", "value"), BAD, ids=[f"{k}={C._show(v)[:20]}" for k, v in BAD])
def test_bad_value_is_refused_naming_its_key(key, value):
    with pytest.raises(ConfigError, match=rf"config key '{key}[.']") as info:
        from_dict({key: value})
    assert len(str(info.value)) < 400  # a hostile value does not make the message huge
    # The same value set on the object later is caught by validate(), with the same name.
    cfg = TrainConfig()
    setattr(cfg, key, value)
    with pytest.raises(ConfigError, match=rf"config key '{key}[.']"):
        cfg.validate()


@pytest.mark.parametrize("key", KEYS)
def test_every_key_refuses_nested_junk_by_name(key):
    for junk in ([object()], {"a": {"b": [1]}}, {"a": object()}):
        with pytest.raises(ConfigError, match=rf"config key '{key}[.']"):
            from_dict({key: junk})


# (key, given, stored): numeric strings (YAML 1.1 reads 1e-3 as one) and whole floats are numbers.
GOOD = [
    ("lr", "1e-3", 1e-3), ("lr", " 0.5 ", 0.5), ("lr", 1, 1.0), ("weight_decay", "5E-4", 5e-4),
    ("epochs", "12", 12), ("epochs", 3.0, 3), ("max_steps", "1e3", 1000), ("seed", 2**53, 2**53),
    ("seed", "9007199254740992", 2**53), ("time_limit_minutes", "1.5", 1.5), ("crop", None, None),
    ("split_devices", "cpu, cpu", ["cpu", "cpu"]), ("split_devices", ("cpu", "cpu"), ["cpu", "cpu"]),
    ("device", "cuda:1", "cuda:1"), ("model_options", {"width": 0.5, "norm": None}, {"width": 0.5, "norm": None}),
]


@pytest.mark.parametrize(("key", "given", "stored"), GOOD)
def test_numeric_strings_and_whole_floats_are_numbers(key, given, stored):
    value = getattr(from_dict({key: given}), key)
    assert value == stored and type(value) is type(stored)


def test_integer_bound_keeps_derived_seeds_inside_torch():
    # The trainer seeds its augmentation generator with seed * 1000 + rank + 1 and the loader
    # with seed + epoch: both must still fit torch's 64-bit seed at the largest seed allowed.
    torch.Generator().manual_seed(C.INT_MAX * 1000 + 1024 + 1)
    with pytest.raises(ConfigError, match="'seed'"):
        check_value("seed", C.INT_MAX + 1)


def test_split_devices_goes_with_the_alexnet_model_only():
    with pytest.raises(ConfigError, match=r"'split_devices'.*only the 'alexnet' model"):
        from_dict({"model": "alexnet_small", "split_devices": "cpu,cpu"}).validate()
    with pytest.raises(ConfigError, match=r"'split_devices'.*two devices"):
        from_dict({"split_devices": "cpu,cpu,cpu"}).validate()
    assert from_dict({"split_devices": "cpu,cpu"}).validate().split_devices == ["cpu", "cpu"]


def test_unknown_keys_of_any_kind_are_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'momentum'"):
        from_dict({"momentun": 0.9})
    with pytest.raises(ConfigError, match="unknown config keys"):
        from_dict({1: 2, ("a",): 3, "zz": 1})  # mixed key types must not break the message
    with pytest.raises(ConfigError, match="table of keys"):
        from_dict([("lr", 0.1)])


def _junk(rng: random.Random, depth: int = 0):
    pick = rng.randrange(14)
    if depth < 3 and pick == 0:
        return [_junk(rng, depth + 1) for _ in range(rng.randrange(3))]
    if depth < 3 and pick == 1:
        return {rng.choice(["a", "width", 1, None]): _junk(rng, depth + 1) for _ in range(rng.randrange(3))}
    return rng.choice(
        [None, True, False, 0, -1, 1, 2**53 + 1, -(10**30), 10**400, 0.5, -0.0, math.nan, -math.inf, 1e308,
         "", "1e-3", "nan", "0x10", "cuda:0", "alexnet", "\0", "x" * 10_000, b"\xff", 1j, object(), (1, 2)]
    )


def test_random_junk_raises_nothing_but_config_error():
    rng = random.Random(1234)
    for _ in range(3000):
        key = rng.choice(KEYS)
        value = _junk(rng)
        try:
            from_dict({key: value}).validate()
        except ConfigError as exc:
            assert f"'{key}" in str(exc) and len(str(exc)) < 400, (key, value, exc)


# --------------------------------------------------------------------------- files and --set

BOMB = (
    'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
)  # small enough to be harmless if expanded; a real bomb adds levels


def test_yaml_aliases_are_refused_in_files_and_overrides(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    with pytest.raises(ConfigError, match=r"bomb.yaml: line 2: YAML aliases \(\*a\) are not allowed"):
        load_file(bomb)
    merge = tmp_path / "merge.yml"
    merge.write_text("base: &base {lr: 0.1}\ntrain:\n  <<: *base\n")
    with pytest.raises(ConfigError, match="aliases"):
        load_file(merge)
    with pytest.raises(ConfigError, match=r"config key 'model_options'.*aliases"):
        parse_override("model_options=[&x [1, 2], *x]")
    anchor_only = tmp_path / "anchor.yaml"
    anchor_only.write_text("lr: &rate 0.1\n")  # an anchor alone expands nothing
    assert load_file(anchor_only) == {"lr": 0.1}


def test_oversized_or_endless_files_are_refused_without_reading_them(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "MAX_FILE_BYTES", 1000)
    big = tmp_path / "big.toml"
    big.write_text("# padding\n" * 101)
    with pytest.raises(ConfigError, match="larger than"):
        load_file(big)
    big.write_text("# padding\n" * 99)
    assert load_file(big) == {}

    class Endless:  # /dev/zero, a FIFO that never ends: reading it all would fill memory
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, n=-1):
            assert n >= 0, "an unbounded read"
            return b"#" * n

    monkeypatch.setattr(C.Path, "open", lambda self, *args, **kwargs: Endless())
    with pytest.raises(ConfigError, match="larger than"):
        load_file(tmp_path / "zero.yaml")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("deep.json", "[" * 100_000 + "]" * 100_000),
        ("deep.yaml", "a: " + "[" * 20_000 + "]" * 20_000),
        ("deep.toml", "a = " + "[" * 20_000 + "]" * 20_000),
        ("long.json", '{"seed": ' + "9" * 5000 + "}"),
        ("bad.yaml", "lr: !!python/object/apply:os.system ['true']\n"),
        ("tab.yaml", "a:\n\t- 1\n"),
        ("binary.toml", "\udcff"),
        ("list.json", "[1, 2]"),
        ("empty.toml", ""),
        ("settings.ini", "lr = 0.1"),
    ],
)
def test_malformed_files_are_config_errors(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    try:
        values = load_file(path)
    except ConfigError as exc:
        assert name in str(exc) and len(str(exc)) < 600
    else:
        assert name == "empty.toml" and values == {}  # the one harmless file here


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_file(tmp_path / "nope.yaml")
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    with pytest.raises(ConfigError, match="cannot read"):
        load_file(folder)


@pytest.mark.parametrize("text", ["lr: 1e-3\nseed: 1e20\n", "seed = 1e20\n"])
def test_seed_overflow_names_the_key(tmp_path, text):
    path = tmp_path / ("c.yaml" if ":" in text else "c.toml")
    path.write_text(text)
    with pytest.raises(ConfigError, match="config key 'seed': must be at most 2\\*\\*53"):
        C.resolve(file=path)
