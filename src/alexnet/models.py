"""The AlexNet model zoo.

Members (``list_models()``):

* ``alexnet``: the network of Krizhevsky, Sutskever & Hinton (NIPS 2012) exactly:
  two towers expressed as ``groups=2`` in conv2/4/5, LRN after conv1 and conv2,
  overlapping 3/2 max pooling, dropout 0.5 on fc6 and fc7, the paper's
  initialisation; 60,965,224 parameters. ``create_model('alexnet', devices=[d0, d1])``
  returns the same network split across two devices as in the paper.
* ``alexnet_owt``: the single-column "one weird trick" network whose state dict
  has exactly the keys and shapes of torchvision's ``alexnet`` (61,100,840 params).
* ``alexnet_small``: the same design for 32-64 px images (CIFAR-10, CPU demos).

Every member maps an image batch to logits with ``model(x)`` and exposes the
activations of its eight stages by name from one forward pass::

    acts = model.forward_layers(x, ["conv1", "conv5", "fc7"])   # dict name -> tensor

Stage outputs are taken after the ReLU (before LRN and pooling) for conv1..conv5,
after the ReLU (before dropout) for fc6/fc7, and are the logits for fc8.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alexnet.layers import LocalResponseNorm, norm_layer

LAYER_NAMES: tuple[str, ...] = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
Stage = tuple[str, Callable[[Tensor], Tensor]]


class FeatureNet(nn.Module):
    """Base class: a network written as eight named stages, conv1 .. fc8.

    Subclasses implement :meth:`stages`; ``forward`` runs them all and
    ``forward_layers`` returns the requested stage outputs of the same pass.
    """

    layer_names: tuple[str, ...] = LAYER_NAMES
    input_size: int = 224
    num_classes: int = 1000
    # Number of conv1 kernels per tower, for pictures of the kernels (0: single column).
    tower_split: int = 0

    def stages(self) -> list[Stage]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        for _, stage in self.stages():
            x = stage(x)
        return x

    def forward_layers(self, x: Tensor, layers: Iterable[str] | None = None) -> dict[str, Tensor]:
        """Activations of the named stages (default: all eight) from one forward pass.

        Stops after the last requested stage, so asking for ``conv1`` alone is cheap.
        """
        wanted = list(self.layer_names if layers is None else layers)
        unknown = [name for name in wanted if name not in self.layer_names]
        if unknown:
            raise KeyError(f"unknown layer(s) {unknown}; choose from {list(self.layer_names)}")
        out: dict[str, Tensor] = {}
        for name, stage in self.stages():
            x = stage(x)
            if name in wanted:
                out[name] = x
                if len(out) == len(set(wanted)):
                    break
        return {name: out[name] for name in wanted}


def init_paper_(model: nn.Module, ones: Sequence[str] = ("conv2", "conv4", "conv5", "fc6", "fc7")) -> None:
    """The paper's initialisation: weights ~ N(0, 0.01); biases 1 in conv2, conv4, conv5,
    fc6 and fc7 (to give the ReLUs positive inputs early on), 0 elsewhere."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.01)
            if module.bias is not None:
                leaf = name.rsplit(".", 1)[-1]
                nn.init.constant_(module.bias, 1.0 if leaf in ones else 0.0)


# --------------------------------------------------------------------------- the paper's network


class AlexNet(FeatureNet):
    """AlexNet as in the paper (Figure 2), the two GPU towers folded into grouped convolutions.

    conv1 96x11x11/4 -> ReLU -> LRN -> pool 3/2   55x55x96  -> 27x27x96
    conv2 256x5x5 (own tower) -> ReLU -> LRN -> pool   27x27x256 -> 13x13x256
    conv3 384x3x3 (both towers) -> ReLU                13x13x384
    conv4 384x3x3 (own tower) -> ReLU                  13x13x384
    conv5 256x3x3 (own tower) -> ReLU -> pool 3/2      13x13x256 -> 6x6x256
    fc6 4096 -> ReLU -> dropout; fc7 4096 -> ReLU -> dropout; fc8 num_classes

    The input is 224x224; conv1 uses padding 2 so that the arithmetic gives the
    paper's 55x55 (equivalently 227x227 unpadded).
    """

    input_size = 224
    tower_split = 48

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, init: str = "paper") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 96, kernel_size=11, stride=4, padding=2)
        self.norm1 = LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0, groups=2)
        self.conv2 = nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=2)
        self.norm2 = LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0, groups=2)
        self.conv3 = nn.Conv2d(256, 384, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=2)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2)  # overlapping pooling
        self.fc6 = nn.Linear(256 * 6 * 6, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)
        self.drop = nn.Dropout(dropout)
        if init == "paper":
            init_paper_(self)
        elif init != "default":
            raise ValueError(f"unknown init {init!r}: expected 'paper' or 'default'")

    def stages(self) -> list[Stage]:
        return [
            ("conv1", lambda x: F.relu(self.conv1(x))),
            ("conv2", lambda x: F.relu(self.conv2(self.pool(self.norm1(x))))),
            ("conv3", lambda x: F.relu(self.conv3(self.pool(self.norm2(x))))),
            ("conv4", lambda x: F.relu(self.conv4(x))),
            ("conv5", lambda x: F.relu(self.conv5(x))),
            ("fc6", lambda x: F.relu(self.fc6(torch.flatten(self.pool(x), 1)))),
            ("fc7", lambda x: F.relu(self.fc7(self.drop(x)))),
            ("fc8", lambda x: self.fc8(self.drop(x))),
        ]


class Tower(nn.Module):
    """One GPU's half of the paper's network (Figure 2, top or bottom)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 48, kernel_size=11, stride=4, padding=2)
        self.norm1 = LocalResponseNorm()
        self.conv2 = nn.Conv2d(48, 128, kernel_size=5, padding=2)
        self.norm2 = LocalResponseNorm()
        self.conv3 = nn.Conv2d(256, 192, kernel_size=3, padding=1)  # sees both towers
        self.conv4 = nn.Conv2d(192, 192, kernel_size=3, padding=1)
        self.conv5 = nn.Conv2d(192, 128, kernel_size=3, padding=1)
        self.fc6 = nn.Linear(256 * 6 * 6, 2048)  # sees both towers
        self.fc7 = nn.Linear(4096, 2048)  # sees both towers


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
    ) -> None:
        super().__init__()
        if len(devices) != 2:
            raise ValueError(f"the split model needs exactly two devices, got {list(devices)}")
        self.devices = [torch.device(d) for d in devices]
        self.num_classes = num_classes
        self.a, self.b = Tower(), Tower()
        self.fc8 = nn.Linear(4096, num_classes)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2)
        self.drop = nn.Dropout(dropout)
        if init == "paper":
            init_paper_(self)
        elif init != "default":
            raise ValueError(f"unknown init {init!r}: expected 'paper' or 'default'")
        self.place()

    def place(self) -> AlexNetSplit:
        """Move each tower to its device (call again after ``.to()`` or loading weights)."""
        d0, d1 = self.devices
        self.a.to(d0)
        self.b.to(d1)
        self.fc8.to(d0)
        return self

    def _exchange(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """Both towers' activations, concatenated on each tower's device (A's channels first)."""
        d0, d1 = self.devices
        return torch.cat([a, b.to(d0)], 1), torch.cat([a.to(d1), b], 1)

    def _run(self, x: Tensor, keep: set[str]) -> dict[str, Tensor]:
        d0, d1 = self.devices
        A, B, pool, drop = self.a, self.b, self.pool, self.drop
        out: dict[str, Tensor] = {}

        def record(name: str, a: Tensor, b: Tensor) -> None:
            if name in keep:
                out[name] = torch.cat([a, b.to(d0)], 1)

        a, b = F.relu(A.conv1(x.to(d0))), F.relu(B.conv1(x.to(d1)))
        record("conv1", a, b)
        a, b = F.relu(A.conv2(pool(A.norm1(a)))), F.relu(B.conv2(pool(B.norm1(b))))
        record("conv2", a, b)
        a, b = self._exchange(pool(A.norm2(a)), pool(B.norm2(b)))
        a, b = F.relu(A.conv3(a)), F.relu(B.conv3(b))
        record("conv3", a, b)
        a, b = F.relu(A.conv4(a)), F.relu(B.conv4(b))
        record("conv4", a, b)
        a, b = F.relu(A.conv5(a)), F.relu(B.conv5(b))
        record("conv5", a, b)
        a, b = self._exchange(torch.flatten(pool(a), 1), torch.flatten(pool(b), 1))
        a, b = F.relu(A.fc6(a)), F.relu(B.fc6(b))
        record("fc6", a, b)
        a, b = self._exchange(drop(a), drop(b))
        a, b = F.relu(A.fc7(a)), F.relu(B.fc7(b))
        record("fc7", a, b)
        out["fc8"] = self.fc8(torch.cat([drop(a), drop(b).to(d0)], 1))
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x, set())["fc8"]

    def forward_layers(self, x: Tensor, layers: Iterable[str] | None = None) -> dict[str, Tensor]:
        wanted = list(self.layer_names if layers is None else layers)
        unknown = [name for name in wanted if name not in self.layer_names]
        if unknown:
            raise KeyError(f"unknown layer(s) {unknown}; choose from {list(self.layer_names)}")
        out = self._run(x, set(wanted))
        return {name: out[name] for name in wanted}

    def stages(self) -> list[Stage]:
        raise NotImplementedError("AlexNetSplit runs its towers jointly; use forward/forward_layers")

    @classmethod
    def from_grouped(cls, model: AlexNet, devices: Sequence[torch.device | str]) -> AlexNetSplit:
        """The split form of a grouped :class:`AlexNet`, with the same weights."""
        split = cls(devices, num_classes=model.num_classes, dropout=model.drop.p, init="default")
        split.load_state_dict(grouped_to_split(model.state_dict()))
        return split.place()

    def to_grouped(self) -> AlexNet:
        """The grouped one-device form with the same weights (on CPU)."""
        model = AlexNet(num_classes=self.num_classes, dropout=self.drop.p, init="default")
        model.load_state_dict(split_to_grouped(self.state_dict()))
        return model


# Output-channel halves: layer -> (sliced along dim 0). Inputs of grouped convs are already per tower.
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


class AlexNetOWT(FeatureNet):
    """Single-column AlexNet ("One weird trick", Krizhevsky 2014): 64-192-384-256-256 kernels,
    no LRN, no groups. Module layout (``features``/``avgpool``/``classifier`` Sequentials)
    and therefore ``state_dict()`` keys and shapes are exactly torchvision's ``alexnet``,
    so its weights load with ``strict=True``."""

    input_size = 224

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def stages(self) -> list[Stage]:
        f, c = self.features, self.classifier
        return [
            ("conv1", lambda x: F.relu(f[0](x))),
            ("conv2", lambda x: F.relu(f[3](f[2](x)))),
            ("conv3", lambda x: F.relu(f[6](f[5](x)))),
            ("conv4", lambda x: F.relu(f[8](x))),
            ("conv5", lambda x: F.relu(f[10](x))),
            ("fc6", lambda x: F.relu(c[1](c[0](torch.flatten(self.avgpool(f[12](x)), 1))))),
            ("fc7", lambda x: F.relu(c[4](c[3](x)))),
            ("fc8", lambda x: c[6](x)),
        ]


# --------------------------------------------------------------------------- small images


class AlexNetSmall(FeatureNet):
    """The AlexNet design scaled to 32-64 px images (CIFAR-10, the embedded dataset).

    Five convolutions and three fully connected layers with ReLU, overlapping 3/2 max
    pooling after conv1, conv2 and conv5, dropout on fc6 and fc7, as in the paper.
    conv1 is 5x5 with stride 1 (stride 2 from 48 px up) since a 32 px image has no room
    for an 11x11/4 stem. ``norm`` picks the normalisation: ``'lrn'`` (the paper's, after
    conv1 and conv2), ``'bn'`` (batch norm after every convolution, trains faster) or
    ``'none'``; ``width`` multiplies every layer's width.
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

        def post(channels: int, lrn: bool) -> nn.Module:
            # BN sits before the ReLU (applied in stages); LRN after it, as in the paper.
            if bn:
                return nn.BatchNorm2d(channels)
            return norm_layer(norm if lrn else "none", channels)

        self.conv1 = conv(3, c1, 5, stride=2 if input_size >= 48 else 1)
        self.norm1 = post(c1, lrn=True)
        self.conv2 = conv(c1, c2, 5)
        self.norm2 = post(c2, lrn=True)
        self.conv3, self.norm3 = conv(c2, c3, 3), post(c3, lrn=False)
        self.conv4, self.norm4 = conv(c3, c4, 3), post(c4, lrn=False)
        self.conv5, self.norm5 = conv(c4, c5, 3), post(c5, lrn=False)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)  # overlapping pooling
        self.avgpool = nn.AdaptiveAvgPool2d((4, 4))
        self.fc6 = nn.Linear(c5 * 16, fc)
        self.fc7 = nn.Linear(fc, fc)
        self.fc8 = nn.Linear(fc, num_classes)
        self.drop = nn.Dropout(dropout)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def _block(self, conv: nn.Module, norm: nn.Module, x: Tensor) -> Tensor:
        if isinstance(norm, nn.BatchNorm2d):
            return F.relu(norm(conv(x)))
        return norm(F.relu(conv(x)))

    def stages(self) -> list[Stage]:
        blk = self._block
        # For LRN the recorded conv1/conv2 activation includes the normalisation
        # (it follows the ReLU); for BN it is the post-ReLU map, as elsewhere.
        return [
            ("conv1", lambda x: blk(self.conv1, self.norm1, x)),
            ("conv2", lambda x: blk(self.conv2, self.norm2, self.pool(x))),
            ("conv3", lambda x: blk(self.conv3, self.norm3, self.pool(x))),
            ("conv4", lambda x: blk(self.conv4, self.norm4, x)),
            ("conv5", lambda x: blk(self.conv5, self.norm5, x)),
            ("fc6", lambda x: F.relu(self.fc6(torch.flatten(self.avgpool(self.pool(x)), 1)))),
            ("fc7", lambda x: F.relu(self.fc7(self.drop(x)))),
            ("fc8", lambda x: self.fc8(self.drop(x))),
        ]


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
