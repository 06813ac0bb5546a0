"""Decoding untrusted files: every bad case is decoded correctly as RGB or a typed DecodeError."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.data.decode import (
    DecodeError,
    decode_image,
    load_resized,
    probe_image,
    read_image,
    resize_center_crop,
)

pytestmark = pytest.mark.reliability  # every file here is untrusted input


def _save(img: Image.Image, path: Path, fmt: str, **kw) -> Path:
    img.save(path, format=fmt, **kw)
    return path


def _gradient(w: int = 48, h: int = 32) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, 90)], -1).astype(np.uint8)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's calling card)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(body)
    return path


def test_rgb_jpeg_fast_path_matches_pil(tmp_path):
    arr = _gradient()
    p = _save(Image.fromarray(arr), tmp_path / "a.JPEG", "JPEG", quality=95)
    out = read_image(p)
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8
    ref = np.asarray(Image.open(p).convert("RGB"))
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 3  # libjpeg-turbo vs PIL's libjpeg: rounding only
    assert np.abs(out.astype(int) - arr.astype(int)).mean() < 4


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.JPEG"
    p.write_bytes(b"")
    with pytest.raises(DecodeError) as e:
        read_image(p)
    assert e.value.reason == "empty" and e.value.path == str(p)
    with pytest.raises(DecodeError):
        probe_image(p)


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = io.BytesIO()
    Image.fromarray(noisy).save(data, format="JPEG", quality=90)
    p = tmp_path / "cut.JPEG"
    p.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    with pytest.raises(DecodeError) as e:
        read_image(p)
    assert e.value.reason in ("truncated", "corrupt")
    assert e.value.path == str(p)


def test_corrupt_jpeg_body(tmp_path):
    data = io.BytesIO()
    Image.fromarray(_gradient()).save(data, format="JPEG")
    raw = bytearray(data.getvalue())
    raw[200:] = b"\x00" * (len(raw) - 200)  # header intact, entropy-coded data destroyed
    p = tmp_path / "bad.JPEG"
    p.write_bytes(bytes(raw))
    with pytest.raises(DecodeError) as e:
        read_image(p)
    assert e.value.reason in ("truncated", "corrupt")


def test_html_behind_jpeg_name(tmp_path):
    p = tmp_path / "page.JPEG"
    p.write_text("<html><body>404 not found</body></html>")
    with pytest.raises(DecodeError) as e:
        read_image(p)
    assert e.value.reason == "not_an_image"
    with pytest.raises(DecodeError) as e:
        probe_image(p)
    assert e.value.reason == "not_an_image"


def test_png_behind_jpeg_name_decodes(tmp_path):
    arr = _gradient()
    p = _save(Image.fromarray(arr), tmp_path / "really_png.JPEG", "PNG")
    np.testing.assert_array_equal(read_image(p), arr)  # lossless: exact


def test_cmyk_jpeg_to_rgb(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, :8] = (200, 30, 30)
    rgb[:, 8:] = (30, 30, 200)
    p = _save(Image.fromarray(rgb).convert("CMYK"), tmp_path / "cmyk.JPEG", "JPEG", quality=95)
    assert Image.open(p).mode == "CMYK"
    out = read_image(p)
    assert out.shape == (16, 16, 3)
    assert out[:, :6].mean(axis=(0, 1))[0] > 150 and out[:, :6].mean(axis=(0, 1))[2] < 80  # still red
    assert out[:, 10:].mean(axis=(0, 1))[2] > 150  # still blue


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_greyscale_to_three_equal_channels(tmp_path, fmt):
    grey = (np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint8)
    p = _save(Image.fromarray(grey, "L"), tmp_path / f"g.{fmt.lower()}", fmt)
    out = read_image(p)
    assert out.shape == (32, 32, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    if fmt == "PNG":
        np.testing.assert_array_equal(out[..., 0], grey)


def test_palette_png_with_transparency_on_white(tmp_path):
    img = Image.new("P", (8, 8))
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    px = np.zeros((8, 8), np.uint8)
    px[:, 4:] = 1
    img.putdata(px.flatten().tolist())
    img.info["transparency"] = 0  # index 0 (red) fully transparent
    p = tmp_path / "pal.png"
    img.save(p, transparency=0)
    out = read_image(p)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])  # transparent -> white, not red
    np.testing.assert_array_equal(out[0, 7], [0, 255, 0])


def test_rgba_png_composited(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 2] = 255
    rgba[..., 3] = 0
    rgba[0, 0, 3] = 255
    p = _save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png", "PNG")
    out = read_image(p)
    np.testing.assert_array_equal(out[0, 0], [0, 0, 255])
    np.testing.assert_array_equal(out[1, 1], [255, 255, 255])


def test_16bit_greyscale_png_is_rescaled(tmp_path):
    a16 = np.array([[0, 257 * 128, 65535, 257 * 10]], dtype=np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(a16).save(p)  # saved as a 16-bit greyscale PNG
    assert Image.open(p).mode.startswith("I")
    out = read_image(p)
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255, 10])


def test_decompression_bomb_refused_before_decoding(tmp_path):
    p = _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(DecodeError) as e:
        read_image(p)
    assert e.value.reason == "too_large"
    with pytest.raises(DecodeError) as e:
        probe_image(p)
    assert e.value.reason == "too_large"
    # the cap also applies to JPEG headers (simplejpeg path)
    j = _save(Image.fromarray(_gradient(64, 64)), tmp_path / "big.JPEG", "JPEG")
    with pytest.raises(DecodeError) as e:
        read_image(j, max_pixels=1000)
    assert e.value.reason == "too_large"


def test_random_garbage_never_crashes():
    rng = np.random.default_rng(1)
    for n in (1, 3, 17, 500):
        for prefix in (b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM"):
            data = prefix + rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            try:
                out = decode_image(data)
                assert out.ndim == 3 and out.shape[2] == 3
            except DecodeError as exc:
                assert exc.reason in ("not_an_image", "truncated", "corrupt", "too_large")


def test_load_resized_is_shorter_side_then_centre_crop(tmp_path):
    # 60x20 (w x h): left third red, middle green, right third blue -> centre crop is green
    arr = np.zeros((20, 60, 3), np.uint8)
    arr[:, :20, 0] = 255
    arr[:, 20:40, 1] = 255
    arr[:, 40:, 2] = 255
    p = _save(Image.fromarray(arr), tmp_path / "bands.png", "PNG")
    x = load_resized(p, 10)
    assert x.shape == (3, 10, 10) and x.dtype == torch.uint8
    inner = x[:, :, 1:-1]  # the resampling filter may reach one source pixel past the crop box
    assert (inner[1] == 255).all() and (inner[0] == 0).all() and (inner[2] == 0).all()
    assert x[1].float().mean() > 240
    up = resize_center_crop(np.zeros((5, 7, 3), np.uint8), 16)  # small images are upscaled
    assert up.shape == (16, 16, 3)


def test_jpeg_dct_downscale_close_to_full_decode(tmp_path):
    arr = np.asarray(Image.fromarray(_gradient(64, 48)).resize((640, 480)))
    p = _save(Image.fromarray(arr), tmp_path / "big.JPEG", "JPEG", quality=95)
    fast = load_resized(p, 64).float()
    full = torch.from_numpy(resize_center_crop(np.asarray(Image.open(p).convert("RGB")), 64).transpose(2, 0, 1).copy())
    assert (fast - full.float()).abs().mean() < 3


def test_16bit_rgb_png_is_rescaled(tmp_path):
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    a = np.array([[[0, 32896, 65535], [65535, 0, 2570]]], dtype=">u2")  # 2x1 RGB, 16 bits per channel
    raw = b"".join(b"\0" + row.tobytes() for row in a)
    ihdr = struct.pack(">IIBBBBB", 2, 1, 16, 2, 0, 0, 0)
    p = tmp_path / "rgb16.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    np.testing.assert_array_equal(read_image(p), [[[0, 128, 255], [255, 0, 10]]])


def _with_orientation(pixels: np.ndarray, orientation: int, fmt: str) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil_when_asked(orientation: int, fmt: str) -> None:
    from PIL import ImageOps

    pixels = np.zeros((30, 50, 3), np.uint8)
    pixels[:10, :20] = 255  # a corner marker: every orientation moves it somewhere else
    pixels[20:, 40:, 0] = 200
    data = _with_orientation(pixels, orientation, fmt)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert np.array_equal(decode_image(data, orient=True), upright)
    stored = decode_image(data)  # datasets: as stored, like the ILSVRC pipelines
    assert stored.shape == (30, 50, 3)
    if orientation != 1:
        assert not np.array_equal(stored, upright)


def test_damaged_exif_keeps_the_stored_pixels() -> None:
    from alexnet.data.decode import exif_orientation

    pixels = np.full((8, 12, 3), 90, np.uint8)
    data = _with_orientation(pixels, 6, "JPEG")
    assert exif_orientation(data) == 6
    broken = data.replace(b"Exif\x00\x00", b"Exif\x00\x00\xff\xff\xff\xff", 1)
    assert exif_orientation(broken) in (1, 6)  # never an exception
    assert exif_orientation(b"not an image") == 1
    bad_tag = _with_orientation(pixels, 42, "JPEG")  # out of range: ignored
    assert decode_image(bad_tag, orient=True).shape == (8, 12, 3)


def _dds_with_pixel_flags(flags: int) -> bytes:
    """A valid DDS whose pixel-format flags (header offset 80) say something Pillow cannot decode."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 24, 4), np.uint8), "RGBA").save(buf, format="DDS")
    raw = bytearray(buf.getvalue())
    raw[80:84] = struct.pack("<I", flags)
    return bytes(raw)


@pytest.mark.parametrize("flags", [0, 0x200000, 0x41000000])
def test_foreign_decoder_exceptions_become_decode_errors_naming_the_file(tmp_path, flags):
    # Pillow raises NotImplementedError for these (the 3 KB DDS named .jpg); any class a
    # decoder raises on bad bytes must reach callers as DecodeError with the path.
    p = tmp_path / "photo.jpg"
    p.write_bytes(_dds_with_pixel_flags(flags))
    for call in (read_image, probe_image, load_resized, lambda q: read_image(q, orient=True, min_side=16)):
        with pytest.raises(DecodeError) as e:
            call(p)
        assert e.value.path == str(p) and e.value.reason == "corrupt"
        assert "NotImplementedError" in str(e.value)
    with pytest.raises(DecodeError):
        decode_image(p.read_bytes(), orient=True)


def _declaring(path: Path, fmt: str, width: int, height: int) -> Path:
    """A tiny file of ``fmt`` whose header declares ``width`` x ``height`` pixels."""
    if fmt == "PNG":
        return _png_header_only(path, width, height)
    if fmt == "PPM":
        path.write_bytes(b"P6 %d %d 255\n" % (width, height) + b"\0" * 300)
        return path
    buf = io.BytesIO()
    Image.fromarray(_gradient(8, 8)).convert("P").save(buf, format=fmt)
    raw = bytearray(buf.getvalue())
    if fmt == "GIF":  # logical screen and first image descriptor
        raw[6:10] = struct.pack("<HH", width, height)
        at = raw.index(b",", 13)
        raw[at + 5 : at + 9] = struct.pack("<HH", width, height)
    else:  # BMP: the info header's width and height
        raw[18:26] = struct.pack("<ii", width, height)
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "PPM"])
@pytest.mark.parametrize("side", [4_100, 7_900])
def test_small_file_declaring_many_pixels_is_refused_from_the_header(tmp_path, fmt, side):
    # Under MAX_PIXELS but far more pixels than a few hundred bytes can hold: a decompression
    # bomb (a 2.4 KB WebP decodes to 62 MP in a second). Refused before any pixel is decoded.
    p = _declaring(tmp_path / f"bomb.{fmt.lower()}", fmt, side, side)
    for call in (read_image, probe_image, load_resized):
        with pytest.raises(DecodeError) as e:
            call(p)
        assert e.value.reason == "too_large" and e.value.path == str(p)
