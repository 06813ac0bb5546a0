"""The anatomy table: the seeds' arithmetic for the paper model, and every zoo member's rows
agreeing with what the model itself computes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from alexnet.anatomy import anatomy, format_layers, model_anatomy, zoo_anatomies
from alexnet.models import create_model, list_models


@pytest.fixture(scope="module")
def paper():
    return model_anatomy("alexnet")


def test_the_seeds_numbers_for_the_paper_model(paper) -> None:
    conv1 = paper.row("conv1")
    assert conv1.out_shape == (96, 55, 55)
    assert conv1.neurons == 290_400  # 55x55x96
    assert conv1.params == 34_944  # 96 * (11*11*3 + 1)
    assert conv1.params_formula == "96 x (11*11*3 + 1) = 34,944"
    assert (conv1.kernel, conv1.stride, conv1.padding) == (11, 4, 2)
    assert paper.neurons == 659_272
    assert paper.params == paper.total_params == 60_965_224
    # conv neurons alone: the slides' "650,000 neurons"
    assert sum(r.neurons for r in paper.rows if r.kind == "conv") == 650_080


def test_connections_of_the_paper_model(paper) -> None:
    """Multiply-adds per image, weights x positions, both towers; see docs/anatomy.md."""
    expected = {
        "conv1": 55 * 55 * 96 * 11 * 11 * 3,
        "conv2": 27 * 27 * 256 * 5 * 5 * 48,  # each kernel sees its own tower's 48 maps
        "conv3": 13 * 13 * 384 * 3 * 3 * 256,  # conv3 sees both towers
        "conv4": 13 * 13 * 384 * 3 * 3 * 192,
        "conv5": 13 * 13 * 256 * 3 * 3 * 192,
        "fc6": 4096 * 9216,
        "fc7": 4096 * 4096,
        "fc8": 1000 * 4096,
    }
    for name, n in expected.items():
        assert paper.row(name).connections == n, name
    assert paper.connections == 724_406_816
    assert paper.conv_connections == 665_784_864 and paper.fc_connections == 58_621_952
    # The slides' 630 million: within 6% of the convolutional layers' count, 13% below the total.
    assert abs(paper.conv_connections / 630e6 - 1) < 0.06
    assert paper.connections / 630e6 == pytest.approx(1.15, abs=0.01)


def test_receptive_fields_and_towers(paper) -> None:
    rf = {r.label: (r.rf, r.jump) for r in paper.rows}
    assert rf["conv1"] == (11, 4) and rf["pool1"] == (19, 8) and rf["conv2"] == (51, 8)
    assert rf["pool2"] == (67, 16) and rf["conv5"] == (163, 16) and rf["pool5"] == (195, 32)
    assert rf["fc6"] == (None, None)
    assert [r.label for r in paper.rows] == [
        "conv1", "norm1", "pool1", "conv2", "norm2", "pool2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7", "fc8",
    ]
    conv2 = paper.row("conv2")
    assert conv2.groups == 2 and "128 x (5*5*48 + 1) = 153,728" in conv2.towers
    assert "27*27*128 x 5*5*48 = 111,974,400" in conv2.towers
    assert paper.row("conv3").towers == ""  # conv3 sees both towers: not grouped
    assert "within each tower's 48 maps" in paper.row("norm1").note


@pytest.mark.parametrize("info", list_models(), ids=lambda m: m.name)
def test_rows_agree_with_the_model(info) -> None:
    """For every zoo member: the rows' parameters sum to the model's, and each weighted row's
    output shape is the shape the model's own stage of that name produces."""
    a = model_anatomy(info.name)
    assert a.params == a.total_params == info.num_params()
    with torch.device("meta"):
        model = create_model(info.name).eval()
        acts = model.forward_layers(torch.empty(1, 3, info.input_size, info.input_size))
    weighted = [r for r in a.rows if r.kind in ("conv", "fc")]
    assert [r.label for r in weighted] == list(model.layer_names)
    for r in weighted:
        shape = r.out_shape
        if info.name == "alexnet_fast" and r.label in ("conv2", "conv4", "conv6"):
            # airbench's order: conv -> max-pool -> batch norm -> GELU, so the stage's activation is pooled
            after = a.rows[a.rows.index(r) + 1]
            assert after.kind == "pool", r.label
            shape = after.out_shape
        assert shape == tuple(acts[r.label].shape[1:]), r.label
        assert r.neurons == math.prod(r.out_shape)  # the conv's own output units
        if shape == r.out_shape:
            assert r.neurons == acts[r.label][0].numel()


def test_names_come_from_execution_order_not_attributes() -> None:
    """Rows are labelled by execution order (conv1 .. fc8), whatever a model calls its modules
    (alexnet_owt's were torchvision's `features.N`; its state dict still is)."""
    a = model_anatomy("alexnet_owt")
    modules = dict(create_model("alexnet_owt").named_modules())
    assert isinstance(modules[a.row("conv1").module], torch.nn.Conv2d)
    assert modules[a.row("conv1").module].out_channels == 64 and modules[a.row("fc8").module].out_features == 1000
    assert [r.label for r in a.rows if r.label.startswith(("conv", "fc"))] == [
        "conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    assert a.row("conv1").params_formula == "64 x (11*11*3 + 1) = 23,296"
    assert a.row("avgpool5").note.startswith("adaptive average (identity at this size")


def test_options_and_a_real_model() -> None:
    """Options change the arithmetic (stride-2 stem from 48 px, no bias before batch norm); a
    real (non-meta) model is analysed with one forward pass and keeps its training mode."""
    a64 = model_anatomy("alexnet_small", input_size=64)
    assert a64.input_shape == (3, 64, 64) and a64.row("conv1").stride == 2
    assert a64.row("conv1").params_formula == "64 x (5*5*3) = 4,800"  # bn: conv without bias
    assert a64.row("bn1").params == 128
    model = create_model("alexnet_small", width=0.125, norm="lrn").train()
    real = anatomy(model)
    assert model.training
    assert real.params == sum(p.numel() for p in model.parameters())
    assert real.row("conv1").out_shape == (8, 32, 32)


def test_split_model_is_analysed_as_its_grouped_form() -> None:
    with torch.device("meta"):
        split = create_model("alexnet", devices=["meta", "meta"], init="default")
    assert anatomy(split).to_dict() | {"model": ""} == model_anatomy("alexnet").to_dict() | {"model": ""}


def test_format_layers(paper) -> None:
    text = format_layers(paper)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["layer", "output", "neurons"]
    assert any(line.startswith("conv1 11x11/4 p2") and "55x55x96" in line and "290,400" in line for line in lines)
    assert "96 x (11*11*3 + 1) = 34,944" in text and "105,415,200" in text
    assert "128 x (5*5*48 + 1) = 153,728" in text  # the per-tower line under conv2
    assert "659,272" in text and "60,965,224" in text and "724,406,816" in text
    assert "195 / 32" in text
    assert len(zoo_anatomies()) == len(list_models())


def test_a_model_with_other_layer_names_is_numbered() -> None:
    """A network without the eight-stage layout gets conv1.., fc1.. labels in execution order."""

    class Tiny(nn.Module):
        input_size = 16

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.squash = nn.MaxPool2d(2)
            self.head = nn.Linear(4 * 4 * 4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.flatten(self.squash(self.stem(x)), 1))

    a = anatomy(Tiny())
    assert [(r.label, r.module) for r in a.rows] == [("conv1", "stem"), ("pool1", "squash"), ("fc2", "head")]
    assert a.row("pool1").rf == 3 + (2 - 1) * 2 and a.row("pool1").jump == 4
    assert a.params == 4 * 28 + 2 * 65


def test_cli_models_layers(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    """`alexnet models NAME --layers` prints the table; a loaded model shows its real options;
    bad input is one error line."""
    from alexnet.cli import main

    assert main(["models"]) == 0  # plain `alexnet models`: the zoo listing
    assert "alexnet_small" in capsys.readouterr().out
    assert main(["models", "alexnet", "--layers"]) == 0
    out = capsys.readouterr().out
    assert "96 x (11*11*3 + 1) = 34,944" in out and "60,965,224" in out
    assert main(["models", "alexnet_small", "--input-size", "56"]) == 0
    assert "56" in capsys.readouterr().out
    for argv in (["--layers"], ["resnet", "--layers"], ["alexnet", "--layers", "--input-size", "100"],
                 ["alexnet_small", "--input-size", "4"]):
        assert main(["models", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
    from alexnet.checkpoint import ModelMeta, save_safetensors
    from alexnet.data.stats import DatasetStats
    from alexnet.models import create_model

    options = {"width": 0.25, "norm": "bn", "input_size": 56}
    model = create_model("alexnet_small", num_classes=20, **options)
    meta = ModelMeta("alexnet_small", 20, [str(i) for i in range(20)], [str(i) for i in range(20)], 64, 56,
                     "channel", DatasetStats.imagenet_fallback(), options)
    path = save_safetensors(tmp_path / "m.safetensors", model.state_dict(), meta)
    assert main(["models", "--checkpoint", str(path), "--layers"]) == 0
    out = capsys.readouterr().out
    params = sum(p.numel() for p in model.parameters())
    assert f"{params:,} parameters, 56x56 input" in out and "norm='bn'" in out
    total = next(line for line in out.splitlines() if line.strip().startswith("parameters"))
    assert total.split()[-1] == f"{params:,}"  # the table is of this model, not the zoo's default


def test_report_section() -> None:
    """The report's anatomy section is the same table for the run's model, HTML-escaped."""
    from alexnet.analysis.report import anatomy_section
    from alexnet.checkpoint import ModelMeta
    from alexnet.data.stats import compute_stats

    meta = ModelMeta(
        "alexnet_small", 10, [str(i) for i in range(10)], [str(i) for i in range(10)], 40, 32, "channel",
        compute_stats([torch.zeros(1, 3, 40, 40, dtype=torch.uint8)]), {"width": 0.25, "input_size": 32},
    )
    model = meta.build()
    section = anatomy_section(model, meta)
    assert section.html.startswith("<pre>") and "conv1 5x5/1 p2" in section.html
    assert f"{sum(p.numel() for p in model.parameters()):,}" in section.html
    assert "630 million" in section.note
