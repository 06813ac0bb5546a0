"""Why this label: occlusion sensitivity and Grad-CAM on the loaded model, through Captum.

* **Occlusion** (Zeiler & Fergus 2014, Figure 7): a grey square slides over the network's
  input crop and the drop in the chosen class's *probability* is recorded at every
  position (Captum's ``Occlusion``; overlapping windows are averaged). "Grey" is the
  training set's mean colour, which is 0 after the model's normalisation, so the square
  removes information without adding a colour the model never saw. Positive values: hiding
  this region lowers the class's probability (evidence for it); negative: evidence against.
* **Grad-CAM** (Selvaraju et al. 2017; Captum's ``LayerGradCam``): the stage's activation
  maps (after its ReLU, exactly what ``forward_layers`` returns) weighted by the spatially
  averaged gradient of the class's logit, summed over channels, ReLU'd, and upsampled
  bilinearly to the input crop. Default stage: the model's last convolution (conv5 in
  AlexNet's layout, conv7 in ``alexnet_fast``).
* **Sanity check** (Adebayo et al. 2018): a saliency method that explains the *model* must
  change when the model's weights are randomised. :func:`sanity_check` re-initialises every
  convolution and linear layer of a copy and returns the Spearman rank correlation between
  the maps before and after; values near 0 pass, near 1 (an edge detector in disguise) fail.

:class:`Attributor` holds one model, batches images, and caches results (bounded LRU keyed by
the image bytes, method, class and parameters), so the explorer's endpoints can call it per
request. Every map is at the network's input resolution (``meta.input_size``) and refers to
the centre crop that :func:`alexnet.analysis.atlas.centre_crop` returns.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alexnet.checkpoint import ModelMeta
from alexnet.errors import EvaluationError
from alexnet.evaluation import fit_images
from alexnet.lru import LRU

METHODS = ("occlusion", "gradcam")


def _consumer(model: nn.Module, layer: str, example: Tensor) -> nn.Module | None:
    """The module that takes ``layer``'s activation as its input, found on one forward pass
    by tensor identity (so it does not depend on what a model calls its modules): the next
    pool, normalisation, dropout or convolution of the paper's table. None when the
    activation goes on through a function only (``alexnet_fast``'s conv7, into a global max
    pool written as ``F.adaptive_max_pool2d``)."""
    if layer not in getattr(model, "layer_names", ()):
        raise EvaluationError(f"unknown layer {layer!r}; choose from {list(getattr(model, 'layer_names', ()))}")
    inputs: list[tuple[Tensor, nn.Module]] = []  # tensors kept alive, so their ids stay unique
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_pre_hook(lambda m, args: inputs.append((args[0], m)) if args else None)
             for m in leaves]
    try:
        with torch.no_grad():
            act = model.forward_layers(example, [layer, "fc8"])[layer]
    finally:
        for h in hooks:
            h.remove()
    if layer == model.layer_names[-1]:
        raise EvaluationError(f"{type(model).__name__}: no module takes {layer}'s activation (the last layer has none)")
    for tensor, module in inputs:
        if tensor is act:
            return module
    return None


class _Tapped(nn.Module):
    """The model as one module whose ``layer`` activation passes through ``self.tap`` (an
    identity) on its way to the next module, so Captum's layer methods see the activation
    exactly as the model records it (post-ReLU; after LRN where the model normalises there)."""

    def __init__(self, model: nn.Module, layer: str, consumer: nn.Module) -> None:
        super().__init__()
        self.model, self.layer, self.tap = model, layer, nn.Identity()
        self._consumer = consumer

    def forward(self, x: Tensor) -> Tensor:
        hook = self._consumer.register_forward_pre_hook(lambda m, args: (self.tap(args[0]), *args[1:]))
        try:
            return self.model(x)
        finally:
            hook.remove()


def _gradcam_from_rows(model: nn.Module, layer: str, x: Tensor, targets: list[int], relu: bool) -> Tensor:
    """Grad-CAM ``[B, 1, h, w]`` at a ``layer`` whose activation no module takes (see
    :func:`_consumer`), so Captum has nothing to hook: the activation is the very tensor
    the model's :meth:`~alexnet.models.FeatureNet.rows` yield and compute on from, the
    target logits are differentiated with respect to it, and the arithmetic is Captum's
    ``LayerGradCam`` (gradients averaged over space, times the maps, summed over channels)."""
    act = logits = None
    for name, out in model.rows(x):
        if name == layer:
            act = out
        logits = out
    if not isinstance(act, Tensor) or act.dim() != 4 or logits is None:
        raise EvaluationError(f"{type(model).__name__}: Grad-CAM needs {layer}'s maps as one [B, C, H, W] tensor")
    index = torch.as_tensor(targets, device=logits.device).view(-1, 1)
    (grad,) = torch.autograd.grad(logits.gather(1, index).sum(), act)
    cam = torch.sum(torch.mean(grad, dim=(2, 3), keepdim=True) * act, dim=1, keepdim=True)
    return F.relu(cam) if relu else cam


@dataclass
class AttributionMap:
    """One map: ``values`` ``[H, W]`` (float32, input-crop resolution) for class ``target``."""

    method: str
    target: int
    values: Tensor
    prob: float  # the model's probability of ``target`` on the unoccluded image
    seconds: float
    params: dict[str, Any]

    def normalised(self) -> Tensor:
        """``values`` scaled by their largest magnitude to ``[-1, 1]`` (all zeros stay zeros)."""
        m = float(self.values.abs().max())
        return self.values / m if m > 0 else self.values.clone()

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "target": self.target, "prob": self.prob, "seconds": self.seconds,
                "params": self.params, "shape": list(self.values.shape)}


def _as_batch(images: Tensor) -> Tensor:
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
        raise EvaluationError(f"expected uint8 images [B, 3, H, W], got {images.dtype} {list(images.shape)}")
    return images


def default_window(input_size: int) -> tuple[int, int]:
    """Occlusion square and stride: a seventh of the input side (32 px of 224, 8 of 56), half-overlapping."""
    window = max(3, round(input_size / 7))
    return window, max(1, window // 2)


class Attributor:
    """Occlusion and Grad-CAM for one model, batched and cached."""

    def __init__(self, model: nn.Module, meta: ModelMeta, device: torch.device | str | None = None,
                 cache_size: int = 128) -> None:
        from alexnet.devices import resolve_device

        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.meta = meta
        self.transform = meta.eval_transform().to(self.device)
        self._cache: LRU[AttributionMap] = LRU(cache_size)

    # ------------------------------------------------------------------ helpers

    def inputs(self, images: Tensor) -> Tensor:
        """Normalised centre crops ``[B, 3, c, c]`` of uint8 images (any size: brought to the stored side)."""
        return self.transform(fit_images(_as_batch(images).to(self.device), self.meta.image_size))

    def _targets(self, x: Tensor, targets: int | Sequence[int] | None) -> tuple[list[int], list[float]]:
        with torch.no_grad():
            probs = F.softmax(self.model(x).float(), 1)
        if targets is None:
            chosen = probs.argmax(1).tolist()
        elif isinstance(targets, int):
            chosen = [targets] * x.shape[0]
        else:
            chosen = [int(t) for t in targets]
        if len(chosen) != x.shape[0]:
            raise EvaluationError(f"{len(chosen)} targets for {x.shape[0]} images")
        bad = [t for t in chosen if not 0 <= t < self.meta.num_classes]
        if bad:
            raise EvaluationError(f"class index {bad[0]} outside 0..{self.meta.num_classes - 1}")
        return chosen, [float(probs[i, t]) for i, t in enumerate(chosen)]

    def _cached(self, method: str, images: Tensor, targets: int | Sequence[int] | None, params: dict[str, Any],
                compute) -> list[AttributionMap]:
        images = _as_batch(images).cpu()
        x = self.inputs(images)
        chosen, probs = self._targets(x, targets)
        keys = [
            hashlib.sha1(images[i].numpy().tobytes() + repr((tuple(images[i].shape), method, t, sorted(params.items()))).encode()).hexdigest()
            for i, t in enumerate(chosen)
        ]
        out: list[AttributionMap | None] = [self._cache.get(k) for k in keys]
        todo = [i for i, m in enumerate(out) if m is None]
        if todo:
            start = time.perf_counter()
            maps = compute(x[todo], [chosen[i] for i in todo])
            each = (time.perf_counter() - start) / len(todo)
            for j, i in enumerate(todo):
                out[i] = self._cache.put(
                    keys[i], AttributionMap(method, chosen[i], maps[j].float().cpu(), probs[i], each, dict(params)))
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ methods

    def occlusion(self, images: Tensor, targets: int | Sequence[int] | None = None, *, window: int | None = None,
                  stride: int | None = None, per_eval: int = 64) -> list[AttributionMap]:
        """Drop in the probability of each image's ``target`` (default: the predicted class)
        when a grey ``window`` square covers each position (default :func:`default_window`)."""
        from captum.attr import Occlusion

        w0, s0 = default_window(self.meta.input_size)
        window, stride = window or w0, stride or s0
        if not 1 <= window <= self.meta.input_size or stride < 1:
            raise EvaluationError(f"occlusion window {window} / stride {stride} do not fit a {self.meta.input_size} px input")

        def compute(x: Tensor, t: list[int]) -> Tensor:
            occ = Occlusion(lambda inp: F.softmax(self.model(inp).float(), 1))
            with torch.no_grad():
                attr = occ.attribute(x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                                     baselines=0.0, target=t, perturbations_per_eval=per_eval)
            return attr[:, 0]

        return self._cached("occlusion", images, targets, {"window": window, "stride": stride}, compute)

    def gradcam(self, images: Tensor, targets: int | Sequence[int] | None = None, *,
                layer: str | None = None, relu: bool = True) -> list[AttributionMap]:
        """Grad-CAM of each image's ``target`` (default: the predicted class) at ``layer``
        (default: the model's last convolution) (``relu=False``: keep the negative evidence
        that Grad-CAM's final ReLU removes)."""
        from captum.attr import LayerAttribution, LayerGradCam

        if layer is None:
            convs = getattr(self.model, "conv_layers", ())
            if not convs:
                raise EvaluationError(f"{type(self.model).__name__} has no convolution for Grad-CAM")
            layer = convs[-1]

        size = self.meta.input_size
        consumer = _consumer(self.model, layer, torch.zeros(1, 3, size, size, device=self.device))
        tapped = None if consumer is None else _Tapped(self.model, layer, consumer)

        def compute(x: Tensor, t: list[int]) -> Tensor:
            with torch.enable_grad():
                if tapped is not None:
                    cam = LayerGradCam(tapped, tapped.tap)
                    attr = cam.attribute(x.clone().requires_grad_(True), target=t, relu_attributions=relu)
                else:
                    attr = _gradcam_from_rows(self.model, layer, x.clone().requires_grad_(True), t, relu)
            return LayerAttribution.interpolate(attr.detach(), (size, size), "bilinear")[:, 0]

        return self._cached("gradcam", images, targets, {"layer": layer, "relu": relu}, compute)

    def explain(self, images: Tensor, method: str, targets: int | Sequence[int] | None = None,
                **params: Any) -> list[AttributionMap]:
        """``occlusion`` or ``gradcam`` by name (for endpoints that take the method as a string)."""
        if method not in METHODS:
            raise EvaluationError(f"unknown attribution method {method!r}; choose from {', '.join(METHODS)}")
        return getattr(self, method)(images, targets, **params)


# --------------------------------------------------------------------------- sanity check


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with every convolution and linear layer re-initialised (PyTorch's
    default initialisation, seeded); normalisation layers are kept, as in Adebayo et al."""
    twin = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in twin.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                m.reset_parameters()
    return twin


def _ranks(x: Tensor) -> Tensor:
    """Ranks of a flat tensor, ties given their average rank (as Spearman's coefficient needs)."""
    _, inverse, counts = torch.unique(x.flatten().double(), return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts  # rank of the first element of each distinct value
    return (first.double() + (counts.double() - 1) / 2)[inverse]


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two maps; NaN when either is constant (no ranking to compare)."""
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denom if denom > 0 else float("nan")


@dataclass
class SanityResult:
    """Rank correlations between each image's map on the model and on its randomised twin."""

    method: str
    correlations: list[float]

    @property
    def mean_abs(self) -> float:
        """Mean absolute correlation over the images whose maps were not constant (NaN if none)."""
        finite = [abs(c) for c in self.correlations if math.isfinite(c)]
        return sum(finite) / len(finite) if finite else float("nan")

    def passed(self, limit: float = 0.5) -> bool:
        """True when the maps changed: mean absolute rank correlation below ``limit``."""
        return self.mean_abs < limit


def sanity_check(model: nn.Module, meta: ModelMeta, images: Tensor, method: str = "gradcam",
                 targets: int | Sequence[int] | None = None, seed: int = 0, **params: Any) -> SanityResult:
    """Adebayo et al.'s model-randomisation test for ``method`` on ``images``: the same
    classes (by default the trained model's predictions) explained by both models. Grad-CAM
    is compared before its final ReLU (Adebayo et al. compare raw maps; a ReLU'd map of
    a class with only negative evidence is all zeros and has no ranking to compare)."""
    if method == "gradcam":
        params.setdefault("relu", False)
    device = next(model.parameters()).device
    trained = Attributor(model, meta, device=device)
    x = trained.inputs(_as_batch(images))
    chosen, _ = trained._targets(x, targets)
    before = trained.explain(images, method, chosen, **params)
    after = Attributor(randomised(model, seed), meta, device=device).explain(images, method, chosen, **params)
    return SanityResult(method, [spearman(a.values, b.values) for a, b in zip(before, after, strict=True)])


def overlay(crop: Tensor, values: Tensor, alpha: float = 0.55) -> Tensor:
    """uint8 ``[3, c, c]``: the input crop under a map (red: evidence for the class, blue:
    against; scaled by the map's largest magnitude), for the command line and the report."""
    v = values.float()
    m = float(v.abs().max())
    v = v / m if m > 0 else v
    red, blue = v.clamp(min=0), (-v).clamp(min=0)
    heat = torch.stack([red, torch.zeros_like(v), blue]) * 255
    weight = alpha * torch.maximum(red, blue).unsqueeze(0)
    out = crop.float() * (1 - weight) + heat * weight
    return out.round().clamp(0, 255).to(torch.uint8)
