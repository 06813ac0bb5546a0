"""The paper's network pinned row by row, in both of its forms: grouped (``alexnet``) and
split across two devices (:class:`AlexNetSplit`, built here on two CPU "devices").

What SPEC.md's table and the paper (Sections 3.3-3.5, 4.2) fix after each weight layer:

* ReLU after every layer but fc8.
* Local response normalisation after the ReLU of conv1 and conv2 only, with k=2, n=5,
  alpha=1e-4, beta=0.75, where alpha multiplies the plain sum of squares over the n
  neighbouring maps ("b = a / (k + alpha * sum a^2)^beta"; PyTorch and Caffe divide alpha
  by n, the paper does not), each tower's maps normalised among themselves.
* Overlapping max pooling, window 3 and stride 2, after conv1's and conv2's LRN and after conv5.
* Dropout with p=0.5 "in the first two fully-connected layers", "setting to zero the output
  of each hidden neuron with probability 0.5": on the outputs of fc6 and fc7, which are the
  inputs of fc7 and fc8. fc6's input (the pooled conv5 maps) is not dropped, nor is anything
  in eval mode.

The tests are behavioural: each row is recomputed from the previous row's recorded
activation with the formulas written out in this file (not the library's LRN), in float64,
with weights scaled up so that LRN's alpha term matters, and the inputs of the fully
connected layers are watched with forward pre-hooks.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alexnet.models import LAYER_NAMES, AlexNet, AlexNetSplit, create_model, split_to_grouped

# The paper's LRN constants (Section 3.3).
K, N, ALPHA, BETA = 2.0, 5, 1e-4, 0.75


def paper_lrn(
    a: Tensor, k: float = K, n: int = N, alpha: float = ALPHA, beta: float = BETA, towers: int = 2
) -> Tensor:
    """b[i] = a[i] / (k + alpha * sum_{j = max(0, i - n/2)}^{min(C - 1, i + n/2)} a[j]^2) ** beta,
    the sum running over the maps of the tower that ``i`` belongs to."""
    out = []
    for tower in a.chunk(towers, dim=1):
        c = tower.shape[1]
        sums = [(tower[:, max(0, i - n // 2) : min(c - 1, i + n // 2) + 1] ** 2).sum(1) for i in range(c)]
        out.append(tower / (k + alpha * torch.stack(sums, 1)) ** beta)
    return torch.cat(out, 1)


def pool(a: Tensor) -> Tensor:
    """Overlapping max pooling: 3x3 windows, stride 2."""
    return F.max_pool2d(a, kernel_size=3, stride=2)


def grouped_weights(model: nn.Module) -> dict[str, Tensor]:
    """The weights in the grouped (one-device) layout, whichever form ``model`` is."""
    state = model.state_dict()
    return split_to_grouped(state) if isinstance(model, AlexNetSplit) else state


def conv(w: dict[str, Tensor], name: str, a: Tensor, groups: int = 1, **kw) -> Tensor:
    """Convolution ``name`` then ReLU."""
    return F.relu(F.conv2d(a, w[f"{name}.weight"], w[f"{name}.bias"], groups=groups, **kw))


def fc(w: dict[str, Tensor], name: str, a: Tensor) -> Tensor:
    return F.linear(a, w[f"{name}.weight"], w[f"{name}.bias"])


def row(name: str, w: dict[str, Tensor], x: Tensor, acts: dict[str, Tensor], lrn=paper_lrn) -> Tensor:
    """Row ``name`` of the table applied to the previous row's activation in ``acts``
    (without dropout: compare fc7 and fc8 in eval mode only)."""
    if name == "conv1":
        return conv(w, "conv1", x, stride=4, padding=2)
    if name == "conv2":
        return conv(w, "conv2", pool(lrn(acts["conv1"])), groups=2, padding=2)
    if name == "conv3":
        return conv(w, "conv3", pool(lrn(acts["conv2"])), padding=1)
    if name == "conv4":
        return conv(w, "conv4", acts["conv3"], groups=2, padding=1)
    if name == "conv5":
        return conv(w, "conv5", acts["conv4"], groups=2, padding=1)
    if name == "fc6":
        return F.relu(fc(w, "fc6", pool(acts["conv5"]).flatten(1)))
    if name == "fc7":
        return F.relu(fc(w, "fc7", acts["fc6"]))
    assert name == "fc8"
    return fc(w, "fc8", acts["fc7"])


@pytest.fixture(scope="module", params=["grouped", "split"])
def model(request: pytest.FixtureRequest) -> AlexNet | AlexNetSplit:
    """The paper's model in float64, conv weights scaled so activations reach tens to
    hundreds: large enough that alpha's share of the LRN denominator is several percent."""
    torch.manual_seed(0)
    grouped = create_model("alexnet", num_classes=10)
    with torch.no_grad():
        for name, scale in (("conv1", 30.0), ("conv2", 10.0), ("conv3", 10.0), ("conv4", 10.0), ("conv5", 10.0)):
            getattr(grouped, name).weight.mul_(scale)
    if request.param == "split":
        return AlexNetSplit.from_grouped(grouped, ["cpu", "cpu"]).double()
    return grouped.double()


@pytest.fixture(scope="module")
def x() -> Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def close(actual: Tensor, expected: Tensor) -> bool:
    return actual.shape == expected.shape and torch.allclose(actual, expected, rtol=1e-9, atol=1e-9)


def fc_inputs(model: nn.Module, x: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """All eight activations and the inputs the fully connected layers received, from one pass.

    In the split form tower A's fc6/fc7 see both towers' maps, as does fc8, so their inputs
    are the whole layer's; tower B's copies are recorded as ``b.fc6`` and ``b.fc7``.
    """
    if isinstance(model, AlexNetSplit):
        layers = {"fc6": model.a.fc6, "fc7": model.a.fc7, "fc8": model.fc8, "b.fc6": model.b.fc6, "b.fc7": model.b.fc7}
    else:
        layers = {"fc6": model.fc6, "fc7": model.fc7, "fc8": model.fc8}
    seen: dict[str, Tensor] = {}
    hooks = [
        layer.register_forward_pre_hook(lambda _m, args, name=name: seen.__setitem__(name, args[0].detach()))
        for name, layer in layers.items()
    ]
    try:
        with torch.no_grad():
            acts = model.forward_layers(x)
    finally:
        for h in hooks:
            h.remove()
    return acts, seen


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_each_row_is_the_tables(model: nn.Module, x: Tensor, mode: str) -> None:
    """conv1 -> ReLU -> LRN -> pool, conv2 -> ReLU -> LRN -> pool, conv3 -> ReLU, conv4 -> ReLU,
    conv5 -> ReLU -> pool, fc6 -> ReLU -> dropout, fc7 -> ReLU -> dropout, fc8: each recorded
    activation equals its row applied to the one before. In train mode this holds up to fc6
    (nothing is dropped before fc6's output); fc7 and fc8 are checked in eval mode."""
    model.train(mode == "train")
    try:
        with torch.no_grad():
            acts = model.forward_layers(x)
    finally:
        model.eval()
    w = grouped_weights(model)
    names = LAYER_NAMES if mode == "eval" else ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6")
    wrong = [name for name in names if not close(acts[name], row(name, w, x, acts))]
    assert not wrong, f"rows that do not follow the table ({mode} mode): {wrong}"


@pytest.mark.parametrize(
    ("change", "lrn"),
    [
        ("alpha=2e-5", lambda a: paper_lrn(a, alpha=2e-5)),
        ("alpha/n (PyTorch's and Caffe's convention)", lambda a: paper_lrn(a, alpha=ALPHA / N)),
        ("k=1", lambda a: paper_lrn(a, k=1.0)),
        ("n=3", lambda a: paper_lrn(a, n=3)),
        ("beta=0.5", lambda a: paper_lrn(a, beta=0.5)),
        ("one window across both towers", lambda a: paper_lrn(a, towers=1)),
    ],
)
def test_lrn_constants_are_the_papers(model: nn.Module, x: Tensor, change: str, lrn) -> None:
    """The rows after conv1's and conv2's LRN match the paper's constants (test above) and not a
    changed one: the data makes each constant matter, so a model with it changed would fail."""
    with torch.no_grad():
        acts = model.forward_layers(x, ["conv1", "conv2", "conv3"])
    w = grouped_weights(model)
    for name in ("conv2", "conv3"):
        changed = row(name, w, x, acts, lrn=lrn)
        assert not close(acts[name], changed), f"{name} cannot tell the paper's LRN from {change}"


def test_no_lrn_after_conv3_conv4_conv5(model: nn.Module, x: Tensor) -> None:
    """An LRN after conv3, conv4 or conv5 would change the next row (with k=2 it scales every
    map by at least 2**-0.75 whatever the activations), and the rows test would tell."""
    with torch.no_grad():
        acts = model.forward_layers(x)
    w = grouped_weights(model)
    for name, before in (("conv4", "conv3"), ("conv5", "conv4"), ("fc6", "conv5")):
        normalised = {**acts, before: paper_lrn(acts[before])}
        assert not close(acts[name], row(name, w, x, normalised)), f"cannot tell an LRN after {before}"


def test_pooling_is_overlapping_3_2(model: nn.Module, x: Tensor) -> None:
    """Pooling 3/2 and 2/2 both give 27x27 maps after conv1, so only the values tell them apart."""
    with torch.no_grad():
        acts = model.forward_layers(x, ["conv1", "conv2"])
    w = grouped_weights(model)
    pool_2_2 = F.max_pool2d(paper_lrn(acts["conv1"]), kernel_size=2, stride=2)
    assert pool_2_2.shape[-2:] == (27, 27)
    assert not close(acts["conv2"], conv(w, "conv2", pool_2_2, groups=2, padding=2))


def test_dropout_on_the_outputs_of_fc6_and_fc7(model: nn.Module, x: Tensor) -> None:
    """Train mode: fc6 reads the pooled conv5 maps untouched; fc7 and fc8 read fc6's and fc7's
    outputs with about half the units zeroed and the rest doubled (p=0.5 exactly)."""
    model.train()
    try:
        acts, inputs = fc_inputs(model, x)
    finally:
        model.eval()
    assert torch.equal(inputs["fc6"], pool(acts["conv5"]).flatten(1)), "fc6's input was dropped or changed"
    for layer, source in (("fc7", "fc6"), ("fc8", "fc7")):
        a, seen = acts[source], inputs[layer]
        live = a > 0
        assert live.sum() > 1000, "too few positive units for the test to mean anything"
        kept = seen[live] != 0
        assert torch.equal(seen[~live], torch.zeros_like(seen[~live]))
        assert torch.allclose(seen[live][kept], 2 * a[live][kept], rtol=1e-12, atol=0), f"{layer}: kept units not x2"
        frac = 1 - kept.double().mean().item()
        assert 0.45 < frac < 0.55, f"{layer}'s input: {frac:.3f} of {source}'s units dropped, expected 0.5"
    if isinstance(model, AlexNetSplit):  # one mask: both towers see the same dropped units
        assert torch.equal(inputs["b.fc6"], inputs["fc6"])
        assert torch.equal(inputs["b.fc7"], inputs["fc7"])


def test_eval_mode_drops_nothing_and_is_deterministic(model: nn.Module, x: Tensor) -> None:
    model.eval()
    acts, inputs = fc_inputs(model, x)
    assert torch.equal(inputs["fc6"], pool(acts["conv5"]).flatten(1))
    assert torch.equal(inputs["fc7"], acts["fc6"])
    assert torch.equal(inputs["fc8"], acts["fc7"])
    with torch.no_grad():
        assert torch.equal(model(x), acts["fc8"])
        assert torch.equal(model(x), model(x))
