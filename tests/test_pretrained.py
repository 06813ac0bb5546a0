"""torchvision's alexnet weights: fetched from a local server (127.0.0.1) through the URL override,
verified by the published SHA-256 prefix convention, resumed, and refused when the digest is wrong."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import test_analysis_support as support
import torch
from PIL import Image
from test_data_download import _Server

from alexnet.cli import main
from alexnet.errors import ChecksumError
from alexnet.pretrained import WEIGHTS, download_weights, weights_path

torchvision_weights = support.torchvision_weights


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: with two threads on a shared 2-core machine each op waits on the
    other thread far longer than it computes (measured: 2.7 ms vs 4 us per small softmax)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

BODY = bytes(range(256)) * 4096  # 1 MiB: a stand-in, the real file is 233 MiB
DIGEST = hashlib.sha256(BODY).hexdigest()


@pytest.fixture
def server():
    s = _Server()
    s.files["/alexnet-owt-7be5be79.pth"] = BODY
    yield s
    s.close()


def test_the_published_file_and_digest_prefix() -> None:
    spec = WEIGHTS["torchvision"]
    assert spec.url == "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
    assert spec.sha256_prefix == "7be5be79" and spec.model == "alexnet_owt"
    assert spec.filename == "alexnet-owt-7be5be79.pth"


def test_download_verifies_and_stores_in_the_data_home(server, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ALEXNET_DATA", str(tmp_path / "home"))
    monkeypatch.setenv("ALEXNET_TORCHVISION_URL", server.url + "/alexnet-owt-7be5be79.pth")
    path = download_weights("torchvision", sha256=DIGEST[:8])
    assert path == tmp_path / "home" / "weights" / "alexnet-owt-7be5be79.pth" == weights_path("torchvision")
    assert path.read_bytes() == BODY
    requests = len(server.ranges)
    assert download_weights("torchvision", sha256=DIGEST[:8]) == path  # in place and verified: no new request
    assert len(server.ranges) == requests


def test_download_resumes_a_partial_file(server, tmp_path: Path) -> None:
    part = tmp_path / "alexnet-owt-7be5be79.pth.part"
    part.write_bytes(BODY[:300_000])
    path = download_weights(url=server.url + "/alexnet-owt-7be5be79.pth", sha256=DIGEST, directory=tmp_path)
    assert server.ranges == ["bytes=300000-"]
    assert path.read_bytes() == BODY and not part.exists()


def test_a_file_with_the_wrong_digest_is_deleted(server, tmp_path: Path) -> None:
    with pytest.raises(ChecksumError, match="7be5be79"):
        download_weights(url=server.url + "/alexnet-owt-7be5be79.pth", directory=tmp_path)  # published prefix
    assert not any(tmp_path.iterdir())


def test_cli_weights(server, tmp_path: Path, capsys) -> None:
    url = server.url + "/alexnet-owt-7be5be79.pth"
    assert main(["weights", "download", "torchvision", "--url", url, "--dir", str(tmp_path)]) == 2
    assert "does not start with the published 7be5be79" in capsys.readouterr().err
    # Verified but not a model: said so, not a traceback.
    assert main(["weights", "download", "--url", url, "--sha256", DIGEST[:12], "--dir", str(tmp_path)]) == 2
    assert "digest verified, but it does not load" in capsys.readouterr().err
    assert main(["weights", "list", "--dir", str(tmp_path)]) == 0
    assert "downloaded: " in capsys.readouterr().out


def test_example_photos_are_optional(monkeypatch) -> None:
    """Without scikit-image (the [examples] extra) there are simply no example photos."""
    import builtins

    from alexnet.analysis.examples import EXAMPLES, example_photos
    from alexnet.data.imagenet import IMAGENET_SYNSETS

    real_import = builtins.__import__

    def no_skimage(name, *args, **kwargs):
        if name == "skimage" or name.startswith("skimage."):
            raise ImportError("No module named 'skimage'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_skimage)
    assert example_photos() == []
    monkeypatch.undo()
    known = set(IMAGENET_SYNSETS)
    assert all(s in known for _, _, expected in EXAMPLES for s in expected)  # real ILSVRC classes
    for photo in example_photos():  # where scikit-image is installed: real uint8 RGB photos
        assert photo.image.dtype == torch.uint8 and photo.image.shape[0] == 3


def test_torchvision_layout_weights_work_with_atlas_explain_and_evaluate(torchvision_weights: Path, tmp_path: Path,
                                                                          capsys) -> None:
    """A file shaped like torchvision's alexnet weights (random values) through the commands."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for split, n in (("train", 3), ("val", 2)):
        for synset in ("n01440764", "n02123045"):
            folder = data / split / synset
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (300, 280, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    common = ["--checkpoint", str(torchvision_weights), "--device", "cpu"]
    assert main(["atlas", *common, "--data", str(data), "--cache", str(tmp_path / "cache"), "--workers", "0",
                 "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "alexnet_owt" in out and "conv5: of" in out and "receptive field 163 px" in out
    image = next((data / "val").rglob("*.jpg"))
    assert main(["explain", *common, str(image), "--cache", str(tmp_path / "cache"), "--class", "tabby"]) == 0
    out = capsys.readouterr().out
    assert "gradcam for 'tabby'" in out and "only knows these 1000 classes" in out
    assert main(["evaluate", *common, "--data", str(data), "--workers", "0"]) == 0
