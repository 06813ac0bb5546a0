"""Feature visualisation by optimisation: the input a unit likes best (Olah et al., Distill 2017).

The image is optimised to maximise one unit: a conv channel's mean activation over space,
or one fully connected unit (fc8: a class's logit). Unregularised, that optimisation
returns high-frequency noise the model happens to respond to; the regularisers of
"Feature Visualization" make the result readable:

* **decorrelated parameterisation**: the image is a Fourier spectrum scaled by ``1/f`` (so
  every spatial frequency starts with about the energy natural images have) and its
  colours are mixed through the square root of the training set's RGB covariance (the
  statistics stored with the model), then squashed to 0..1 by a sigmoid;
* **transformation robustness**: every step sees the image padded, jittered, slightly
  scaled and rotated at random, so only patterns that survive small shifts are kept.

Results are deterministic for a seed; :func:`cached_visualisation` keeps them as PNG files
(e.g. in the model's cache directory beside the atlas) and in memory, so the explorer
computes each unit once.
"""

from __future__ import annotations

import io
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alexnet.checkpoint import ModelMeta
from alexnet.errors import EvaluationError
from alexnet.files import atomic_write_bytes


@dataclass
class FeatureVis:
    """The optimised input (uint8 ``[3, c, c]``) for ``unit`` of ``layer`` and how far it got."""

    layer: str
    unit: int
    image: Tensor
    activation: float  # the objective on the final, untransformed image
    start_activation: float  # ... on the initial image
    steps: int
    seconds: float


def _colour_sqrt(meta: ModelMeta) -> Tensor:
    """``eigvec diag(sqrt(eigval))`` of the training RGB covariance, columns scaled to unit max norm."""
    s = meta.stats.eigvec.float() @ torch.diag(meta.stats.eigval.float().clamp_min(1e-8).sqrt())
    return s / s.norm(dim=0).max()


def _normaliser(meta: ModelMeta, size: int, device: torch.device):
    """0..1 image ``[B, 3, c, c]`` -> the model's normalised input (as the evaluation transform does)."""
    stats = meta.stats
    if meta.norm_mode == "image" and stats.mean_image is not None:
        mi = stats.mean_image.float()
        o = (mi.shape[-1] - size) // 2
        mean = mi[:, o : o + size, o : o + size].unsqueeze(0).to(device)
        return lambda x: x * 255.0 - mean
    mean = stats.mean.float().view(1, 3, 1, 1).to(device)
    std = stats.std.float().view(1, 3, 1, 1).to(device)
    return lambda x: (x * 255.0 - mean) / std


def _objective(model: nn.Module, layer: str, unit: int, x: Tensor) -> Tensor:
    act = model.forward_layers(x, [layer])[layer]
    if unit < 0 or unit >= act.shape[1]:
        raise EvaluationError(f"{layer} has {act.shape[1]} units; no unit {unit}")
    a = act[:, unit]
    return a.mean((1, 2)) if a.dim() == 3 else a


def visualise(
    model: nn.Module,
    meta: ModelMeta,
    layer: str,
    unit: int,
    *,
    steps: int = 128,
    lr: float = 0.05,
    seed: int = 0,
) -> FeatureVis:
    """Optimise an input for ``unit`` of ``layer`` (conv: channel mean; fc: the unit itself)."""
    if layer not in getattr(model, "layer_names", ()):
        raise EvaluationError(f"unknown layer {layer!r}; choose from {list(getattr(model, 'layer_names', ()))}")
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    c = meta.input_size
    g = torch.Generator(device="cpu").manual_seed(seed)
    fy = torch.fft.fftfreq(c)[:, None]
    fx = torch.fft.rfftfreq(c)[None, :]
    scale = (1.0 / torch.maximum(torch.sqrt(fx * fx + fy * fy), torch.tensor(1.0 / c))).to(device)
    spectrum = (0.05 * torch.randn(1, 3, c, c // 2 + 1, 2, generator=g)).to(device).requires_grad_(True)
    colour = _colour_sqrt(meta).to(device)
    normalise = _normaliser(meta, c, device)

    def image() -> Tensor:
        z = torch.view_as_complex(spectrum) * scale
        pix = torch.fft.irfft2(z, s=(c, c), norm="ortho") / 4.0  # [1, 3, c, c]; /4: Lucid's constant
        pix = torch.einsum("ij,bjhw->bihw", colour, pix)
        return torch.sigmoid(pix)

    pad, jitter = max(1, c // 16), max(1, c // 28)

    def transform(x: Tensor, gen: torch.Generator) -> Tensor:
        x = F.pad(x, (pad,) * 4, mode="constant", value=0.5)
        dy, dx = torch.randint(-jitter, jitter + 1, (2,), generator=gen).tolist()
        x = torch.roll(x, (dy, dx), (2, 3))
        s = [0.95, 0.975, 1.0, 1.025, 1.05][int(torch.randint(0, 5, (1,), generator=gen))]
        angle = math.radians(float(torch.randint(-5, 6, (1,), generator=gen)))
        theta = torch.tensor([[math.cos(angle) / s, -math.sin(angle) / s, 0.0],
                              [math.sin(angle) / s, math.cos(angle) / s, 0.0]], device=x.device).unsqueeze(0)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        o = (x.shape[-1] - c) // 2
        return x[..., o : o + c, o : o + c]

    with torch.no_grad():
        start = float(_objective(model, layer, unit, normalise(image())))
    opt = torch.optim.Adam([spectrum], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            loss = -_objective(model, layer, unit, normalise(transform(image(), g))).sum()
            loss.backward()
            opt.step()
    with torch.no_grad():
        final = image()
        end = float(_objective(model, layer, unit, normalise(final)))
    model.train(was_training)
    img = (final[0] * 255).round().clamp(0, 255).to(torch.uint8).cpu()
    return FeatureVis(layer, unit, img, end, start, steps, time.perf_counter() - t0)


# --------------------------------------------------------------------------- cache


_MEMORY: dict[tuple[str, str, int, int, int], FeatureVis] = {}
_LOCK = threading.Lock()


def cached_visualisation(
    model: nn.Module,
    meta: ModelMeta,
    layer: str,
    unit: int,
    directory: str | Path | None = None,
    *,
    steps: int = 128,
    seed: int = 0,
    digest: str | None = None,
) -> tuple[Tensor, bool]:
    """``(uint8 image [3, c, c], computed_now)`` for a unit: from memory, else from
    ``directory/<layer>-<unit>-s<steps>-r<seed>.png``, else optimised and stored there.

    ``directory`` should be specific to the weights (e.g. ``model_cache_dir(digest) / "featvis"``);
    memory entries are keyed by the weights' digest (pass ``digest`` when known: hashing
    a 61M-parameter model takes a moment).
    """
    from PIL import Image

    from alexnet.analysis.retrieval import weights_fingerprint

    key = (digest or weights_fingerprint(model), layer, unit, steps, seed)
    with _LOCK:
        if key in _MEMORY:
            return _MEMORY[key].image, False
    path = None if directory is None else Path(directory) / f"{layer}-{unit}-s{steps}-r{seed}.png"
    if path is not None and path.is_file():
        with Image.open(path) as im:
            arr = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
        return arr, False
    vis = visualise(model, meta, layer, unit, steps=steps, seed=seed)
    if path is not None:
        buf = io.BytesIO()
        Image.fromarray(vis.image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
        atomic_write_bytes(path, buf.getvalue())
    with _LOCK:
        _MEMORY[key] = vis
        while len(_MEMORY) > 256:
            _MEMORY.pop(next(iter(_MEMORY)))
    return vis.image, True
