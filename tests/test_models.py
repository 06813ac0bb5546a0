"""The model zoo against the paper's numbers and torchvision's layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alexnet import LAYER_NAMES, create_model, list_models
from alexnet.cli import main as cli_main
from alexnet.layers import LocalResponseNorm, lrn_reference
from alexnet.models import (
    TORCHVISION_NAMES,
    AlexNet,
    AlexNetSplit,
    grouped_to_split,
    split_to_grouped,
)

# torchvision.models.alexnet().state_dict(): keys and shapes, written out because torchvision
# cannot be imported on the CPU machines.
TORCHVISION_ALEXNET = {
    "features.0.weight": (64, 3, 11, 11),
    "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5),
    "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3),
    "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3),
    "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3),
    "features.10.bias": (256,),
    "classifier.1.weight": (4096, 9216),
    "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096),
    "classifier.4.bias": (4096,),
    "classifier.6.weight": (1000, 4096),
    "classifier.6.bias": (1000,),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def paper() -> AlexNet:
    torch.manual_seed(0)
    return create_model("alexnet").eval()


def test_paper_parameter_count(paper: AlexNet) -> None:
    assert n_params(paper) == 60_965_224


def test_paper_layer_shapes_and_neurons(paper: AlexNet) -> None:
    acts = paper.forward_layers(torch.randn(2, 3, 224, 224))
    shapes = {k: tuple(v.shape[1:]) for k, v in acts.items()}
    assert shapes == {
        "conv1": (96, 55, 55),
        "conv2": (256, 27, 27),
        "conv3": (384, 13, 13),
        "conv4": (384, 13, 13),
        "conv5": (256, 13, 13),
        "fc6": (4096,),
        "fc7": (4096,),
        "fc8": (1000,),
    }
    assert sum(v[0].numel() for v in acts.values()) == 659_272


def test_paper_towers_are_grouped(paper: AlexNet) -> None:
    assert paper.conv2.groups == paper.conv4.groups == paper.conv5.groups == 2
    assert paper.conv3.groups == 1  # conv3 sees both towers
    assert tuple(paper.conv2.weight.shape) == (256, 48, 5, 5)
    assert tuple(paper.conv4.weight.shape) == (384, 192, 3, 3)
    assert tuple(paper.conv5.weight.shape) == (256, 192, 3, 3)
    assert tuple(paper.conv3.weight.shape) == (384, 256, 3, 3)


def test_paper_initialisation(paper: AlexNet) -> None:
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        w = getattr(paper, name).weight
        assert abs(w.mean().item()) < 1e-3, name
        assert w.std().item() == pytest.approx(0.01, rel=0.05), name
    for name in ("conv2", "conv4", "conv5", "fc6", "fc7"):
        assert torch.all(getattr(paper, name).bias == 1.0), name
    for name in ("conv1", "conv3", "fc8"):
        assert torch.all(getattr(paper, name).bias == 0.0), name


def test_dropout_half_on_fc6_fc7(paper: AlexNet) -> None:
    # Where the dropout sits is pinned in test_models_paper.py; here each module's rate.
    for drop in (paper.drop6, paper.drop7):
        assert drop.p == 0.5
        paper.train()
        x = torch.randn(1, 4096).abs() + 1
        dropped = drop(x)
        paper.eval()
        frac = (dropped == 0).float().mean().item()
        assert 0.45 < frac < 0.55


@pytest.mark.parametrize("size", [5, 3])
def test_lrn_matches_paper_formula(size: int) -> None:
    torch.manual_seed(0)
    x = torch.relu(torch.randn(2, 12, 5, 5) * 30)  # large activations make the denominator matter
    ours = LocalResponseNorm(size=size, alpha=1e-4, beta=0.75, k=2.0)(x)
    torch.testing.assert_close(ours, lrn_reference(x, size, 1e-4, 0.75, 2.0), rtol=1e-5, atol=1e-6)
    # PyTorch's own module divides alpha by n: with the paper's alpha it is a different function.
    theirs = nn.LocalResponseNorm(size, alpha=1e-4, beta=0.75, k=2.0)(x)
    assert not torch.allclose(ours, theirs, rtol=1e-4)


def test_grouped_lrn_keeps_towers_apart() -> None:
    x = torch.relu(torch.randn(1, 8, 3, 3) * 30)
    y = LocalResponseNorm(groups=2)(x)
    torch.testing.assert_close(y[:, :4], lrn_reference(x[:, :4]))
    torch.testing.assert_close(y[:, 4:], lrn_reference(x[:, 4:]))


def test_owt_matches_torchvision_layout() -> None:
    model = create_model("alexnet_owt")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == TORCHVISION_ALEXNET
    assert n_params(model) == 61_100_840
    # A torchvision weights file (same keys) loads strictly.
    fake_tv = {k: torch.randn(s) for k, s in TORCHVISION_ALEXNET.items()}
    create_model("alexnet_owt").load_state_dict(fake_tv, strict=True)


def test_owt_reads_torchvision_keys_into_named_layers() -> None:
    """The key map puts each torchvision tensor in the layer the table names, and back."""
    fake_tv = {k: torch.randn(s) for k, s in TORCHVISION_ALEXNET.items()}
    model = create_model("alexnet_owt")
    model.load_state_dict(fake_tv, strict=True)
    layers = [name for name, m in model.named_children() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert layers == list(LAYER_NAMES)
    for ours, theirs in TORCHVISION_NAMES.items():
        assert torch.equal(getattr(model, ours).weight, fake_tv[f"{theirs}.weight"]), ours
        assert torch.equal(getattr(model, ours).bias, fake_tv[f"{theirs}.bias"]), ours
    saved = model.state_dict()
    assert list(saved) == list(TORCHVISION_ALEXNET)  # torchvision's order too
    assert all(torch.equal(saved[k], fake_tv[k]) for k in fake_tv)
    # Inside a container (DDP's "module.", torch.compile's "_orig_mod.") the map keeps the prefix.
    wrapped = nn.Sequential(create_model("alexnet_owt"))
    assert list(wrapped.state_dict()) == [f"0.{k}" for k in TORCHVISION_ALEXNET]
    wrapped.load_state_dict({f"0.{k}": v for k, v in fake_tv.items()}, strict=True)
    assert torch.equal(wrapped[0].fc8.bias, fake_tv["classifier.6.bias"])
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "0\.conv1\.bias"'):
        wrapped.load_state_dict({f"0.{k}": v for k, v in fake_tv.items() if k != "features.0.bias"})
    # strict still means strict: a missing or an extra key is refused (a missing one named as ours).
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "fc8\.bias"'):
        model.load_state_dict({k: v for k, v in fake_tv.items() if k != "classifier.6.bias"})
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "features\.1\.weight"'):
        model.load_state_dict({**fake_tv, "features.1.weight": torch.zeros(1)})


def test_owt_dropout_where_torchvision_has_it() -> None:
    """torchvision's alexnet drops the inputs of fc6 and fc7 (not fc7's output): its weights
    were trained that way, so alexnet_owt keeps it."""
    torch.manual_seed(0)
    model = create_model("alexnet_owt", num_classes=10).train()
    seen: dict[str, torch.Tensor] = {}
    for name in ("fc6", "fc7", "fc8"):
        getattr(model, name).register_forward_pre_hook(
            lambda _m, args, name=name: seen.__setitem__(name, args[0].detach())
        )
    with torch.no_grad():
        acts = model.forward_layers(torch.randn(2, 3, 224, 224))
    pooled = nn.functional.adaptive_avg_pool2d(nn.functional.max_pool2d(acts["conv5"], 3, 2), 6).flatten(1)
    for layer, source in (("fc6", pooled), ("fc7", acts["fc6"])):
        live = source > 0
        kept = seen[layer][live] != 0
        assert torch.allclose(seen[layer][live][kept], 2 * source[live][kept]), layer
        assert 0.4 < 1 - kept.float().mean().item() < 0.6, layer
    assert torch.equal(seen["fc8"], acts["fc7"])


def test_owt_layers() -> None:
    model = create_model("alexnet_owt").eval()
    x = torch.randn(1, 3, 224, 224)
    acts = model.forward_layers(x)
    assert tuple(acts["conv1"].shape) == (1, 64, 55, 55)
    assert tuple(acts["conv5"].shape) == (1, 256, 13, 13)
    torch.testing.assert_close(acts["fc8"], model(x))


@pytest.mark.parametrize(
    ("options", "size"),
    [({}, 32), ({"width": 0.5, "norm": "lrn"}, 32), ({"norm": "none", "input_size": 64}, 64), ({"width": 0.25}, 56)],
)
def test_small_family(options: dict, size: int) -> None:
    model = create_model("alexnet_small", **options).eval()
    out = model(torch.randn(2, 3, size, size))
    assert tuple(out.shape) == (2, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    fcs = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) == 5 and len(fcs) == 3
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert pools and all(p.kernel_size == 3 and p.stride == 2 for p in pools)  # overlapping


def test_small_width_multiplier_scales_params() -> None:
    full = n_params(create_model("alexnet_small"))
    half = n_params(create_model("alexnet_small", width=0.5))
    assert 0.2 * full < half < 0.35 * full  # ~quadratic in width


def test_forward_layers_subset_and_errors(paper: AlexNet) -> None:
    x = torch.randn(1, 3, 224, 224)
    acts = paper.forward_layers(x, ["fc7", "conv1"])
    assert list(acts) == ["fc7", "conv1"]
    torch.testing.assert_close(paper.forward_layers(x, ["fc8"])["fc8"], paper(x))
    with pytest.raises(KeyError, match="conv9"):
        paper.forward_layers(x, ["conv9"])


def test_split_equals_grouped_outputs_and_gradients() -> None:
    torch.manual_seed(0)
    grouped = create_model("alexnet", num_classes=50, dropout=0.0)
    split = AlexNetSplit.from_grouped(grouped, ["cpu", "cpu"])
    x = torch.randn(2, 3, 224, 224)
    y = torch.tensor([3, 7])
    loss_g = nn.functional.cross_entropy(grouped(x), y)
    loss_s = nn.functional.cross_entropy(split(x), y)
    torch.testing.assert_close(loss_s, loss_g)
    loss_g.backward()
    loss_s.backward()
    grads_g = {k: p.grad for k, p in grouped.named_parameters()}
    grads_s = split_to_grouped({k: p.grad for k, p in split.named_parameters()})
    for k, g in grads_g.items():
        torch.testing.assert_close(grads_s[k], g, rtol=1e-4, atol=1e-6, msg=k)
    acts_g, acts_s = grouped.forward_layers(x), split.forward_layers(x)
    for name in LAYER_NAMES:
        torch.testing.assert_close(acts_s[name], acts_g[name], rtol=1e-4, atol=1e-5)


def test_split_weight_conversion_round_trip() -> None:
    grouped = create_model("alexnet", num_classes=20)
    sd = grouped.state_dict()
    back = split_to_grouped(grouped_to_split(sd))
    assert back.keys() == sd.keys()
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    split = create_model("alexnet", num_classes=20, devices=["cpu", "cpu"])
    assert isinstance(split, AlexNetSplit)
    assert n_params(split) == n_params(grouped)
    assert isinstance(split.to_grouped(), AlexNet)


# state_dict() keys and shapes as checkpoints written so far hold them; they must keep loading.
PAPER_KEYS = {
    "conv1": (96, 3, 11, 11),
    "conv2": (256, 48, 5, 5),
    "conv3": (384, 256, 3, 3),
    "conv4": (384, 192, 3, 3),
    "conv5": (256, 192, 3, 3),
    "fc6": (4096, 9216),
    "fc7": (4096, 4096),
    "fc8": (1000, 4096),
}
TOWER_KEYS = {
    "conv1": (48, 3, 11, 11),
    "conv2": (128, 48, 5, 5),
    "conv3": (192, 256, 3, 3),
    "conv4": (192, 192, 3, 3),
    "conv5": (128, 192, 3, 3),
    "fc6": (2048, 9216),
    "fc7": (2048, 4096),
}
SMALL_KEYS = {
    "conv1": (64, 3, 5, 5),
    "conv2": (192, 64, 5, 5),
    "conv3": (384, 192, 3, 3),
    "conv4": (256, 384, 3, 3),
    "conv5": (256, 256, 3, 3),
    "fc6": (1024, 4096),
    "fc7": (1024, 1024),
    "fc8": (10, 1024),
}
BN_BUFFERS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def with_bias(layers: dict[str, tuple[int, ...]], prefix: str = "") -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in layers.items():
        out[f"{prefix}{name}.weight"], out[f"{prefix}{name}.bias"] = shape, shape[:1]
    return out


def small_bn_keys() -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for i, (name, shape) in enumerate(SMALL_KEYS.items(), 1):
        if name.startswith("conv"):
            out[f"{name}.weight"] = shape
            for buf in BN_BUFFERS:
                out[f"norm{i}.{buf}"] = () if buf == "num_batches_tracked" else shape[:1]
        else:
            out.update(with_bias({name: shape}))
    return out


@pytest.mark.parametrize(
    ("name", "options", "layout"),
    [
        ("alexnet", {}, with_bias(PAPER_KEYS)),
        (
            "alexnet",
            {"devices": ["cpu", "cpu"]},
            {**with_bias(TOWER_KEYS, "a."), **with_bias(TOWER_KEYS, "b."), **with_bias({"fc8": (1000, 4096)})},
        ),
        ("alexnet_owt", {}, TORCHVISION_ALEXNET),
        ("alexnet_small", {}, small_bn_keys()),
        ("alexnet_small", {"norm": "lrn"}, with_bias(SMALL_KEYS)),
        ("alexnet_small", {"norm": "none"}, with_bias(SMALL_KEYS)),
    ],
)
def test_checkpoint_key_layouts_unchanged(name: str, options: dict, layout: dict) -> None:
    model = create_model(name, **options)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == layout
    assert list(model.state_dict()) == list(layout)
    old = {k: torch.randn(s) if s else torch.tensor(3) for k, s in layout.items()}
    model.load_state_dict(old, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, old[k]), k


def test_rows_compile_into_one_graph() -> None:
    """Each forward is a generator of rows; torch.compile (the trainer's --compile) traces it whole."""
    torch.manual_seed(0)
    model = create_model("alexnet_small", width=0.25).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), model(x))


def test_split_needs_two_devices() -> None:
    with pytest.raises(ValueError, match="two devices"):
        create_model("alexnet", devices=["cpu"])


def test_registry() -> None:
    names = [m.name for m in list_models()]
    assert names == ["alexnet", "alexnet_owt", "alexnet_small", "alexnet_fast"]
    with pytest.raises(KeyError, match="unknown model"):
        create_model("resnet50")
    assert create_model("alexnet", num_classes=10).fc8.out_features == 10


def test_cli_models_prints_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["models"]) == 0
    out = capsys.readouterr().out
    assert "60,965,224" in out and "61,100,840" in out and "224x224" in out
