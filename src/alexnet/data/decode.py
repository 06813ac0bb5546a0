"""Decoding untrusted image files to uint8 RGB, and the paper's 256x256 preprocessing.

Every file on disk is untrusted: it may be empty, truncated, not an image at all
(HTML error pages saved as ``.JPEG`` are common), a PNG or GIF behind a ``.JPEG``
name, CMYK, greyscale, palette with transparency, 16-bit, or a decompression bomb.
:func:`read_image` either returns an ``[H, W, 3]`` uint8 RGB array or raises
:class:`DecodeError` whose ``reason`` is one of :data:`REASONS`, so callers can skip
and count the file with its path; nothing else escapes.

JPEG goes through simplejpeg (libjpeg-turbo, several times faster than PIL), with
DCT-domain downscaling when only a small result is needed; anything simplejpeg
rejects (CMYK, arithmetic coding, corrupt data) is retried with PIL, which then
decides. The format is sniffed from the bytes, never from the file name.

EXIF orientation is ignored by default, as in the ILSVRC pipelines the paper's numbers
come from (datasets, ``data prepare``). ``orient=True`` applies it: the single photos a
person hands over (explorer uploads, ``alexnet predict``) are shown and classified the way
they look on the phone that took them.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import simplejpeg
import torch
from PIL import Image, ImageFile
from torch import Tensor

from alexnet.errors import DecodeError

# Images above this many pixels are refused before decoding (PIL's own bomb limit is
# ~89 MP; the largest ILSVRC photos are well under 20 MP).
MAX_PIXELS = 64_000_000
# Files above this size are refused before reading them into memory.
MAX_BYTES = 256 * 1024 * 1024
# Decompression bombs below MAX_PIXELS: a 2.4 KB WebP or a 47 KB GIF can declare 62 MP and
# take 1-2 s and 190 MB to decode. Above BOMB_FLOOR_PIXELS an image must carry at least one
# byte per MAX_PIXELS_PER_BYTE pixels; real photos carry one per 3-20 and even flat PNGs one
# per ~350, so only crafted (or fuzzed) headers are refused, each in microseconds.
BOMB_FLOOR_PIXELS = 16_000_000
MAX_PIXELS_PER_BYTE = 1024


IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)

_JPEG_MAGIC = b"\xff\xd8\xff"
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never grey padding


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether a file name looks like an image (the content is checked only when decoding)."""
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTENSIONS


def read_bytes(path: str | os.PathLike, max_bytes: int = MAX_BYTES) -> bytes:
    try:
        size = os.path.getsize(path)
        if size == 0:
            raise DecodeError("empty", "zero-byte file", path)
        if size > max_bytes:
            raise DecodeError("too_large", f"{size} bytes > {max_bytes}", path)
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise DecodeError("unreadable", str(exc), path) from None


def _check_pixels(width: int, height: int, max_pixels: int, nbytes: int) -> None:
    """Refuse from the header alone what would take too long or too much memory to decode."""
    if width <= 0 or height <= 0:
        raise DecodeError("corrupt", f"invalid size {width}x{height}")
    if width * height > max_pixels:
        raise DecodeError("too_large", f"{width}x{height} pixels > {max_pixels} (decompression bomb?)")
    if width * height > max(BOMB_FLOOR_PIXELS, nbytes * MAX_PIXELS_PER_BYTE):
        raise DecodeError(
            "too_large", f"{width}x{height} pixels from {nbytes} bytes: decompression bomb (at most {MAX_PIXELS_PER_BYTE} pixels a byte)"
        )


@contextmanager
def _decoder_errors() -> Iterator[None]:
    """Turn anything a decoder raises on bad bytes into :class:`DecodeError`.

    Pillow's plugins raise whatever their parser hits: ``OSError`` and ``SyntaxError`` mostly,
    but also ``NotImplementedError`` (DDS, BLP pixel formats), ``struct.error``,
    ``ZeroDivisionError``, ``KeyError``... A list of expected classes is always one short,
    and the one that escapes kills a training run or answers 500, so every ``Exception``
    from decoding means "this file is bad". Warnings (DecompressionBombWarning, palette
    notes) are handled here too.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError("too_large", str(exc)) from None
    except Image.UnidentifiedImageError:
        raise DecodeError("not_an_image", "unrecognised file format") from None
    except MemoryError:
        raise DecodeError("too_large", "out of memory while decoding") from None
    except Exception as exc:  # see the docstring: bad bytes, whatever the class
        msg = str(exc)
        reason = "truncated" if "truncat" in msg.lower() or isinstance(exc, EOFError) else "corrupt"
        raise DecodeError(reason, f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__) from None


def _decode_jpeg_fast(data: bytes, min_side: int, max_pixels: int) -> np.ndarray | None:
    """simplejpeg decode, downscaled in the DCT domain to at least ``min_side``; None to fall back."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except Exception:  # whatever libjpeg-turbo dislikes, PIL gives the verdict
        return None
    _check_pixels(width, height, max_pixels, len(data))
    if colorspace not in ("RGB", "YCbCr", "Gray"):
        return None  # CMYK / YCCK: PIL handles Adobe's inverted CMYK correctly
    kw = {}
    if min_side > 0:
        # Scale so that the shorter side stays >= min_side (simplejpeg keeps both >= the minimum).
        s = min(height, width)
        kw = {"min_height": round(height * min_side / s), "min_width": round(width * min_side / s)}
    try:
        out = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, **kw)
    except Exception:  # let PIL give the precise verdict (truncated / corrupt)
        return None
    return out


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any PIL mode to uint8 RGB: alpha is composited on white, 16/32-bit is rescaled."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img, dtype=np.float64)
        # 16-bit PNGs open as "I" (int32) in PIL: rescale 0..65535 to 0..255.
        hi = 65535.0 if mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        a = np.clip(a * (255.0 / hi) + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0
        a = np.clip(np.nan_to_num(a) * scale + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def _decode_pil(data: bytes, max_pixels: int, draft_side: int = 0) -> np.ndarray:
    with _decoder_errors():
        img = Image.open(io.BytesIO(data))
        _check_pixels(img.width, img.height, max_pixels, len(data))
        if draft_side and img.format == "JPEG":
            img.draft("RGB", (draft_side, draft_side))  # DCT-domain downscale, shorter side >= draft_side
        # No seek(0): a fresh open is on the first frame, and SPIDER and PSD refuse seek(0).
        img.load()
        return _to_rgb_array(img)


_EXIF_ORIENTATION = 0x0112


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1-8) of encoded image bytes; 1 (as stored) when absent or
    unreadable. Reads the header only."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = Image.open(io.BytesIO(data)).getexif().get(_EXIF_ORIENTATION, 1)
        return int(value) if 1 <= int(value) <= 8 else 1
    except Exception:  # any damage in the metadata: keep the pixels as stored
        return 1


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """``[H, W, C]`` as it is meant to be seen, for EXIF orientation 1-8 (the same
    transposes as PIL's ``ImageOps.exif_transpose``)."""
    a = image
    if orientation in (5, 6, 7, 8):  # stored sideways: swap the axes first
        a = a.transpose(1, 0, 2)
    flips = {2: (False, True), 3: (True, True), 4: (True, False), 6: (False, True), 7: (True, True), 8: (True, False)}
    rows, cols = flips.get(orientation, (False, False))
    if rows:
        a = a[::-1]
    if cols:
        a = a[:, ::-1]
    return np.ascontiguousarray(a)


def decode_image(
    data: bytes, *, max_pixels: int = MAX_PIXELS, min_side: int = 0, orient: bool = False
) -> np.ndarray:
    """Decode image bytes to uint8 RGB ``[H, W, 3]``, or raise :class:`DecodeError`.

    ``min_side`` > 0 allows a JPEG to be decoded downscaled (by 1/2, 1/4, 1/8) as long as
    its shorter side stays >= ``min_side``: much faster when only a small image is needed.
    ``orient`` applies the EXIF orientation.
    """
    if not data:
        raise DecodeError("empty", "zero-byte file")
    out = _decode_jpeg_fast(data, min_side, max_pixels) if data[:3] == _JPEG_MAGIC else None
    if out is None:
        out = _decode_pil(data, max_pixels, draft_side=min_side)
    return apply_orientation(out, exif_orientation(data)) if orient else out


def read_image(
    path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS, min_side: int = 0, orient: bool = False
) -> np.ndarray:
    """Read and decode a file to uint8 RGB ``[H, W, 3]``; :class:`DecodeError` carries the path."""
    try:
        return decode_image(read_bytes(path), max_pixels=max_pixels, min_side=min_side, orient=orient)
    except DecodeError as exc:
        raise exc.with_path(path) from None


def probe_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Cheap header check (no pixel decode): ``(width, height)`` or :class:`DecodeError`.

    Catches empty, unreadable, non-image and oversized files; truncation and corrupt
    pixel data only show when decoding.
    """
    try:
        try:
            size = os.path.getsize(path)
        except OSError as exc:
            raise DecodeError("unreadable", str(exc)) from None
        if size == 0:
            raise DecodeError("empty", "zero-byte file")
        with _decoder_errors(), Image.open(path) as img:
            _check_pixels(img.width, img.height, max_pixels, size)
            return img.width, img.height
    except DecodeError as exc:
        raise exc.with_path(path) from None


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The paper's preprocessing: shorter side to ``size``, then the central ``size`` x ``size``.

    The crop box is computed in source coordinates and PIL resamples only that region
    (bilinear with antialiasing when shrinking), so no intermediate image is made.
    """
    h, w = image.shape[:2]
    if h == size and w == size:
        return image
    s = min(h, w)
    top, left = (h - s) / 2.0, (w - s) / 2.0
    img = Image.fromarray(image)
    out = img.resize((size, size), Image.BILINEAR, box=(left, top, left + s, top + s))
    return np.asarray(out, dtype=np.uint8)


def load_resized(path: str | os.PathLike, size: int = 256, *, max_pixels: int = MAX_PIXELS) -> Tensor:
    """Read a file and return the paper's ``size`` x ``size`` patch as uint8 ``[3, size, size]``."""
    image = read_image(path, max_pixels=max_pixels, min_side=size)
    return torch.from_numpy(np.ascontiguousarray(resize_center_crop(image, size).transpose(2, 0, 1)))


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """uint8 RGB ``[H, W, 3]`` to JPEG bytes (libjpeg-turbo, 4:2:0 like ImageNet's own files)."""
    return simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality=quality, colorspace="RGB")


def image_paths(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder`` (by extension; hidden files skipped), sorted."""
    return sorted(
        p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".") and is_image_file(p)
    )
