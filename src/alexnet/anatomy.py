"""The network's anatomy: every layer's arithmetic, read off the built model.

The lecture slides teach AlexNet by arithmetic: a 227x227x3 input, 96 kernels of
11x11x3 at stride 4, an output of 55x55x96 = 290,400 neurons, ``11*11*3 + 1 = 364``
parameters per kernel and ``96 * 364 = 34,944`` for the layer; 60 million parameters,
650,000 neurons and 630 million connections in all. :func:`anatomy` computes the same
figures for any model of the zoo with its actual options, so that they are the model's
own and not copied from a slide:

* one forward pass (on the meta device for :func:`model_anatomy`, which allocates
  nothing) with forward hooks on every ``Conv2d``, ``Linear``, pooling and
  normalisation module records what each layer received and produced, in execution
  order; kernel size, stride, padding and groups are read from the modules, so the
  rows do not depend on what the model's attributes are called;
* the receptive field and the stride on the input ("jump") are propagated through
  the spatial layers in that order: ``rf += (k - 1) * jump``, ``jump *= stride``;
* *neurons* are the units computed by weights (conv and fully connected outputs);
  pooling and normalisation rows re-shape or re-scale those units and add none;
* *connections* are multiply-adds per image: for a unit, one per weight it applies
  (its fan-in, without the bias), summed over all units, i.e. weights x positions for
  a convolution. docs/anatomy.md compares the paper network's total with the slides'
  630 million.

Library code: nothing here prints; :func:`format_layers` returns the table as text.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from alexnet.layers import LocalResponseNorm
from alexnet.models import AlexNet, AlexNetSplit, list_models, model_info

_NORMS = (LocalResponseNorm, nn.LocalResponseNorm)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass(frozen=True)
class LayerRow:
    """One layer's arithmetic for one image.

    ``label`` names the layer as the paper does (conv1 .. fc8 for the weighted layers,
    ``pool1``, ``norm1`` ... after the weighted layer they follow); ``module`` is the
    module's own qualified name in the model. Shapes leave out the batch dimension.
    """

    label: str
    module: str
    kind: str  # "conv" | "fc" | "pool" | "norm" | "bn"
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kernel: int | None = None
    stride: int | None = None
    padding: int | None = None
    groups: int = 1
    neurons: int = 0
    params: int = 0
    params_formula: str = ""
    connections: int = 0
    connections_formula: str = ""
    rf: int | None = None  # receptive field on the input, pixels (None: the whole input)
    jump: int | None = None  # distance on the input between neighbouring units, pixels
    towers: str = ""  # per-tower arithmetic for grouped layers
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Anatomy:
    """The layer rows of one model at one input size, and their totals."""

    model: str
    input_shape: tuple[int, int, int]
    rows: list[LayerRow] = field(default_factory=list)
    total_params: int = 0  # every parameter of the model (equals the rows' sum: tested)

    @property
    def neurons(self) -> int:
        return sum(r.neurons for r in self.rows)

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def connections(self) -> int:
        return sum(r.connections for r in self.rows)

    @property
    def conv_connections(self) -> int:
        return sum(r.connections for r in self.rows if r.kind == "conv")

    @property
    def fc_connections(self) -> int:
        return sum(r.connections for r in self.rows if r.kind == "fc")

    def row(self, label: str) -> LayerRow:
        for r in self.rows:
            if r.label == label:
                return r
        raise KeyError(f"no layer {label!r}; layers: {[r.label for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "rows": [r.to_dict() for r in self.rows],
            "totals": {
                "neurons": self.neurons,
                "params": self.params,
                "model_params": self.total_params,
                "connections": self.connections,
                "conv_connections": self.conv_connections,
                "fc_connections": self.fc_connections,
                "conv_neurons": sum(r.neurons for r in self.rows if r.kind == "conv"),
            },
        }


def _pair(v: int | tuple[int, ...]) -> int:
    """A square kernel/stride/padding as one int (the zoo uses square ones only)."""
    if isinstance(v, tuple):
        if len(set(v)) != 1:
            raise ValueError(f"non-square layer geometry {v} is not supported")
        return int(v[0])
    return int(v)


def _adaptive_geometry(size_in: int, size_out: int) -> tuple[int, int]:
    """(kernel, stride) of an adaptive pooling from ``size_in`` to ``size_out``.

    Exact when the sizes divide (PyTorch's windows are then regular); otherwise the
    widest window PyTorch uses and the average step, which is what a receptive field
    needs (the largest extent any unit sees).
    """
    if size_in % size_out == 0:
        step = size_in // size_out
        return step, step
    widest = max(math.ceil((i + 1) * size_in / size_out) - (i * size_in) // size_out for i in range(size_out))
    return widest, max(1, size_in // size_out)


def _leaves(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, *_NORMS, *_POOLS)):
            yield name, module


def anatomy(model: nn.Module, input_size: int | None = None, name: str | None = None) -> Anatomy:
    """The layer table of ``model`` for one ``input_size`` x ``input_size`` RGB image.

    Runs one forward pass with hooks: on the meta device when the model's parameters
    are there (nothing computed), else a zero image on the model's own device under
    ``no_grad`` in eval mode (the model's train/eval mode is restored). The paper's
    two-device form is analysed as its one-device equivalent (same arithmetic).
    """
    if isinstance(model, AlexNetSplit):  # the same arithmetic as the grouped form, which runs as one
        with torch.device("meta"):
            model = AlexNet(num_classes=model.num_classes, init="default")
    size = int(input_size or getattr(model, "input_size", 224))
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    events: list[tuple[str, nn.Module, tuple[int, ...], tuple[int, ...]]] = []

    def hook(qualname: str):
        def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            events.append((qualname, module, tuple(inputs[0].shape[1:]), tuple(output.shape[1:])))

        return record

    handles = [module.register_forward_hook(hook(qn)) for qn, module in _leaves(model)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    weighted = [e for e in events if isinstance(e[1], nn.Conv2d | nn.Linear)]
    stage_names = list(getattr(model, "layer_names", ()))
    if len(stage_names) != len(weighted):  # not the eight-stage layout: number them
        stage_names = [f"{'conv' if isinstance(e[1], nn.Conv2d) else 'fc'}{i + 1}" for i, e in enumerate(weighted)]

    rows: list[LayerRow] = []
    rf, jump = 1, 1
    seen = 0  # weighted layers so far: pool/norm rows are numbered after the one they follow
    for qualname, module, shape_in, shape_out in events:
        number = seen if seen else 1
        if isinstance(module, nn.Conv2d):
            label = stage_names[seen]
            seen += 1
            row = _conv_row(label, qualname, module, shape_in, shape_out, rf, jump)
            rf, jump = row.rf or rf, row.jump or jump
        elif isinstance(module, nn.Linear):
            label = stage_names[seen]
            seen += 1
            row = _fc_row(label, qualname, module, shape_in, shape_out)
        elif isinstance(module, _POOLS):
            adaptive = isinstance(module, nn.AdaptiveAvgPool2d)
            row = _pool_row(f"{'avgpool' if adaptive else 'pool'}{number}", qualname, module, shape_in, shape_out, rf, jump)
            rf, jump = row.rf or rf, row.jump or jump
        elif isinstance(module, nn.BatchNorm2d):
            c = shape_out[0]
            params = sum(p.numel() for p in module.parameters())
            row = LayerRow(
                f"bn{number}", qualname, "bn", shape_in, shape_out, params=params,
                params_formula=f"2 x {c} = {params:,}" if params else "0",
                rf=rf, jump=jump, note="batch norm: a scale and a shift per channel",
            )
        else:  # local response normalisation
            groups = int(getattr(module, "groups", 1))
            within = f" within each tower's {shape_out[0] // groups} maps" if groups > 1 else ""
            row = LayerRow(
                f"norm{number}", qualname, "norm", shape_in, shape_out, groups=groups, rf=rf, jump=jump,
                note=f"local response normalisation over {module.size} adjacent maps{within}; no parameters",
            )
        rows.append(row)
    model_params = sum(p.numel() for p in model.parameters())
    return Anatomy(name or type(model).__name__, (3, size, size), rows, model_params)


def _conv_row(
    label: str, qualname: str, m: nn.Conv2d, shape_in: tuple[int, ...], shape_out: tuple[int, ...], rf: int, jump: int
) -> LayerRow:
    k, s, p, g = _pair(m.kernel_size), _pair(m.stride), _pair(m.padding), int(m.groups)
    cin_g, cout = m.in_channels // g, m.out_channels
    c, h, w = shape_out
    neurons = c * h * w
    fan_in = k * k * cin_g
    bias = 1 if m.bias is not None else 0
    per_kernel = fan_in + bias
    params = cout * per_kernel
    b = " + 1" if bias else ""
    params_formula = f"{cout} x ({k}*{k}*{cin_g}{b}) = {params:,}"
    connections = neurons * fan_in
    connections_formula = f"{h}*{w}*{c} x {k}*{k}*{cin_g} = {connections:,}"
    towers = ""
    if g > 1:
        per = cout // g
        towers = (
            f"{g} towers of {per} kernels, each over its own {cin_g} of the {m.in_channels} input maps: "
            f"{per} x ({k}*{k}*{cin_g}{b}) = {per * per_kernel:,} parameters, "
            f"{h}*{w}*{per} x {k}*{k}*{cin_g} = {h * w * per * fan_in:,} connections"
        )
    note = ""
    if label == "conv1" and p:
        unpadded = (h - 1) * s + k
        note = (
            f"padding {p} on a {shape_in[1]}-pixel input gives the same {h}x{w} map as an unpadded "
            f"{unpadded}x{unpadded} input"
        )
    return LayerRow(
        label, qualname, "conv", shape_in, shape_out, k, s, p, g, neurons, params, params_formula,
        connections, connections_formula, rf + (k - 1) * jump, jump * s, towers, note,
    )


def _fc_row(label: str, qualname: str, m: nn.Linear, shape_in: tuple[int, ...], shape_out: tuple[int, ...]) -> LayerRow:
    n_in, n_out = m.in_features, m.out_features
    bias = 1 if m.bias is not None else 0
    params = n_out * (n_in + bias)
    b = " + 1" if bias else ""
    connections = n_out * n_in
    return LayerRow(
        label, qualname, "fc", shape_in, shape_out, neurons=n_out, params=params,
        params_formula=f"{n_out} x ({n_in:,}{b}) = {params:,}", connections=connections,
        connections_formula=f"{n_out} x {n_in:,} = {connections:,}", rf=None, jump=None,
        note="fully connected: every unit sees every input, i.e. the whole image",
    )


def _pool_row(
    label: str, qualname: str, m: nn.Module, shape_in: tuple[int, ...], shape_out: tuple[int, ...], rf: int, jump: int
) -> LayerRow:
    if isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        k, s = _adaptive_geometry(shape_in[1], shape_out[1])
        p = 0
        what = "adaptive average" if isinstance(m, nn.AdaptiveAvgPool2d) else "adaptive max"
        if k == 1 and s == 1:
            what += f" (identity at this size: {shape_in[1]}x{shape_in[2]} in and out)"
    else:
        k, s, p = _pair(m.kernel_size), _pair(m.stride), _pair(m.padding)
        what = "max" if isinstance(m, nn.MaxPool2d) else "average"
        if k > s:
            what = f"overlapping {what} ({k}x{k} windows {s} apart)"
    return LayerRow(
        label, qualname, "pool", shape_in, shape_out, k, s, p, rf=rf + (k - 1) * jump, jump=jump * s,
        note=f"{what} pooling; no parameters",
    )


def model_anatomy(name: str, num_classes: int | None = None, input_size: int | None = None, **options: Any) -> Anatomy:
    """The layer table of zoo member ``name`` built with ``options``, on the meta device.

    ``input_size`` defaults to the model's own (224 for the ImageNet nets; the
    ``input_size`` option for ``alexnet_small``).
    """
    info = model_info(name)
    if input_size is not None and info.flexible_input:  # the input side is a constructor option
        options.setdefault("input_size", input_size)
    with torch.device("meta"):
        model = info.builder(num_classes=num_classes or info.default_classes, **options)
    return anatomy(model, input_size, name=name)


def zoo_anatomies() -> list[Anatomy]:
    """Every member of the zoo with its default options."""
    return [model_anatomy(m.name) for m in list_models()]


# --------------------------------------------------------------------------- text


def _shape(shape: tuple[int, ...]) -> str:
    if len(shape) == 3:
        c, h, w = shape
        return f"{h}x{w}x{c}"
    return "x".join(str(d) for d in shape)


def format_layers(a: Anatomy, towers: bool = True) -> str:
    """The anatomy as a fixed-width table, with totals (and per-tower lines for grouped layers)."""
    header = ("layer", "output", "neurons", "parameters", "connections (MACs)", "RF / stride")
    rows: list[tuple[str, ...]] = [header]
    tower_lines: dict[int, str] = {}
    for r in a.rows:
        geometry = f" {r.kernel}x{r.kernel}/{r.stride}" if r.kernel and r.kind in ("conv", "pool") else ""
        if r.kind == "conv" and r.padding:
            geometry += f" p{r.padding}"
        if r.groups > 1 and r.kind == "conv":
            geometry += f" g{r.groups}"
        rf = "all" if r.rf is None else f"{r.rf} / {r.jump}"
        rows.append(
            (
                f"{r.label}{geometry}",
                _shape(r.out_shape),
                f"{r.neurons:,}" if r.neurons else "-",
                r.params_formula or "-",
                f"{r.connections:,}" if r.connections else "-",
                rf,
            )
        )
        if towers and r.towers:
            tower_lines[len(rows) - 1] = r.towers
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {2, 4}
    lines = []
    for i, row in enumerate(rows):
        cells = [cell.rjust(widths[j]) if j in right else cell.ljust(widths[j]) for j, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
        if i in tower_lines:
            lines.append(f"    {tower_lines[i]}")
    c, h, w = a.input_shape
    lines.append("")
    lines.append(f"{a.model}, input {h}x{w}x{c}:")
    lines.append(
        f"  neurons      {a.neurons:>13,}  (conv {sum(r.neurons for r in a.rows if r.kind == 'conv'):,})"
    )
    lines.append(f"  parameters   {a.params:>13,}")
    lines.append(
        f"  connections  {a.connections:>13,}  multiply-adds per image "
        f"(conv {a.conv_connections:,} + fc {a.fc_connections:,})"
    )
    lines.append("  RF / stride: receptive field and distance between units, in input pixels")
    return "\n".join(lines)
