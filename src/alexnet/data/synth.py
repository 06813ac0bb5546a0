"""The embedded dataset: procedurally drawn objects, the default when no data is given.

``alexnet data synth OUT`` writes an ImageNet-layout folder dataset of JPEG files::

    OUT/train/<class>/<class>_00000.jpg ...     OUT/val/<class>/...
    OUT/class_names.json  {"00_star": "star", ...}: readable names (read by alexnet.data.folder)
    OUT/synth.json        how it was made (version, seed, counts, classes); written last,
                          so its presence marks a complete dataset

Every image shows one object whose *shape* is the class (star, heart, key, ...). What
is not the class is drawn independently of it from the same distributions for every
class, so that no single cue separates the classes except the shape: the object's
colours and fill texture (solid, stripes, checks, dots, gradient), its rotation,
mirror, aspect, scale and position, the background (flat, gradient or blotchy),
distractor clutter (lines, blobs, bars, arcs; some drawn over the object) and pixel
noise. Similar silhouettes (ring / crescent / flower, arrow / chevron, tree / umbrella
/ mushroom) make the confusion structure non-trivial, which keeps top-5 meaningful.

Generation is deterministic: image ``i`` of class ``c`` in split ``s`` is drawn from
a NumPy generator seeded with ``(seed, s, c, i)``, so the same seed gives
byte-identical files regardless of the number of worker processes.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from alexnet.data.folder import STATS_SAMPLE, open_folder
from alexnet.data.home import data_home
from alexnet.data.stats import STATS_FILE, save_stats_file
from alexnet.errors import DatasetError, DatasetExistsError

log = logging.getLogger(__name__)

VERSION = 2  # bump when the drawing changes: cached datasets are keyed by it (v2: less clutter, ±30° pose)
DEFAULT_SEED = 0
DEFAULT_CLASSES = 20
DEFAULT_TRAIN_PER_CLASS = 500
DEFAULT_VAL_PER_CLASS = 50
DEFAULT_SIZE = 64
SUPERSAMPLE = 4  # the object's mask is drawn at 4x and downsampled: anti-aliased edges
JPEG_QUALITY = 90
SPLITS = ("train", "val")
MARKER = "synth.json"

# --------------------------------------------------------------------------- shapes
# A shape is a list of drawing ops in unit coordinates (x right, y down, roughly within
# [-1, 1]^2): ("poly", points, fill) and ("line", points, width, fill). Fill 1 adds to
# the object's mask, 0 cuts a hole; ops apply in order.

Op = tuple
Points = list[tuple[float, float]]


def _circle(
    cx: float, cy: float, r: float, n: int = 28, a0: float = 0.0, a1: float = 2 * math.pi
) -> Points:
    return [
        (cx + r * math.cos(a0 + (a1 - a0) * k / n), cy + r * math.sin(a0 + (a1 - a0) * k / n))
        for k in range(n + 1)
    ]


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> Points:
    return [
        (cx + rx * math.cos(2 * math.pi * k / n), cy + ry * math.sin(2 * math.pi * k / n))
        for k in range(n)
    ]


def _rect(x0: float, y0: float, x1: float, y1: float) -> Points:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _regular(n: int, r: float = 1.0, phase: float = -math.pi / 2) -> Points:
    return [
        (r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _star() -> list[Op]:
    pts = [
        (
            (1.0 if k % 2 == 0 else 0.42) * math.cos(-math.pi / 2 + math.pi * k / 5),
            (1.0 if k % 2 == 0 else 0.42) * math.sin(-math.pi / 2 + math.pi * k / 5),
        )
        for k in range(10)
    ]
    return [("poly", pts, 1)]


def _heart() -> list[Op]:
    ts = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    x = 16 * np.sin(ts) ** 3 / 16.5
    y = -(13 * np.cos(ts) - 5 * np.cos(2 * ts) - 2 * np.cos(3 * ts) - np.cos(4 * ts)) / 16.5 - 0.1
    return [("poly", list(zip(x.tolist(), y.tolist(), strict=True)), 1)]


def _ring() -> list[Op]:
    return [("poly", _circle(0, 0, 1.0), 1), ("poly", _circle(0, 0, 0.58), 0)]


def _cross() -> list[Op]:
    w = 0.3
    return [
        (
            "poly",
            [
                (-w, -1),
                (w, -1),
                (w, -w),
                (1, -w),
                (1, w),
                (w, w),
                (w, 1),
                (-w, 1),
                (-w, w),
                (-1, w),
                (-1, -w),
                (-w, -w),
            ],
            1,
        )
    ]


def _arrow() -> list[Op]:
    return [
        (
            "poly",
            [
                (-1, -0.16),
                (0.15, -0.16),
                (0.15, -0.6),
                (1, 0),
                (0.15, 0.6),
                (0.15, 0.16),
                (-1, 0.16),
            ],
            1,
        )
    ]


def _spiral() -> list[Op]:
    ts = np.linspace(0, 2.6 * 2 * math.pi, 70)
    r = 0.12 + 0.88 * ts / ts[-1]
    return [
        (
            "line",
            list(zip((r * np.cos(ts)).tolist(), (r * np.sin(ts)).tolist(), strict=True)),
            0.17,
            1,
        )
    ]


def _crescent() -> list[Op]:
    return [("poly", _circle(0, 0, 1.0), 1), ("poly", _circle(0.5, -0.15, 0.85), 0)]


def _triangle() -> list[Op]:
    return [("poly", [(0, -1), (0.95, 0.75), (-0.95, 0.75)], 1)]


def _house() -> list[Op]:
    return [
        ("poly", _rect(-0.7, -0.1, 0.7, 1.0), 1),
        ("poly", [(-0.95, -0.05), (0, -1.0), (0.95, -0.05)], 1),
        ("poly", _rect(-0.17, 0.4, 0.17, 1.01), 0),
    ]


def _tree() -> list[Op]:
    return [
        ("poly", _rect(-0.13, 0.45, 0.13, 1.0), 1),
        ("poly", [(0, -1.0), (0.45, -0.35), (-0.45, -0.35)], 1),
        ("poly", [(0, -0.6), (0.65, 0.1), (-0.65, 0.1)], 1),
        ("poly", [(0, -0.2), (0.85, 0.55), (-0.85, 0.55)], 1),
    ]


def _fish() -> list[Op]:
    return [
        ("poly", _ellipse(-0.2, 0, 0.75, 0.45), 1),
        ("poly", [(0.4, 0), (1.0, -0.55), (1.0, 0.55)], 1),
        ("poly", _circle(-0.6, -0.1, 0.1, n=12), 0),
    ]


def _car() -> list[Op]:
    return [
        ("poly", _rect(-1.0, -0.1, 1.0, 0.4), 1),
        ("poly", [(-0.55, -0.1), (-0.3, -0.6), (0.35, -0.6), (0.6, -0.1)], 1),
        ("poly", [(-0.38, -0.15), (-0.22, -0.47), (0.0, -0.47), (0.0, -0.15)], 0),
        ("poly", _circle(-0.55, 0.45, 0.28, n=16), 1),
        ("poly", _circle(0.55, 0.45, 0.28, n=16), 1),
    ]


def _flower() -> list[Op]:
    ops: list[Op] = [
        ("poly", _circle(0.62 * math.cos(a), 0.62 * math.sin(a), 0.36, n=16), 1)
        for a in np.linspace(0, 2 * math.pi, 6, endpoint=False).tolist()
    ]
    return [*ops, ("poly", _circle(0, 0, 0.2, n=14), 0), ("poly", _circle(0, 0, 0.1, n=10), 1)]


def _lightning() -> list[Op]:
    return [
        (
            "poly",
            [
                (0.15, -1),
                (-0.55, 0.15),
                (-0.05, 0.15),
                (-0.3, 1),
                (0.55, -0.25),
                (0.05, -0.25),
                (0.45, -1),
            ],
            1,
        )
    ]


def _key() -> list[Op]:
    return [
        ("poly", _circle(-0.62, 0, 0.38), 1),
        ("poly", _circle(-0.62, 0, 0.18, n=14), 0),
        ("poly", _rect(-0.3, -0.09, 1.0, 0.09), 1),
        ("poly", _rect(0.55, 0.05, 0.68, 0.38), 1),
        ("poly", _rect(0.8, 0.05, 0.95, 0.3), 1),
    ]


def _cup() -> list[Op]:
    return [
        ("poly", _circle(0.45, 0.0, 0.36), 1),
        ("poly", _circle(0.45, 0.0, 0.2, n=14), 0),
        ("poly", [(-0.7, -0.75), (0.5, -0.75), (0.38, 0.8), (-0.58, 0.8)], 1),
    ]


def _umbrella() -> list[Op]:
    canopy = _circle(0, 0, 1.0, n=24, a0=math.pi, a1=2 * math.pi)
    hook = _circle(-0.16, 0.78, 0.16, n=8, a0=0.0, a1=math.pi)
    return [("poly", canopy, 1), ("line", [(0, -0.05), (0, 0.78), *hook], 0.1, 1)]


def _hourglass() -> list[Op]:
    return [("poly", [(-0.7, -1), (0.7, -1), (0.09, 0), (0.7, 1), (-0.7, 1), (-0.09, 0)], 1)]


def _sun() -> list[Op]:
    ops: list[Op] = [("poly", _circle(0, 0, 0.48), 1)]
    for a in np.linspace(0, 2 * math.pi, 8, endpoint=False).tolist():
        c, s = math.cos(a), math.sin(a)
        ops.append(("line", [(0.62 * c, 0.62 * s), (1.0 * c, 1.0 * s)], 0.14, 1))
    return ops


def _ladder() -> list[Op]:
    ops: list[Op] = [
        ("line", [(-0.45, -1), (-0.45, 1)], 0.14, 1),
        ("line", [(0.45, -1), (0.45, 1)], 0.14, 1),
    ]
    return ops + [("line", [(-0.45, y), (0.45, y)], 0.11, 1) for y in (-0.7, -0.23, 0.23, 0.7)]


def _hexagon() -> list[Op]:
    return [("poly", _regular(6, 1.0, 0.0), 1)]


def _bone() -> list[Op]:
    ops: list[Op] = [("poly", _rect(-0.7, -0.16, 0.7, 0.16), 1)]
    return ops + [
        ("poly", _circle(x, y, 0.24, n=14), 1) for x in (-0.72, 0.72) for y in (-0.2, 0.2)
    ]


def _mushroom() -> list[Op]:
    cap = _circle(0, 0.05, 1.0, n=24, a0=math.pi, a1=2 * math.pi)
    return [("poly", [(x, 0.8 * y) for x, y in cap], 1), ("poly", _rect(-0.22, 0.0, 0.22, 0.9), 1)]


def _chevron() -> list[Op]:
    return [("line", [(-0.6, -0.85), (0.35, 0), (-0.6, 0.85)], 0.3, 1)]


# (folder name, readable name, drawing). Order is the class index order: the default
# 20 classes are the first 20; the folder names sort in the same order.
SHAPES: list[tuple[str, str, Callable[[], list[Op]]]] = [
    ("star", "star", _star),
    ("heart", "heart", _heart),
    ("ring", "ring", _ring),
    ("cross", "cross", _cross),
    ("arrow", "arrow", _arrow),
    ("spiral", "spiral", _spiral),
    ("crescent", "crescent moon", _crescent),
    ("triangle", "triangle", _triangle),
    ("house", "house", _house),
    ("tree", "fir tree", _tree),
    ("fish", "fish", _fish),
    ("car", "car", _car),
    ("flower", "flower", _flower),
    ("lightning", "lightning bolt", _lightning),
    ("key", "key", _key),
    ("cup", "cup", _cup),
    ("umbrella", "umbrella", _umbrella),
    ("hourglass", "hourglass", _hourglass),
    ("sun", "sun", _sun),
    ("ladder", "ladder", _ladder),
    ("hexagon", "hexagon", _hexagon),
    ("bone", "bone", _bone),
    ("mushroom", "mushroom", _mushroom),
    ("chevron", "chevron", _chevron),
]
MAX_CLASSES = len(SHAPES)


def class_folders(num_classes: int = DEFAULT_CLASSES) -> list[str]:
    """Folder names in class-index order: ``"00_star"``, ``"01_heart"``, ... (sorted = index order)."""
    return [f"{i:02d}_{name}" for i, (name, _, _) in enumerate(SHAPES[:num_classes])]


def class_names(num_classes: int = DEFAULT_CLASSES) -> list[str]:
    """Readable names in class-index order."""
    return [readable for _, readable, _ in SHAPES[:num_classes]]


# --------------------------------------------------------------------------- drawing


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A colour uniform in hue, with saturation and value spread wide (greys included)."""
    h, s, v = rng.random(), rng.uniform(0, 1) ** 0.7, rng.uniform(0.15, 1.0)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float32) * 255.0


def _luma(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


@functools.lru_cache(maxsize=4)
def _coords(n: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    return yy / n, xx / n


def _background(rng: np.random.Generator, n: int) -> np.ndarray:
    """Flat, linear gradient, or low-frequency blotches between random colours: [n, n, 3] float."""
    a, b = _random_colour(rng), _random_colour(rng)
    kind = rng.integers(3)
    if kind == 0:
        return np.broadcast_to(a, (n, n, 3)).copy()
    if kind == 1:
        yy, xx = _coords(n)
        ang = rng.uniform(0, 2 * math.pi)
        t = (xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang) + 0.5
        t = np.clip(t, 0, 1)[..., None]
    else:
        low = rng.random((4, 4)).astype(np.float32)
        t = (
            np.asarray(
                Image.fromarray((low * 255).astype(np.uint8)).resize((n, n), Image.BICUBIC),
                np.float32,
            )[..., None]
            / 255
        )
    return a * (1 - t) + b * t


def _texture(rng: np.random.Generator, n: int, base: np.ndarray) -> np.ndarray:
    """The object's fill: solid, stripes, checks, dots or gradient, in colours unrelated to the class."""
    kind = rng.choice(5, p=[0.5, 0.125, 0.125, 0.125, 0.125])
    if kind == 0:
        return np.broadcast_to(base, (n, n, 3))
    other = 0.5 * base + 0.5 * _random_colour(rng)  # a second tone: texture, not a new silhouette
    yy, xx = _coords(n)
    period = rng.uniform(0.08, 0.2)
    ang = rng.uniform(0, math.pi)
    u = xx * math.cos(ang) + yy * math.sin(ang)
    v = -xx * math.sin(ang) + yy * math.cos(ang)
    if kind == 1:
        t = np.floor(u / period) % 2
    elif kind == 2:
        t = (np.floor(u / period) + np.floor(v / period)) % 2
    elif kind == 3:
        fu, fv = (u / period) % 1 - 0.5, (v / period) % 1 - 0.5
        t = (fu * fu + fv * fv < 0.09).astype(np.float32)
    else:
        t = np.clip(u * 1.2 + rng.uniform(-0.4, 0.2), 0, 1)
    return base * (1 - t[..., None]) + other * t[..., None]


def _transform(
    points: Points, cx: float, cy: float, sx: float, sy: float, rot: float, mirror: bool
) -> list[tuple[float, float]]:
    c, s = math.cos(rot), math.sin(rot)
    out = []
    for x, y in points:
        x = -x if mirror else x
        x, y = x * sx, y * sy
        out.append((cx + c * x - s * y, cy + s * x + c * y))
    return out


def _object_mask(
    ops: list[Op], n: int, cx: float, cy: float, r: float, aspect: float, rot: float, mirror: bool
) -> Image.Image:
    mask = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(mask)
    sx, sy = r * aspect, r / aspect
    for op in ops:
        if op[0] == "poly":
            draw.polygon(_transform(op[1], cx, cy, sx, sy, rot, mirror), fill=255 * op[2])
        else:
            pts = _transform(op[1], cx, cy, sx, sy, rot, mirror)
            width = max(1, round(op[2] * r))
            draw.line(pts, fill=255 * op[3], width=width, joint="curve")
            for x, y in (pts[0], pts[-1]):  # round caps
                draw.ellipse(
                    (x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=255 * op[3]
                )
    return mask


def _clutter(
    rng: np.random.Generator, draw: ImageDraw.ImageDraw, n: int, count: int, scale: float = 1.0
) -> None:
    """Distractors that are no class: lines, blobs, bars and arcs in random colours."""
    for _ in range(count):
        colour = tuple(int(c) for c in _random_colour(rng))
        kind = rng.integers(4)
        x, y = rng.uniform(-0.1, 1.1, 2) * n
        size = rng.uniform(0.05, 0.25) * n * scale
        if kind == 0:
            x2, y2 = rng.uniform(-0.1, 1.1, 2) * n
            draw.line((x, y, x2, y2), fill=colour, width=max(1, int(rng.uniform(0.01, 0.04) * n)))
        elif kind == 1:
            draw.ellipse(
                (x - size, y - size * rng.uniform(0.4, 1), x + size, y + size), fill=colour
            )
        elif kind == 2:
            draw.rectangle(
                (x, y, x + size * rng.uniform(0.3, 2), y + size * rng.uniform(0.2, 0.6)),
                fill=colour,
            )
        else:
            a0 = float(rng.uniform(0, 360))
            draw.arc(
                (x - size, y - size, x + size, y + size),
                a0,
                a0 + float(rng.uniform(60, 200)),
                fill=colour,
                width=max(1, int(0.02 * n)),
            )


def render(class_index: int, rng: np.random.Generator, size: int = DEFAULT_SIZE) -> Image.Image:
    """Draw one image of class ``class_index`` (an RGB ``size`` x ``size`` PIL image).

    Only the object's mask is drawn at ``SUPERSAMPLE`` x resolution (anti-aliased
    edges); everything else is composed at the output size, which keeps this cheap.
    """
    n = size
    canvas = Image.fromarray(np.clip(_background(rng, n), 0, 255).astype(np.uint8))
    _clutter(rng, ImageDraw.Draw(canvas), n, int(rng.integers(0, 5)))
    img = np.asarray(canvas, dtype=np.float32)

    # Pose: scale (half-extent), aspect, rotation, mirror, and position (may poke out of frame).
    r = rng.uniform(0.24, 0.44) * n
    aspect = math.exp(rng.uniform(-0.2, 0.2))
    rot = rng.uniform(-math.pi / 6, math.pi / 6)
    mirror = bool(rng.random() < 0.5)
    margin = r * 0.8
    cx, cy = rng.uniform(margin, n - margin, 2)
    k = SUPERSAMPLE
    big = _object_mask(SHAPES[class_index][2](), n * k, cx * k, cy * k, r * k, aspect, rot, mirror)
    mask = np.asarray(big.resize((n, n), Image.BOX), np.float32)[..., None] / 255

    # Object colour: independent of the class, but kept visible against the local background.
    local = (img * mask).sum((0, 1)) / max(float(mask.sum()), 1.0)
    base = _random_colour(rng)
    for _ in range(8):
        if abs(_luma(base) - _luma(local)) > 45 or np.abs(base - local).max() > 110:
            break
        base = _random_colour(rng)
    img = img * (1 - mask) + _texture(rng, n, base) * mask

    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    _clutter(rng, ImageDraw.Draw(canvas), n, int(rng.integers(0, 2)), scale=0.5)  # occluders
    out = np.asarray(canvas, np.float32)
    out += rng.normal(0, rng.uniform(0, 8), out.shape).astype(np.float32)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------- generation


def _image_rng(seed: int, split: str, class_index: int, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), class_index, i])


def _render_job(job: tuple[Path, int, str, int, int, int, int]) -> int:
    out, seed, split, class_index, start, stop, size = job
    folder = out / split / class_folders(MAX_CLASSES)[class_index]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, stop):
        buf = io.BytesIO()
        render(class_index, _image_rng(seed, split, class_index, i), size).save(
            buf, "JPEG", quality=JPEG_QUALITY
        )
        (folder / f"{SHAPES[class_index][0]}_{i:05d}.jpg").write_bytes(buf.getvalue())
    return stop - start


def generate(
    out: str | os.PathLike,
    seed: int = DEFAULT_SEED,
    num_classes: int = DEFAULT_CLASSES,
    train_per_class: int = DEFAULT_TRAIN_PER_CLASS,
    val_per_class: int = DEFAULT_VAL_PER_CLASS,
    size: int = DEFAULT_SIZE,
    workers: int | None = None,
    progress: bool = False,
) -> Path:
    """Write the dataset to ``out`` (which must not hold a previous dataset) and return its path.

    Use :func:`ensure_embedded_dataset` for the atomic, cached variant.
    """
    if not 2 <= num_classes <= MAX_CLASSES:
        raise DatasetError(f"classes must be between 2 and {MAX_CLASSES}, got {num_classes}")
    if train_per_class < 1 or val_per_class < 0:
        raise DatasetError(
            "need at least one training image per class and a non-negative validation count"
        )
    if not 16 <= size <= 1024:
        raise DatasetError(f"size must be between 16 and 1024 px, got {size}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetExistsError(f"{out} exists and is not an empty directory; choose a new one")
    out.mkdir(parents=True, exist_ok=True)

    chunk = 50  # small jobs keep both cores busy to the end
    jobs = [
        (out, seed, split, c, s, min(s + chunk, count), size)
        for split, count in (("train", train_per_class), ("val", val_per_class))
        for c in range(num_classes)
        for s in range(0, count, chunk)
    ]
    total = num_classes * (train_per_class + val_per_class)
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    from tqdm import tqdm

    with tqdm(total=total, unit="img", desc="synth", disable=not progress) as bar:
        if workers <= 1:
            for job in jobs:
                bar.update(_render_job(job))
        else:
            with ProcessPoolExecutor(workers) as pool:
                for done in pool.map(_render_job, jobs):
                    bar.update(done)

    folders = class_folders(num_classes)
    names = class_names(num_classes)
    # Readable names where the folder dataset looks for them (alexnet.data.folder).
    mapping = dict(zip(folders, names, strict=True))
    (out / "class_names.json").write_text(json.dumps(mapping, indent=1) + "\n")
    meta = {
        "name": "alexnet-embedded",
        "version": VERSION,
        "seed": seed,
        "image_size": size,
        "counts": {"train": train_per_class * num_classes, "val": val_per_class * num_classes},
        "classes": folders,
        "class_names": names,
    }
    # Written last: its presence marks a complete dataset.
    (out / MARKER).write_text(json.dumps(meta, indent=1) + "\n")
    return out


# --------------------------------------------------------------------------- the cached default


def embedded_dataset_path(seed: int = DEFAULT_SEED) -> Path:
    """The cache path of the default embedded dataset, e.g. ``~/.cache/alexnet/embedded-v2-seed0``."""
    return data_home() / f"embedded-v{VERSION}-seed{seed}"


def is_complete(path: str | os.PathLike) -> bool:
    return (Path(path) / MARKER).is_file()


def _store_stats(root: Path) -> None:
    """Store the statistics training would otherwise estimate on every run (the same sample,
    so the same values), so `data info` shows them for the default dataset too."""
    train = open_folder(root, "train", validate="none")
    save_stats_file(train.compute_stats(STATS_SAMPLE), root / STATS_FILE)


def ensure_embedded_dataset(
    path: str | os.PathLike | None = None,
    seed: int = DEFAULT_SEED,
    progress: bool = True,
    **options,
) -> Path:
    """Return the embedded dataset at ``path`` (default :func:`embedded_dataset_path`),
    generating it first if missing.

    Generation goes to a temporary sibling directory that is renamed into place only
    when complete, so an interrupted run never leaves something that looks finished
    (leftovers of killed runs are removed after an hour). Concurrent callers are safe:
    whoever renames first wins, the others discard theirs. ``options`` go to
    :func:`generate` (e.g. ``size=32``); they change the content, so give them their own ``path``.
    """
    path = Path(path) if path is not None else embedded_dataset_path(seed)
    if is_complete(path):
        if not (path / STATS_FILE).is_file():  # generated before the statistics were stored with it
            _store_stats(path)
        return path
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise DatasetExistsError(
            f"{path} exists but holds no complete embedded dataset; remove it or choose another path"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.partial-"
    for stale in path.parent.glob(prefix + "*"):
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    try:
        t0 = time.perf_counter()
        generate(tmp, seed=seed, progress=progress, **options)
        _store_stats(tmp)
        try:
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
            tmp.rename(path)
        except OSError:
            if not is_complete(path):  # lost a race to a complete dataset: fine; else a real error
                raise
        log.info("generated the embedded dataset in %.1f s: %s", time.perf_counter() - t0, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path
