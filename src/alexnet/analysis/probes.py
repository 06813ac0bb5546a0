"""What each layer already knows about the label, and when an image is outside what the model knows.

* **Linear probes** (Alain & Bengio 2016): for every stage before the logits (the model's
  ``hidden_layers``: conv1 .. fc7 in AlexNet's layout, conv1 .. conv7 in ``alexnet_fast``), a
  softmax regression trained once on the *pooled* activations of training images (conv maps
  averaged over space, so a probe sees which channels fire, not where; fc6/fc7 as they
  are). Its validation accuracy measures how linearly decodable the label already is at
  that depth; on one image, the probability it gives the true class is what the
  explorer's third beat shows rising with depth. fc8 needs no probe: it is the model's
  own softmax. Probes are fitted by accelerated full-batch gradient descent on standardised features with a
  fixed L2 penalty (:data:`PROBE_L2`); they are stored with the unit atlas
  (:mod:`alexnet.analysis.atlas`).
* **Outside the model's classes** (:class:`OODCalibration`): the maximum softmax
  probability (Hendrycks & Gimpel 2017) compared with a threshold calibrated on the
  validation split, such that a chosen share (default 95%) of validation images pass.
  Its limits, said plainly wherever it is shown: by construction about 5% of ordinary
  in-class images are flagged too; and a network can be confidently wrong far from its
  training data (Nguyen et al. 2015; Hein et al. 2019), so an image from no known class
  that happens to excite one class strongly is *not* flagged. The verdict is "as far as
  the model's confidence can tell", never a guarantee.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from alexnet.models import LAYER_NAMES, hidden_layers_of

log = logging.getLogger("alexnet")

PROBE_LAYERS: tuple[str, ...] = hidden_layers_of(LAYER_NAMES)  # AlexNet's; a model's own: model.hidden_layers
PROBE_L2 = 1e-3  # per-weight penalty on standardised features: enough to keep 4096-d probes from memorising
PROBE_ITERATIONS = 300


def _fit_softmax(z: Tensor, y: Tensor, num_classes: int, l2: float, iterations: int) -> tuple[Tensor, Tensor]:
    """L2-regularised softmax regression by accelerated gradient descent (FISTA), gradients
    written out: two matmuls a step, no autograd or line search, so the cost is predictable
    (``iterations`` x 2 N D C) on a CPU or a GPU. The step is 1 / L with L the curvature
    bound ``|[z, 1]|_2^2 / (2 N) + 2 l2`` of the loss, from a power iteration."""
    n, d = z.shape
    onehot = F.one_hot(y, num_classes).float()
    za = torch.cat([z, torch.ones(n, 1, device=z.device)], 1)
    v = torch.ones(d + 1, device=z.device) / math.sqrt(d + 1)
    for _ in range(30):  # power iteration on za^T za
        v = za.T @ (za @ v)
        v = v / v.norm().clamp_min(1e-12)
    sigma2 = float((za @ v).pow(2).sum())
    step = 1.0 / (sigma2 / (2 * n) + 2 * l2 + 1e-8)
    w = torch.zeros(d, num_classes, device=z.device)
    b = torch.zeros(num_classes, device=z.device)
    wv, bv, t = w, b, 1.0
    for _ in range(iterations):
        r = (F.softmax(z @ wv + bv, dim=1) - onehot) / n
        w_next = wv - step * (z.T @ r + 2 * l2 * wv)
        b_next = bv - step * r.sum(0)
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        mix = (t - 1) / t_next
        wv, bv = w_next + mix * (w_next - w), b_next + mix * (b_next - b)
        w, b, t = w_next, b_next, t_next
    return w, b


def pooled(activation: Tensor) -> Tensor:
    """A stage's activation as a probe's input: conv maps ``[B, C, H, W]`` averaged over
    space to ``[B, C]``; fully connected activations ``[B, D]`` unchanged (float32)."""
    return (activation.mean((2, 3)) if activation.dim() == 4 else activation.flatten(1)).float()


# --------------------------------------------------------------------------- linear probes


@dataclass
class LinearProbe:
    """Softmax regression on one layer's pooled features: ``softmax(((x - mean) / std) @ weight + bias)``."""

    layer: str
    mean: Tensor  # [D]
    std: Tensor  # [D]
    weight: Tensor  # [D, C]
    bias: Tensor  # [C]
    train_accuracy: float = float("nan")
    val_accuracy: float = float("nan")
    val_true_prob: float = float("nan")  # mean probability of the true class on validation images

    def logits(self, features: Tensor) -> Tensor:
        w = self.weight.to(features.device)
        x = (features.float() - self.mean.to(features.device)) / self.std.to(features.device)
        return x @ w + self.bias.to(features.device)

    def probs(self, features: Tensor) -> Tensor:
        """Class probabilities ``[B, C]`` for pooled features ``[B, D]``."""
        return F.softmax(self.logits(features), dim=1)

    @classmethod
    def fit(
        cls,
        layer: str,
        features: Tensor,
        labels: Tensor,
        num_classes: int,
        l2: float = PROBE_L2,
        iterations: int = PROBE_ITERATIONS,
    ) -> LinearProbe:
        """Fit on ``features`` ``[N, D]`` and integer ``labels`` ``[N]`` (on their device)."""
        x = features.float()
        mean = x.mean(0)
        std = x.std(0, unbiased=False).clamp_min(1e-6)  # dead units: constant, kept harmless
        z = (x - mean) / std
        y = labels.to(z.device).long()
        w, bias = _fit_softmax(z, y, num_classes, l2, iterations)
        probe = cls(layer, mean, std, w, bias)
        with torch.no_grad():
            probe.train_accuracy = float((probe.logits(x).argmax(1) == y).float().mean())
        return probe

    def score(self, features: Tensor, labels: Tensor) -> None:
        """Record validation accuracy and mean true-class probability on held-out features."""
        with torch.no_grad():
            p = self.probs(features)
            y = labels.to(p.device).long()
            self.val_accuracy = float((p.argmax(1) == y).float().mean())
            self.val_true_prob = float(p.gather(1, y.unsqueeze(1)).mean())


@dataclass
class Probes:
    """One :class:`LinearProbe` per layer, over the dataset's classes (``classes``)."""

    probes: dict[str, LinearProbe]
    classes: list[str]
    class_names: list[str]
    train_images: int = 0
    val_images: int = 0

    def layer_probs(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """``{layer: probs [B, C]}`` for pooled features ``{layer: [B, D]}`` (layers without a probe skipped)."""
        return {name: self.probes[name].probs(f) for name, f in features.items() if name in self.probes}

    def summary(self) -> list[dict[str, Any]]:
        """Per layer: validation accuracy and mean true-class probability (for captions and the report)."""
        return [
            {"layer": p.layer, "dim": int(p.weight.shape[0]), "train_accuracy": p.train_accuracy,
             "val_accuracy": p.val_accuracy, "val_true_prob": p.val_true_prob}
            for p in self.probes.values()
        ]

    # ------------------------------------------------------------------ storage (inside the atlas)

    def tensors(self, prefix: str = "probe.") -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for name, p in self.probes.items():
            for key in ("mean", "std", "weight", "bias"):
                out[f"{prefix}{name}.{key}"] = getattr(p, key).detach().cpu().contiguous()
        return out

    def doc(self) -> dict[str, Any]:
        return {"classes": self.classes, "class_names": self.class_names, "train_images": self.train_images,
                "val_images": self.val_images, "layers": self.summary()}

    @classmethod
    def from_stored(cls, doc: dict[str, Any], tensors: dict[str, Tensor], prefix: str = "probe.") -> Probes:
        probes = {}
        for row in doc["layers"]:
            name = row["layer"]
            probes[name] = LinearProbe(
                name, *(tensors[f"{prefix}{name}.{k}"].float() for k in ("mean", "std", "weight", "bias")),
                train_accuracy=float(row["train_accuracy"]), val_accuracy=float(row["val_accuracy"]),
                val_true_prob=float(row["val_true_prob"]),
            )
        return cls(probes, list(doc["classes"]), list(doc["class_names"]), int(doc.get("train_images", 0)),
                   int(doc.get("val_images", 0)))


def fit_probes(
    train_features: dict[str, Tensor],
    train_labels: Tensor,
    classes: Sequence[str],
    class_names: Sequence[str],
    val_features: dict[str, Tensor] | None = None,
    val_labels: Tensor | None = None,
    l2: float = PROBE_L2,
    iterations: int = PROBE_ITERATIONS,
) -> Probes:
    """A probe per layer of ``train_features`` (pooled, ``{layer: [N, D]}``), scored on the validation features."""
    probes: dict[str, LinearProbe] = {}
    for name, feats in train_features.items():
        probe = LinearProbe.fit(name, feats, train_labels, len(classes), l2=l2, iterations=iterations)
        if val_features is not None and val_labels is not None and name in val_features and len(val_labels):
            probe.score(val_features[name], val_labels)
        log.debug("probe %s: train %.3f, val %.3f", name, probe.train_accuracy, probe.val_accuracy)
        probes[name] = probe
    return Probes(probes, list(classes), list(class_names), int(train_labels.shape[0]),
                  0 if val_labels is None else int(val_labels.shape[0]))


# --------------------------------------------------------------------------- outside the classes


@dataclass
class OODCalibration:
    """Threshold on the maximum softmax probability, calibrated on validation images.

    ``threshold`` is the ``1 - keep`` quantile of the validation images' max-softmax, so a
    share ``keep`` of them score at or above it. ``val_scores`` keeps a few quantiles for
    the page to show where an image falls.
    """

    threshold: float
    keep: float
    num_images: int
    num_classes: int
    quantiles: dict[str, float] = field(default_factory=dict)
    score: str = "max_softmax"

    @classmethod
    def fit(cls, probs: Tensor, keep: float = 0.95) -> OODCalibration:
        """Calibrate on validation softmax outputs ``[N, C]`` of in-class images."""
        if probs.shape[0] == 0:
            raise ValueError("no validation images to calibrate the out-of-class threshold on")
        msp = probs.float().max(1).values.cpu()
        qs = {f"{q:.2f}": float(torch.quantile(msp, q)) for q in (0.01, 0.05, 0.25, 0.5, 0.75)}
        return cls(float(torch.quantile(msp, 1 - keep)), keep, int(msp.numel()), int(probs.shape[1]), qs)

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "keep": self.keep, "num_images": self.num_images,
                "num_classes": self.num_classes, "quantiles": self.quantiles, "score": self.score}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OODCalibration:
        return cls(float(d["threshold"]), float(d["keep"]), int(d["num_images"]), int(d["num_classes"]),
                   {str(k): float(v) for k, v in d.get("quantiles", {}).items()}, str(d.get("score", "max_softmax")))


@dataclass
class Verdict:
    """Whether one image looks outside the model's classes, and the evidence for saying so."""

    outside: bool
    score: float  # the image's max-softmax probability
    threshold: float
    num_classes: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"outside": self.outside, "score": self.score, "threshold": self.threshold,
                "num_classes": self.num_classes, "message": self.message}


def outside_classes(probs: Tensor, calibration: OODCalibration) -> list[Verdict]:
    """A :class:`Verdict` per row of softmax outputs ``[B, C]`` (or one ``[C]``).

    ``outside`` when the top probability is below the calibrated threshold. The message
    always says that the model only knows its N classes; a flagged image adds why.
    """
    p = probs.float().reshape(-1, probs.shape[-1])
    out = []
    n = calibration.num_classes
    for score in p.max(1).values.tolist():
        outside = score < calibration.threshold
        base = f"the model only knows these {n} classes"
        if outside:
            msg = (f"{base}; its confidence ({score:.0%}) is below what {calibration.keep:.0%} of validation "
                   f"images reach ({calibration.threshold:.0%}), so this image may show none of them")
        else:
            msg = (f"{base}; its confidence ({score:.0%}) is typical of images of those classes, which does not "
                   f"prove the image shows one")
        out.append(Verdict(outside, float(score), calibration.threshold, n, msg))
    return out


def layer_knowledge(model: Any, meta: Any, probes: Probes, images: Tensor,
                    device: torch.device | str | None = None) -> dict[str, Tensor]:
    """``{layer: probs [B, C_data]}`` for uint8 images ``[B, 3, H, W]``: each probe's class
    probabilities over the dataset's classes (``probes.classes``), then ``fc8``: the model's
    own softmax restricted to those classes and renormalised, so every row of the curve is
    over the same classes and the true label's probability can be followed with depth.
    """
    from alexnet.evaluation import fit_images, label_map

    dev = next(model.parameters()).device if device is None else torch.device(device)
    x = meta.eval_transform().to(dev)(fit_images(images.to(dev), meta.image_size))
    with torch.inference_mode():
        acts = model.forward_layers(x, [*probes.probes, "fc8"])
    out = probes.layer_probs({name: pooled(acts[name]) for name in probes.probes})
    model_probs = F.softmax(acts["fc8"].float(), 1)
    idx = label_map(probes.classes, meta.classes).to(model_probs.device)
    sub = model_probs[:, idx]
    out["fc8"] = sub / sub.sum(1, keepdim=True).clamp_min(1e-12)
    return {k: v.cpu() for k, v in out.items()}
