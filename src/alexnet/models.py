"""The AlexNet model zoo, each network written the way SPEC.md's table reads.

Members (``list_models()``):

* ``alexnet``: the network of Krizhevsky, Sutskever & Hinton (NIPS 2012) exactly:
  two towers expressed as ``groups=2`` in conv2/4/5, LRN after conv1 and conv2,
  overlapping 3/2 max pooling after conv1, conv2 and conv5, dropout 0.5 on the outputs
  of fc6 and fc7, the paper's initialisation; 60,965,224 parameters.
  ``create_model('alexnet', devices=[d0, d1])`` returns the same network split across
  two devices as in the paper (:class:`AlexNetSplit`).
* ``alexnet_owt``: the single-column "one weird trick" network whose state dict
  has exactly the keys and shapes of torchvision's ``alexnet`` (61,100,840 params).
* ``alexnet_small``: the same design for 32-64 px images (CIFAR-10, CPU demos).
* ``alexnet_fast``: eight layers for 32 px images with what short CIFAR-10 runs need
  (a whitened first layer, batch norm, GELU): the ``cifar10`` preset's network.

Every member writes its forward pass once, in :meth:`FeatureNet.rows`: the table's
rows top to bottom, yielding each weight layer's activation by name. ``model(x)`` runs
all rows and returns the logits; ``forward_layers`` returns the activations asked for
from one pass::

    acts = model.forward_layers(x, ["conv1", "conv5", "fc7"])   # dict name -> tensor

Activations are taken after the ReLU (before LRN and pooling) for conv1..conv5, after
the ReLU (before dropout) for fc6/fc7, and are the logits for fc8.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alexnet.layers import (
    LocalResponseNorm,
    PatchWhitening,
    norm_layer,
    relu_and_norm,
    shift_only_bn,
)

LAYER_NAMES: tuple[str, ...] = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


# --------------------------------------------------------------------------- kinds of layer
# One rule, from a model's ``layer_names`` alone, for which rows the analyses use; every
# :class:`FeatureNet` exposes it as properties (``model.conv_layers`` ...). For AlexNet's layout
# the answers are conv1..conv5, conv1..fc7 and fc7; for ``alexnet_fast`` conv1..conv7,
# conv1..conv7 and conv7.


def conv_layers_of(layer_names: Sequence[str]) -> tuple[str, ...]:
    """The convolutional rows, in order: the names that start with ``conv``."""
    return tuple(name for name in layer_names if name.startswith("conv"))


def hidden_layers_of(layer_names: Sequence[str]) -> tuple[str, ...]:
    """Every row before the logits (the last row): what a linear probe can read."""
    if len(layer_names) < 2:
        raise ValueError(f"a network of rows {list(layer_names)} has no hidden layer before its logits")
    return tuple(layer_names[:-1])


def embedding_layer_of(layer_names: Sequence[str]) -> str:
    """The last row before the logits, whose activation (flattened) is an image's vector for
    retrieval: fc7 in AlexNet's layout (the paper's Figure 4)."""
    return hidden_layers_of(layer_names)[-1]


# AlexNet's conv stages (conv1 .. conv5): the explorer's page and the atlas's default; a
# model's own are ``model.conv_layers``.
CONV_LAYER_NAMES: tuple[str, ...] = conv_layers_of(LAYER_NAMES)


# --------------------------------------------------------------------------- the paper's pieces


def paper_lrn(groups: int = 1) -> LocalResponseNorm:
    """Local response normalisation with the paper's constants (Section 3.3):
    k=2, n=5, alpha=1e-4, beta=0.75, alpha multiplying the plain sum of squares."""
    return LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0, groups=groups)


def overlapping_pool() -> nn.MaxPool2d:
    """Max pooling over 3x3 windows with stride 2, so neighbouring windows overlap (Section 3.4)."""
    return nn.MaxPool2d(kernel_size=3, stride=2)


def init_paper_(
    model: nn.Module, ones: Sequence[str] = ("conv2", "conv4", "conv5", "fc6", "fc7"), bias: float = 1.0
) -> None:
    """The paper's initialisation: weights ~ N(0, 0.01); biases 1 in conv2, conv4, conv5,
    fc6 and fc7 (to give the ReLUs positive inputs early on), 0 elsewhere. ``bias`` replaces
    that 1 (Caffe's ``bvlc_alexnet`` used 0.1; docs/recipe.md measures why it matters)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.01)
            if module.bias is not None:
                leaf = name.rsplit(".", 1)[-1]
                nn.init.constant_(module.bias, bias if leaf in ones else 0.0)


def initialise_(model: nn.Module, init: str, bias: float = 1.0) -> None:
    """``'paper'``: :func:`init_paper_` (its positive biases ``bias``); ``'default'``: keep
    PyTorch's own initialisation."""
    if init == "paper":
        init_paper_(model, bias=bias)
    elif init != "default":
        raise ValueError(f"unknown init {init!r}: expected 'paper' or 'default'")


# --------------------------------------------------------------------------- the common interface


class Towers(NamedTuple):
    """One layer's activations in the split model: tower A's on its device, tower B's on its."""

    a: Tensor
    b: Tensor

    def joined(self) -> Tensor:
        """Both towers as one tensor on A's device, A's channels first (the grouped layout)."""
        return torch.cat([self.a, self.b.to(self.a.device)], 1)


class FeatureNet(nn.Module):
    """Base class: a network whose forward pass is its table's rows, conv1 .. fc8.

    Subclasses write :meth:`rows`; ``forward_layers`` runs them and returns the requested
    activations of that one pass, and ``forward`` is the last row's, the logits.
    """

    layer_names: tuple[str, ...] = LAYER_NAMES
    input_size: int = 224
    num_classes: int = 1000
    # Number of conv1 kernels per tower, for pictures of the kernels (0: single column).
    tower_split: int = 0

    @property
    def conv_layers(self) -> tuple[str, ...]:
        """The convolutional rows in order (:func:`conv_layers_of`): conv1 .. conv5 in AlexNet."""
        return conv_layers_of(self.layer_names)

    @property
    def hidden_layers(self) -> tuple[str, ...]:
        """The rows before the logits (:func:`hidden_layers_of`): conv1 .. fc7 in AlexNet."""
        return hidden_layers_of(self.layer_names)

    @property
    def embedding_layer(self) -> str:
        """The last row before the logits (:func:`embedding_layer_of`): fc7 in AlexNet."""
        return embedding_layer_of(self.layer_names)

    def rows(self, x: Tensor) -> Iterator[tuple[str, Tensor | Towers]]:  # pragma: no cover - abstract
        """The forward pass, one row of the table after another: yields ``(name, activation)``
        after each weight layer, ending with ``("fc8", logits)``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_layers(x, ["fc8"])["fc8"]

    def forward_layers(self, x: Tensor, layers: Iterable[str] | None = None) -> dict[str, Tensor]:
        """Activations of the named layers (default: all eight) from one forward pass.

        Stops after the last requested layer, so asking for ``conv1`` alone is cheap.
        """
        wanted = list(self.layer_names if layers is None else layers)
        unknown = [name for name in wanted if name not in self.layer_names]
        if unknown:
            raise KeyError(f"unknown layer(s) {unknown}; choose from {list(self.layer_names)}")
        out: dict[str, Tensor] = {}
        for name, act in self.rows(x):
            if name in wanted:
                out[name] = act.joined() if isinstance(act, Towers) else act
                if len(out) == len(set(wanted)):
                    break
        return {name: out[name] for name in wanted}


# --------------------------------------------------------------------------- the paper's network


class AlexNet(FeatureNet):
    """AlexNet as in the paper (Figure 2), the two GPU towers folded into grouped convolutions.

    ========  ==============================  =========================  ===========================
    layer     kernels                         after it                   output
    ========  ==============================  =========================  ===========================
    conv1     96 x 11x11x3, stride 4          ReLU, LRN, max-pool 3/2    55x55x96 -> 27x27x96
    conv2     256 x 5x5x48 (own tower)        ReLU, LRN, max-pool 3/2    27x27x256 -> 13x13x256
    conv3     384 x 3x3x256 (both towers)     ReLU                       13x13x384
    conv4     384 x 3x3x192 (own tower)       ReLU                       13x13x384
    conv5     256 x 3x3x192 (own tower)       ReLU, max-pool 3/2         13x13x256 -> 6x6x256
    fc6       4096                            ReLU, dropout 0.5          4096
    fc7       4096                            ReLU, dropout 0.5          4096
    fc8       num_classes                     (softmax in the loss)      num_classes
    ========  ==============================  =========================  ===========================

    The input is 224x224; conv1 uses padding 2 so that the arithmetic gives the
    paper's 55x55 (equivalently 227x227 unpadded). LRN is grouped too: each tower's
    maps are normalised among themselves, as on the paper's two GPUs. ``init_bias`` is the
    constant the paper puts in the biases of conv2, conv4, conv5, fc6 and fc7 (1; the
    ``imagenet-paper`` preset uses 0.1, see docs/recipe.md).
    """

    input_size = 224
    tower_split = 48

    def __init__(
        self, num_classes: int = 1000, dropout: float = 0.5, init: str = "paper", init_bias: float = 1.0
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 96, kernel_size=11, stride=4, padding=2)
        self.norm1, self.pool1 = paper_lrn(groups=2), overlapping_pool()
        self.conv2 = nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=2)
        self.norm2, self.pool2 = paper_lrn(groups=2), overlapping_pool()
        self.conv3 = nn.Conv2d(256, 384, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=2)
        self.pool5 = overlapping_pool()
        self.fc6, self.drop6 = nn.Linear(256 * 6 * 6, 4096), nn.Dropout(dropout)
        self.fc7, self.drop7 = nn.Linear(4096, 4096), nn.Dropout(dropout)
        self.fc8 = nn.Linear(4096, num_classes)
        initialise_(self, init, init_bias)

    def rows(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        x = F.relu(self.conv1(x))
        yield "conv1", x
        x = self.pool1(self.norm1(x))
        x = F.relu(self.conv2(x))
        yield "conv2", x
        x = self.pool2(self.norm2(x))
        x = F.relu(self.conv3(x))
        yield "conv3", x
        x = F.relu(self.conv4(x))
        yield "conv4", x
        x = F.relu(self.conv5(x))
        yield "conv5", x
        x = self.pool5(x).flatten(1)
        x = F.relu(self.fc6(x))
        yield "fc6", x
        x = self.drop6(x)
        x = F.relu(self.fc7(x))
        yield "fc7", x
        x = self.drop7(x)
        yield "fc8", self.fc8(x)


class Tower(nn.Module):
    """One GPU's half of the paper's network (Figure 2, top or bottom): the same rows as
    :class:`AlexNet` with half the kernels; conv3, fc6 and fc7 read both towers' maps."""

    def __init__(self, dropout: float = 0.5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 48, kernel_size=11, stride=4, padding=2)
        self.norm1, self.pool1 = paper_lrn(), overlapping_pool()
        self.conv2 = nn.Conv2d(48, 128, kernel_size=5, padding=2)
        self.norm2, self.pool2 = paper_lrn(), overlapping_pool()
        self.conv3 = nn.Conv2d(256, 192, kernel_size=3, padding=1)  # sees both towers
        self.conv4 = nn.Conv2d(192, 192, kernel_size=3, padding=1)
        self.conv5 = nn.Conv2d(192, 128, kernel_size=3, padding=1)
        self.pool5 = overlapping_pool()
        self.fc6, self.drop6 = nn.Linear(256 * 6 * 6, 2048), nn.Dropout(dropout)  # sees both towers
        self.fc7, self.drop7 = nn.Linear(4096, 2048), nn.Dropout(dropout)  # sees both towers


class AlexNetSplit(FeatureNet):
    """The paper's model-parallel form: tower A on ``devices[0]``, tower B on ``devices[1]``.

    The towers exchange activations only where the paper's GPUs communicate: the
    input of conv3 and the inputs of fc6, fc7 and fc8 (fc8 lives on ``devices[0]``).
    With the same weights (see :func:`grouped_to_split`) it computes exactly what
    :class:`AlexNet` computes. Kernel launches on two CUDA devices are asynchronous,
    so the towers run concurrently, as on the paper's two GTX 580s.
    """

    input_size = 224
    tower_split = 48

    def __init__(
        self,
        devices: Sequence[torch.device | str],
        num_classes: int = 1000,
        dropout: float = 0.5,
        init: str = "paper",
        init_bias: float = 1.0,
    ) -> None:
        super().__init__()
        if len(devices) != 2:
            raise ValueError(f"the split model needs exactly two devices, got {list(devices)}")
        self.devices = [torch.device(d) for d in devices]
        self.num_classes = num_classes
        self.a, self.b = Tower(dropout), Tower(dropout)
        self.fc8 = nn.Linear(4096, num_classes)
        initialise_(self, init, init_bias)
        self.place()

    def place(self) -> AlexNetSplit:
        """Move each tower to its device (call again after ``.to()`` or loading weights)."""
        d0, d1 = self.devices
        self.a.to(d0)
        self.b.to(d1)
        self.fc8.to(d0)
        return self

    def exchange(self, a: Tensor, b: Tensor) -> Towers:
        """Both towers' activations, concatenated on each tower's device (A's channels first)."""
        return Towers(torch.cat([a, b.to(a.device)], 1), torch.cat([a.to(b.device), b], 1))

    def rows(self, x: Tensor) -> Iterator[tuple[str, Tensor | Towers]]:
        A, B = self.a, self.b
        d0, d1 = self.devices
        a, b = F.relu(A.conv1(x.to(d0))), F.relu(B.conv1(x.to(d1)))
        yield "conv1", Towers(a, b)
        a, b = A.pool1(A.norm1(a)), B.pool1(B.norm1(b))
        a, b = F.relu(A.conv2(a)), F.relu(B.conv2(b))
        yield "conv2", Towers(a, b)
        a, b = self.exchange(A.pool2(A.norm2(a)), B.pool2(B.norm2(b)))
        a, b = F.relu(A.conv3(a)), F.relu(B.conv3(b))
        yield "conv3", Towers(a, b)
        a, b = F.relu(A.conv4(a)), F.relu(B.conv4(b))
        yield "conv4", Towers(a, b)
        a, b = F.relu(A.conv5(a)), F.relu(B.conv5(b))
        yield "conv5", Towers(a, b)
        a, b = self.exchange(A.pool5(a).flatten(1), B.pool5(b).flatten(1))
        a, b = F.relu(A.fc6(a)), F.relu(B.fc6(b))
        yield "fc6", Towers(a, b)
        a, b = self.exchange(A.drop6(a), B.drop6(b))
        a, b = F.relu(A.fc7(a)), F.relu(B.fc7(b))
        yield "fc7", Towers(a, b)
        x = Towers(A.drop7(a), B.drop7(b)).joined()
        yield "fc8", self.fc8(x)

    @classmethod
    def from_grouped(cls, model: AlexNet, devices: Sequence[torch.device | str]) -> AlexNetSplit:
        """The split form of a grouped :class:`AlexNet`, with the same weights."""
        split = cls(devices, num_classes=model.num_classes, dropout=model.drop6.p, init="default")
        split.load_state_dict(grouped_to_split(model.state_dict()))
        return split.place()

    def to_grouped(self) -> AlexNet:
        """The grouped one-device form with the same weights (on CPU)."""
        model = AlexNet(num_classes=self.num_classes, dropout=self.a.drop6.p, init="default")
        model.load_state_dict(split_to_grouped(self.state_dict()))
        return model


# The layers whose output units the two towers share out (fc8 lives whole on tower A's device).
_SPLIT_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


def grouped_to_split(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Convert an :class:`AlexNet` state dict to the :class:`AlexNetSplit` layout.

    Each layer's output units are halved along dim 0: the first half is tower A.
    Inputs need no reordering because the towers are concatenated A-then-B, which
    is the grouped layout's channel order (and, for fc6, the flattened order).
    """
    out: dict[str, Tensor] = {}
    for layer in _SPLIT_LAYERS:
        for kind in ("weight", "bias"):
            full = state_dict[f"{layer}.{kind}"]
            half = full.shape[0] // 2
            out[f"a.{layer}.{kind}"] = full[:half].clone()
            out[f"b.{layer}.{kind}"] = full[half:].clone()
    out["fc8.weight"] = state_dict["fc8.weight"].clone()
    out["fc8.bias"] = state_dict["fc8.bias"].clone()
    return out


def split_to_grouped(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`grouped_to_split` (tensors are gathered on the CPU)."""
    out: dict[str, Tensor] = {}
    for layer in _SPLIT_LAYERS:
        for kind in ("weight", "bias"):
            a, b = state_dict[f"a.{layer}.{kind}"].cpu(), state_dict[f"b.{layer}.{kind}"].cpu()
            out[f"{layer}.{kind}"] = torch.cat([a, b], 0)
    out["fc8.weight"] = state_dict["fc8.weight"].cpu().clone()
    out["fc8.bias"] = state_dict["fc8.bias"].cpu().clone()
    return out


# --------------------------------------------------------------------------- one weird trick

# torchvision's ``alexnet`` keeps the same eight weight layers in two Sequentials; its
# state-dict prefix for each of ours. :class:`AlexNetOWT` writes and reads these keys.
TORCHVISION_NAMES: dict[str, str] = {
    "conv1": "features.0",
    "conv2": "features.3",
    "conv3": "features.6",
    "conv4": "features.8",
    "conv5": "features.10",
    "fc6": "classifier.1",
    "fc7": "classifier.4",
    "fc8": "classifier.6",
}
_FROM_TORCHVISION = {tv: ours for ours, tv in TORCHVISION_NAMES.items()}


def rename_keys(state_dict: dict[str, Tensor], names: dict[str, str], prefix: str = "") -> dict[str, Tensor]:
    """``state_dict`` with each key ``prefix + old + ".rest"`` renamed ``prefix + names[old] + ".rest"``,
    in the same order; keys outside ``names`` are kept as they are."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        head, dot, rest = key[len(prefix) :].rpartition(".")
        if key.startswith(prefix) and dot and head in names:
            key = f"{prefix}{names[head]}.{rest}"
        out[key] = value
    return out


class AlexNetOWT(FeatureNet):
    """Single-column AlexNet ("One weird trick", Krizhevsky 2014): 64-192-384-256-256 kernels,
    no LRN, no groups, dropout on the *inputs* of fc6 and fc7 (torchvision's placement).

    Its state dict uses torchvision's keys (``features.0.weight`` ... ``classifier.6.bias``,
    see :data:`TORCHVISION_NAMES`), mapped from and to the names below by state-dict hooks,
    so torchvision's weights load with ``strict=True`` and ours load into torchvision.
    ``named_parameters()`` and the messages of a failed load use the names below.
    """

    input_size = 224

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2)
        self.pool1 = overlapping_pool()
        self.conv2 = nn.Conv2d(64, 192, kernel_size=5, padding=2)
        self.pool2 = overlapping_pool()
        self.conv3 = nn.Conv2d(192, 384, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(384, 256, kernel_size=3, padding=1)
        self.conv5 = nn.Conv2d(256, 256, kernel_size=3, padding=1)
        self.pool5, self.avgpool = overlapping_pool(), nn.AdaptiveAvgPool2d((6, 6))
        self.drop6, self.fc6 = nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096)
        self.drop7, self.fc7 = nn.Dropout(dropout), nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)
        self.register_state_dict_post_hook(_to_torchvision_keys)
        self.register_load_state_dict_pre_hook(_from_torchvision_keys)

    def rows(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        x = F.relu(self.conv1(x))
        yield "conv1", x
        x = F.relu(self.conv2(self.pool1(x)))
        yield "conv2", x
        x = F.relu(self.conv3(self.pool2(x)))
        yield "conv3", x
        x = F.relu(self.conv4(x))
        yield "conv4", x
        x = F.relu(self.conv5(x))
        yield "conv5", x
        x = self.avgpool(self.pool5(x)).flatten(1)
        x = F.relu(self.fc6(self.drop6(x)))
        yield "fc6", x
        x = F.relu(self.fc7(self.drop7(x)))
        yield "fc7", x
        yield "fc8", self.fc8(x)


def _to_torchvision_keys(module: nn.Module, state_dict: dict[str, Tensor], prefix: str, _meta: object) -> None:
    renamed = rename_keys(state_dict, TORCHVISION_NAMES, prefix)
    state_dict.clear()
    state_dict.update(renamed)


def _from_torchvision_keys(module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *_: object) -> None:
    renamed = rename_keys(state_dict, _FROM_TORCHVISION, prefix)
    state_dict.clear()
    state_dict.update(renamed)


# --------------------------------------------------------------------------- small images


class AlexNetSmall(FeatureNet):
    """The AlexNet design scaled to 32-64 px images (CIFAR-10, the embedded dataset).

    Five convolutions and three fully connected layers with ReLU, overlapping 3/2 max
    pooling after conv1, conv2 and conv5, dropout on the outputs of fc6 and fc7, as in the
    paper. conv1 is 5x5 with stride 1 (stride 2 from 48 px up) since a 32 px image has no
    room for an 11x11/4 stem. ``norm`` picks the normalisation: ``'lrn'`` (the paper's,
    after the ReLU of conv1 and conv2), ``'bn'`` (batch norm before the ReLU of every
    convolution, trains faster) or ``'none'``; ``width`` multiplies every layer's width.
    The pools pad by 1 so that small maps keep their edges.
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: float = 1.0,
        norm: str = "bn",
        dropout: float = 0.5,
        input_size: int = 32,
        fc_dim: int = 1024,
    ) -> None:
        super().__init__()
        self.num_classes, self.input_size, self.norm_kind = num_classes, input_size, norm
        c1, c2, c3, c4, c5 = (max(8, round(c * width)) for c in (64, 192, 384, 256, 256))
        fc = max(16, round(fc_dim * width))
        bn = norm == "bn"

        def conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=not bn)

        def pool() -> nn.MaxPool2d:
            return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        self.conv1, self.norm1 = conv(3, c1, 5, stride=2 if input_size >= 48 else 1), norm_layer(norm, c1)
        self.pool1 = pool()
        self.conv2, self.norm2 = conv(c1, c2, 5), norm_layer(norm, c2)
        self.pool2 = pool()
        # The paper normalises only conv1 and conv2: conv3..5 get batch norm or nothing.
        rest = "bn" if bn else "none"
        self.conv3, self.norm3 = conv(c2, c3, 3), norm_layer(rest, c3)
        self.conv4, self.norm4 = conv(c3, c4, 3), norm_layer(rest, c4)
        self.conv5, self.norm5 = conv(c4, c5, 3), norm_layer(rest, c5)
        self.pool5, self.avgpool = pool(), nn.AdaptiveAvgPool2d((4, 4))
        self.fc6, self.drop6 = nn.Linear(c5 * 16, fc), nn.Dropout(dropout)
        self.fc7, self.drop7 = nn.Linear(fc, fc), nn.Dropout(dropout)
        self.fc8 = nn.Linear(fc, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def rows(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        # With LRN the recorded conv1/conv2 activation includes the normalisation (it
        # follows the ReLU); with batch norm it is the post-ReLU map, as elsewhere.
        x = relu_and_norm(self.conv1(x), self.norm1)
        yield "conv1", x
        x = relu_and_norm(self.conv2(self.pool1(x)), self.norm2)
        yield "conv2", x
        x = relu_and_norm(self.conv3(self.pool2(x)), self.norm3)
        yield "conv3", x
        x = relu_and_norm(self.conv4(x), self.norm4)
        yield "conv4", x
        x = relu_and_norm(self.conv5(x), self.norm5)
        yield "conv5", x
        x = self.avgpool(self.pool5(x)).flatten(1)
        x = F.relu(self.fc6(x))
        yield "fc6", x
        x = self.drop6(x)
        x = F.relu(self.fc7(x))
        yield "fc7", x
        x = self.drop7(x)
        yield "fc8", self.fc8(x)


class AlexNetFast(FeatureNet):
    """The AlexNet family rebuilt for a short run on 32 px images: the ``cifar10`` recipe.

    Still the paper's kind of network: a plain feed-forward stack of convolutions, max
    pooling and ReLU-like activations, eight weight layers, no residual connections. What
    changes is what the CIFAR-10 speed runs of 2020-2024 (hlb-CIFAR10, airbench) found pays
    when a run has a few epochs instead of ninety:

    * conv1 is a fixed 2x2 patch-whitening layer (:class:`~alexnet.layers.PatchWhitening`),
      set from the training images by :meth:`init_from_data` before the first step;
    * three stages of two 3x3 convolutions (64, 256, 256 channels x ``width``), max pooling
      2/2 after the first convolution of each, batch norm with a fixed scale
      (:func:`~alexnet.layers.shift_only_bn`) and GELU after every convolution;
    * each stage's convolutions start as a partial identity (the first ``in_channels``
      filters are Dirac deltas), so an untrained stage passes its input on;
    * a global max pool and one linear layer, whose logits are divided by 9: a lower
      temperature at the start, where the fc layers of the paper had dropout.

    At width 1 it has 1.97 M parameters and 0.24 GFLOP per 32 px image (forward).
    """

    layer_names = ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "conv7", "fc8")

    def __init__(self, num_classes: int = 10, width: float = 1.0, input_size: int = 32, temperature: float = 9.0) -> None:
        super().__init__()
        self.num_classes, self.input_size, self.temperature = num_classes, input_size, temperature
        c1, c2, c3 = (max(8, round(c * width)) for c in (64, 256, 256))
        self.conv1 = PatchWhitening(3, kernel_size=2)
        stem = self.conv1.out_channels

        def conv(cin: int, cout: int) -> nn.Conv2d:
            layer = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            nn.init.dirac_(layer.weight[:cin])  # the rest keeps PyTorch's default initialisation
            return layer

        self.conv2, self.pool2, self.norm2 = conv(stem, c1), nn.MaxPool2d(2), shift_only_bn(c1)
        self.conv3, self.norm3 = conv(c1, c1), shift_only_bn(c1)
        self.conv4, self.pool4, self.norm4 = conv(c1, c2), nn.MaxPool2d(2), shift_only_bn(c2)
        self.conv5, self.norm5 = conv(c2, c2), shift_only_bn(c2)
        self.conv6, self.pool6, self.norm6 = conv(c2, c3), nn.MaxPool2d(2), shift_only_bn(c3)
        self.conv7, self.norm7 = conv(c3, c3), shift_only_bn(c3)
        self.fc8 = nn.Linear(c3, num_classes, bias=False)

    @torch.no_grad()
    def init_from_data(self, images: Tensor) -> None:
        """Fit the whitening layer to normalised training images ``[N, 3, H, W]`` (a few
        thousand suffice). The trainer calls this once, before the first step."""
        self.conv1.fit_(images)

    def rows(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        x = F.gelu(self.conv1(x))
        yield "conv1", x
        x = F.gelu(self.norm2(self.pool2(self.conv2(x))))
        yield "conv2", x
        x = F.gelu(self.norm3(self.conv3(x)))
        yield "conv3", x
        x = F.gelu(self.norm4(self.pool4(self.conv4(x))))
        yield "conv4", x
        x = F.gelu(self.norm5(self.conv5(x)))
        yield "conv5", x
        x = F.gelu(self.norm6(self.pool6(self.conv6(x))))
        yield "conv6", x
        x = F.gelu(self.norm7(self.conv7(x)))
        yield "conv7", x
        x = F.adaptive_max_pool2d(x, 1).flatten(1)
        yield "fc8", self.fc8(x) / self.temperature


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ModelInfo:
    """What ``list_models()`` reports for one member of the zoo."""

    name: str
    input_size: int
    default_classes: int
    description: str
    builder: Callable[..., nn.Module]
    # True for models whose input side is an option (``input_size=``): they take a crop of
    # 7/8 of the stored side; False for the fixed-input ImageNet nets (224).
    flexible_input: bool = False

    def input_size_for(self, image_size: int) -> int:
        """The network input side (the training crop) for images stored at ``image_size``.

        Fixed-input nets take their own side (224 of 256, as in the paper). Flexible ones
        take 7/8 of the stored side (32 -> 28, 64 -> 56), the paper's 224/256 ratio, so
        random crops still translate.
        """
        if self.flexible_input:
            return max(8, (image_size * 7 // 8) // 4 * 4)
        return self.input_size

    def num_params(self, num_classes: int | None = None, **options: object) -> int:
        """Parameter count, computed on the meta device (no memory is allocated)."""
        with torch.device("meta"):
            model = self.builder(num_classes=num_classes or self.default_classes, **options)
        return sum(p.numel() for p in model.parameters())


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, input_size: int, default_classes: int, description: str, flexible_input: bool = False):
    """Decorator adding a builder ``fn(num_classes=..., **options)`` to the zoo."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ModelInfo(name, input_size, default_classes, description, fn, flexible_input)
        return fn

    return wrap


@register_model("alexnet", 224, 1000, "the paper's two-tower network: groups=2, LRN, paper init")
def _alexnet(
    num_classes: int = 1000, devices: Sequence[torch.device | str] | None = None, **options
) -> nn.Module:
    if devices is not None:
        return AlexNetSplit(devices, num_classes=num_classes, **options)
    return AlexNet(num_classes=num_classes, **options)


@register_model("alexnet_owt", 224, 1000, "single-column 64-192-384-256-256; loads torchvision weights")
def _alexnet_owt(num_classes: int = 1000, **options) -> nn.Module:
    return AlexNetOWT(num_classes=num_classes, **options)


@register_model(
    "alexnet_small", 32, 10, "5 conv + 3 fc for 32-64 px images; width, norm options", flexible_input=True
)
def _alexnet_small(num_classes: int = 10, **options) -> nn.Module:
    return AlexNetSmall(num_classes=num_classes, **options)


@register_model(
    "alexnet_fast",
    32,
    10,
    "8 layers for 32 px, whitened conv1, BN, GELU: the cifar10 recipe",
    flexible_input=True,
)
def _alexnet_fast(num_classes: int = 10, **options) -> nn.Module:
    return AlexNetFast(num_classes=num_classes, **options)


def list_models() -> list[ModelInfo]:
    """The zoo, in registration order."""
    return list(_REGISTRY.values())


def model_info(name: str) -> ModelInfo:
    """The registry's entry for ``name`` (``KeyError`` naming the zoo if unknown)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int | None = None, **options) -> nn.Module:
    """Build a member of the zoo by name.

    ``num_classes`` defaults to the member's own (1000 for the ImageNet nets, 10 for
    ``alexnet_small``). Options go to the model's constructor, e.g.
    ``create_model('alexnet', devices=['cuda:0', 'cuda:1'])`` for the paper's split or
    ``create_model('alexnet_small', width=0.5, norm='lrn', input_size=64)``.
    """
    info = model_info(name)
    return info.builder(num_classes=num_classes or info.default_classes, **options)
