"""Mutation fuzz of the decode path: whatever the bytes, an RGB array or a DecodeError, fast.

Seeds are small valid files in every format Pillow writes (several modes and codecs each)
plus hand-made ones for formats it only reads (SUN, XPM, PSD, GBR, FITS, CUR). Each trial
mutates one seed (byte and bit flips, truncation, extreme values in header fields, insert,
delete, duplication, a header spliced onto another format's body) with a seeded generator,
so a failure names a trial that replays exactly. The default run tries a few thousand
files in a few seconds; ``-m slow`` tries fifty times more.
"""

from __future__ import annotations

import io
import struct
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet.data.decode import DecodeError, decode_image, probe_image, read_image

pytestmark = pytest.mark.reliability

# CPU seconds one file may take (thread time, so other jobs on a shared box do not count);
# a valid seed decodes in about a millisecond.
PER_FILE_LIMIT_S = 1.0

# (format, mode, save options): several variants per format reach more of each parser.
_WRITABLE = [
    ("PNG", "RGB", {}),
    ("PNG", "P", {"transparency": 0}),
    ("PNG", "I;16", {}),
    ("PNG", "LA", {}),
    ("GIF", "P", {}),
    ("GIF", "L", {"interlace": True}),
    ("BMP", "RGB", {}),
    ("BMP", "P", {}),
    ("BMP", "1", {}),
    ("DIB", "RGB", {}),
    ("TIFF", "RGB", {}),
    ("TIFF", "RGB", {"compression": "tiff_lzw"}),
    ("TIFF", "RGB", {"compression": "tiff_deflate"}),
    ("TIFF", "CMYK", {"compression": "packbits"}),
    ("TIFF", "I;16", {}),
    ("TIFF", "F", {}),
    ("WEBP", "RGB", {"quality": 60}),
    ("WEBP", "RGBA", {"lossless": True}),
    ("JPEG", "RGB", {"quality": 80}),
    ("JPEG", "RGB", {"progressive": True}),
    ("JPEG", "L", {}),
    ("JPEG", "CMYK", {}),
    ("JPEG2000", "RGB", {}),
    ("ICO", "RGBA", {"sizes": [(16, 16)]}),
    ("ICNS", "RGBA", {}),
    ("TGA", "RGB", {}),
    ("TGA", "RGBA", {"compression": "tga_rle"}),
    ("PCX", "RGB", {}),
    ("PCX", "P", {}),
    ("SGI", "RGB", {}),
    ("SGI", "L", {}),
    ("DDS", "RGBA", {}),
    ("DDS", "RGB", {"pixel_format": "DXT1"}),
    ("PPM", "RGB", {}),
    ("PPM", "L", {}),
    ("PPM", "1", {}),
    ("QOI", "RGB", {}),
    ("BLP", "P", {}),
    ("MSP", "1", {}),
    ("XBM", "1", {}),
    ("IM", "RGB", {}),
    ("SPIDER", "F", {}),
    ("EPS", "RGB", {}),  # opened only if Ghostscript is installed: then a plain DecodeError
]


def _read_only_seeds(w: int, h: int, rgb: np.ndarray) -> dict[str, bytes]:
    """Small valid files in formats Pillow reads but cannot write."""
    grey = rgb[..., 0]
    sun = struct.pack(">8I", 0x59A66A95, w, h, 24, w * h * 3, 1, 0, 0) + rgb[..., ::-1].tobytes()
    xpm = (
        b'/* XPM */\nstatic char *x[] = {\n"4 2 2 1",\n"a c #FF0000",\n"b c #00FF00",\n'
        b'"abab",\n"baba"};\n'
    )
    psd = (
        b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, h, w, 8, 3) + struct.pack(">III", 0, 0, 0)
        + struct.pack(">H", 0) + np.ascontiguousarray(rgb.transpose(2, 0, 1)).tobytes()
    )
    name = b"seed\0"
    gbr = struct.pack(">7I", 28 + len(name), 2, w, h, 1, 0x47494D50, 10) + name + grey.tobytes()
    cards = [b"SIMPLE  =                    T", b"BITPIX  =                    8", b"NAXIS   =                    2",
             b"NAXIS1  = %20d" % w, b"NAXIS2  = %20d" % h, b"END"]
    fits = b"".join(c.ljust(80) for c in cards).ljust(2880) + grey.tobytes().ljust(2880, b"\0")
    # a cursor: an icon directory of type 2 over a 32-bit DIB (double height: colour, then mask)
    dib = struct.pack("<3I2H6I", 40, w, 2 * h, 1, 32, 0, 0, 0, 0, 0, 0)
    dib += np.dstack([rgb[::-1, :, ::-1], np.full((h, w), 255, np.uint8)]).tobytes() + bytes((w + 31) // 32 * 4 * h)
    cur = struct.pack("<3H4B2H2I", 0, 2, 1, w, h, 0, 0, 1, 1, len(dib), 22) + dib
    return {"SUN": sun, "XPM": xpm, "PSD": psd, "GBR": gbr, "FITS": fits, "CUR": cur}


def _seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(2012)
    w, h = 24, 16
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    rgb[:, : w // 2] //= 32  # flat and noisy halves: both run-length and literal paths
    seeds: dict[str, bytes] = {}
    for fmt, mode, options in _WRITABLE:
        image = Image.fromarray(rgb).convert("RGBA" if mode in ("RGBA", "LA") else "RGB")
        image = image.convert(mode) if mode not in ("I;16", "F") else image.convert("L").convert(mode)
        if fmt == "ICNS":
            image = image.resize((16, 16))
        buf = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # IM is deprecated: still read, so still fuzzed
                image.save(buf, format=fmt, **options)
        except (OSError, KeyError, ValueError):  # codec not built into this Pillow (rare)
            continue
        seeds[f"{fmt}-{mode}-{'-'.join(map(str, options.values()))}".rstrip("-")] = buf.getvalue()
    seeds.update(_read_only_seeds(w, h, rgb))
    return seeds


SEEDS = _seeds()
_EXTREMES = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\xff\xff\xff\x7f",
             b"\x00\x00\x00\x80", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x01\x00\x00\x00"]


def mutate(data: bytes, rng: np.random.Generator, seeds: list[bytes]) -> bytes:
    """One random mutation of ``data``, chosen and placed by ``rng`` (deterministic)."""
    x = bytearray(data)
    n = len(x)
    op = int(rng.integers(0, 8))
    if op == 0:  # byte flips
        for i in rng.integers(0, n, int(rng.integers(1, 9))):
            x[i] = int(rng.integers(0, 256))
    elif op == 1:  # bit flips, mostly in the header where the parser's decisions are
        for _ in range(int(rng.integers(1, 5))):
            i = int(rng.integers(0, min(n, 128)))
            x[i] ^= 1 << int(rng.integers(0, 8))
    elif op == 2:  # truncation
        x = x[: int(rng.integers(0, n))]
    elif op == 3:  # an extreme value written over a header field (sizes, counts, offsets)
        v = _EXTREMES[int(rng.integers(0, len(_EXTREMES)))]
        i = int(rng.integers(0, max(1, min(n, 160))))
        x[i : i + len(v)] = v
    elif op == 4:  # header splice: this seed's header onto another format's body
        other = seeds[int(rng.integers(0, len(seeds)))]
        k = int(rng.integers(1, min(n, 200) + 1))
        x = x[:k] + other[int(rng.integers(0, len(other))) :]
    elif op == 5:  # insertion of random bytes
        i = int(rng.integers(0, n + 1))
        x[i:i] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    elif op == 6:  # deletion
        i = int(rng.integers(0, n))
        del x[i : i + int(rng.integers(1, 64))]
    else:  # duplication of a region (repeated chunks, markers, IFDs)
        i = int(rng.integers(0, n))
        j = min(n, i + int(rng.integers(1, 256)))
        x[j:j] = x[i:j] * int(rng.integers(1, 4))
    return bytes(x)


def _fuzz(trials: int, seed: int, tmp_path: Path, figure: Callable[[str, object], None]) -> None:
    rng = np.random.default_rng(seed)
    names = sorted(SEEDS)
    bodies = [SEEDS[k] for k in names]
    escapes: list[str] = []
    slowest = (0.0, "")
    decoded = refused = 0
    for trial in range(trials):
        name = names[trial % len(names)]
        data = mutate(SEEDS[name], rng, bodies)
        via_file = trial % 16 == 0  # the path-taking entry points too, on a share of the files
        path = tmp_path / f"{trial}.jpg"  # a name that lies about the format, as in the issue
        if via_file:
            path.write_bytes(data)
        start = time.thread_time()
        try:
            if via_file:
                probe_image(path)
                out = read_image(path, min_side=int(rng.integers(0, 2)) * 32)
            else:
                out = decode_image(data, min_side=int(rng.integers(0, 2)) * 32, orient=bool(trial % 2))
            assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3, out.shape
            decoded += 1
        except DecodeError as exc:
            refused += 1
            if via_file and exc.path != str(path):
                escapes.append(f"trial {trial} ({name}): DecodeError without the file's path")
        except Exception as exc:
            escapes.append(f"trial {trial} ({name}): {type(exc).__name__}: {exc}")
        elapsed = time.thread_time() - start
        if elapsed > slowest[0]:
            slowest = (elapsed, f"trial {trial} ({name})")
        if via_file:
            path.unlink()
    figure("mutated files tried", trials)
    figure("seed formats", len({k.split("-")[0] for k in names}))
    figure("decoded as RGB / refused with DecodeError", f"{decoded} / {refused}")
    figure("escapes (any exception but DecodeError)", len(escapes))
    figure("slowest file (CPU s)", round(slowest[0], 3))
    assert not escapes, f"{len(escapes)} escapes, e.g.\n" + "\n".join(escapes[:10])
    assert slowest[0] <= PER_FILE_LIMIT_S, f"{slowest[1]} took {slowest[0]:.2f} s of CPU"


def test_seeds_cover_every_format_asked_for() -> None:
    formats = {k.split("-")[0] for k in SEEDS}
    for fmt in ("PNG", "GIF", "BMP", "TIFF", "WEBP", "JPEG", "ICO", "TGA", "PCX", "SGI", "DDS", "PPM"):
        assert fmt in formats
    for name, data in SEEDS.items():  # every seed is itself valid: mutations start from a real file
        if not name.startswith("EPS"):
            assert decode_image(data).shape[2] == 3, name


def test_mutated_files_never_escape(tmp_path: Path, figure: Callable[[str, object], None]) -> None:
    _fuzz(6000, seed=0, tmp_path=tmp_path, figure=figure)


@pytest.mark.slow
def test_mutated_files_never_escape_long(tmp_path: Path, figure: Callable[[str, object], None]) -> None:
    _fuzz(200_000, seed=1, tmp_path=tmp_path, figure=figure)
