"""What the explorer's engine and its evidence share: rendering maps as pictures, and the
result of one image's forward pass (:class:`Analysis`). A module of its own so that the
engine and :mod:`alexnet.explorer.evidence` both import it without importing each other."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from alexnet.data.decode import encode_jpeg

__all__ = ["Analysis", "data_url", "heatmap_rgb", "jpeg_url", "overlay", "png_bytes"]


# --------------------------------------------------------------------------- rendering


def _colormap_lut(name: str = "inferno") -> np.ndarray:
    """[256, 3] uint8 lookup table of a perceptually uniform colormap."""
    from matplotlib import colormaps

    return (colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


_LUT: np.ndarray | None = None


def heatmap_rgb(values: np.ndarray) -> np.ndarray:
    """A non-negative map [H, W] -> uint8 RGB [H, W, 3], scaled by its own maximum."""
    global _LUT
    if _LUT is None:
        _LUT = _colormap_lut()
    peak = float(values.max()) if values.size else 0.0
    scaled = values / peak if peak > 0 else np.zeros_like(values)
    return _LUT[np.clip(scaled * 255.0 + 0.5, 0, 255).astype(np.uint8)]


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def jpeg_url(rgb: np.ndarray) -> str:
    """Photographic pictures (the input, overlays) as JPEG: a fraction of the PNG's size."""
    return data_url(encode_jpeg(rgb, quality=88), "image/jpeg")


def _upscale(rgb: np.ndarray, min_side: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor, so tiny maps stay crisp in any browser."""
    factor = max(1, -(-min_side // max(rgb.shape[:2])))
    return rgb.repeat(factor, 0).repeat(factor, 1) if factor > 1 else rgb


def overlay(image: np.ndarray, values: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Heat map of ``values`` (any size) laid over a greyed ``image`` [H, W, 3]."""
    h, w = image.shape[:2]
    peak = float(values.max()) if values.size else 0.0
    v = (values / peak if peak > 0 else np.zeros_like(values)).astype(np.float32)
    v = np.asarray(Image.fromarray(v, mode="F").resize((w, h), Image.BILINEAR))
    heat = heatmap_rgb(v).astype(np.float32)
    grey = image.astype(np.float32).mean(axis=2, keepdims=True) * 0.55
    weight = alpha * np.clip(v, 0, 1)[..., None] ** 0.5
    return (grey * (1 - weight) + heat * weight).clip(0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- analysis


@dataclass
class Analysis:
    """One forward pass over one image, rendered for the page."""

    id: str
    name: str
    true_index: int | None  # index into the model's classes, when the label is known
    crop: str  # data URL of the input patch the network saw (before normalisation)
    layers: dict[str, dict[str, Any]]  # per conv layer: shape, strongest channels, summary overlay
    probs: np.ndarray  # [num_classes]
    fc7: np.ndarray  # [D] float32 for retrieval
    image: np.ndarray | None = None  # uint8 [S, S, 3] as decoded: the stencil re-runs conv1/conv2 on it
