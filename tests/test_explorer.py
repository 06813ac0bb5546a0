"""The explorer: JSON API over a real (tiny, trained) checkpoint, untrusted uploads, load, browser.

One small dataset (the embedded synthetic shapes at 40 px) and one alexnet_small trained
for a few steps on it are made once per module; the API tests use FastAPI's in-process
client, the load and browser tests a real uvicorn server on a free loopback port.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from alexnet.checkpoint import ModelMeta, save_checkpoint
from alexnet.data.stats import compute_stats

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5"]


# --------------------------------------------------------------------------- fixtures


def _train_tiny(data: Path, out: Path) -> Path:
    """alexnet_small trained for a few steps on the dataset's training split: a real checkpoint."""
    from alexnet.data import open_dataset

    train = open_dataset(data, "train", image_size=40)
    x, y = train.get_batch(range(len(train)))
    stats = compute_stats([x])
    meta = ModelMeta(
        model="alexnet_small",
        num_classes=len(train.classes),
        classes=list(train.classes),
        class_names=list(train.class_names),
        image_size=40,
        input_size=32,
        norm_mode="channel",
        stats=stats,
        options={"width": 0.125, "input_size": 32},
    )
    torch.manual_seed(0)
    model = meta.build()
    transform = meta.eval_transform()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    inputs = transform(x)
    for _ in range(15):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(inputs), y)
        loss.backward()
        opt.step()
    return save_checkpoint(out / "tiny.pt", model.state_dict(), meta)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from alexnet.data import synth

    tmp = tmp_path_factory.mktemp("explorer")
    data = synth.generate(tmp / "data", num_classes=5, train_per_class=8, val_per_class=3, size=40, workers=1)
    return _train_tiny(data, tmp), data


@pytest.fixture(scope="module")
def client(assets: tuple[Path, Path]):
    from alexnet.explorer import create_app

    checkpoint, data = assets
    cache = checkpoint.parent / "cache"  # the unit atlas is built into the test's own folder, not the data home
    app = create_app(checkpoint, data, gallery_size=10, top_channels=6, max_upload_bytes=200_000, max_upload_pixels=1_000_000,
                     cache_root=cache)
    with TestClient(app) as c:
        assert app.state.engine.index.ready.wait(30)
        yield c


def _bomb() -> bytes:
    """A few kB of PNG that declares 9 megapixels: refused from the header, never decoded."""
    buf = io.BytesIO()
    Image.new("1", (3000, 3000)).save(buf, format="PNG")
    return buf.getvalue()


def _png(size: tuple[int, int] = (50, 40), seed: int = 0, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


# --------------------------------------------------------------------------- API


def test_info_gallery_and_page(client: TestClient) -> None:
    info = client.get("/api/info").json()
    assert info["model"] == "alexnet_small" and info["num_classes"] == 5
    assert [t["year"] for t in info["timeline"]] == list(range(2010, 2018))
    assert info["timeline"][2]["error"] == 16.4 and info["human_top5_error"] == 5.1
    assert info["neighbors"] == {"available": True, "ready": True, "indexed": 40}
    gallery = client.get("/api/gallery").json()["images"]
    assert len(gallery) == 10
    assert len({g["class"] for g in gallery}) == 5  # every class before any repeats
    img = client.get(gallery[0]["url"])
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(img.content)).size == (40, 40)
    page = client.get("/")
    assert page.status_code == 200 and "Reveal the depth" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/api/predict" in spec["paths"]
    docs = client.get("/docs")  # rendered here, nothing fetched from a CDN
    assert docs.status_code == 200 and "<script" not in docs.text and "//cdn" not in docs.text
    for path, ops in spec["paths"].items():
        assert path in docs.text and all(m.upper() in docs.text for m in ops)
    assert client.get("/redoc").status_code == 404
    assert "`" not in docs.text and "<code>val-12</code>" in docs.text  # markdown code spans shown as code


def test_analysis_matches_the_model(client: TestClient, assets: tuple[Path, Path]) -> None:
    """The page's numbers are the checkpoint's own forward pass, not something made up."""
    from alexnet.checkpoint import load_model
    from alexnet.data import open_dataset

    image_id = client.get("/api/gallery").json()["images"][3]["id"]
    split, index = image_id.split("-")
    a = client.get("/api/analysis", params={"image": image_id}).json()
    assert [layer["layer"] for layer in a["layers"]] == LAYERS
    assert all(len(layer["strongest"]) == 3 and layer["overlay"].startswith("data:image/jpeg") for layer in a["layers"])
    preds = a["predictions"]
    assert len(preds["top"]) == 5 and abs(sum(p["prob"] for p in preds["top"]) - 1) < 1e-3

    model, meta = load_model(assets[0])
    x, label = open_dataset(assets[1], split, image_size=40)[int(index)]
    with torch.no_grad():
        acts = model.forward_layers(meta.eval_transform()(x[None]), ["conv3", "fc8"])
    probs = torch.softmax(acts["fc8"][0], 0)
    assert preds["top"][0]["index"] == int(probs.argmax())
    assert preds["top"][0]["prob"] == pytest.approx(float(probs.max()), abs=1e-5)
    assert preds["true_label"]["index"] == label and preds["true_label"]["name"] == a["name"]
    assert sum(p["correct"] for p in preds["top"]) == 1  # 5 classes: the true one is always in the top 5

    layer = client.get("/api/activations/conv3", params={"image": image_id}).json()
    conv3 = acts["conv3"][0]
    assert layer["shape"] == list(conv3.shape)
    strongest = conv3.mean((1, 2)).argsort(descending=True)[:6].tolist()
    assert [c["channel"] for c in layer["channels"]] == strongest
    tile = layer["channels"][0]["png"].split(",", 1)[1]
    assert Image.open(io.BytesIO(base64.b64decode(tile))).format == "PNG"


def test_neighbors_and_kernels(client: TestClient) -> None:
    image_id = client.get("/api/gallery").json()["images"][0]["id"]
    nb = client.get("/api/neighbors", params={"image": image_id, "k": 4}).json()
    assert nb["ready"] and len(nb["neighbors"]) == 4
    dists = [n["distance"] for n in nb["neighbors"]]
    assert dists == sorted(dists) and all(n["id"].startswith("train-") for n in nb["neighbors"])
    assert client.get(nb["neighbors"][0]["url"]).status_code == 200
    k = client.get("/api/kernels").json()
    assert k["count"] == 8 and k["kernel_size"] == 5  # width 0.125: max(8, 64/8) kernels of 5x5
    assert Image.open(io.BytesIO(base64.b64decode(k["png"].split(",", 1)[1]))).size[0] > 0


def test_upload_predict_and_reuse(client: TestClient) -> None:
    data = _png(seed=1)
    r = client.post("/api/predict", files={"file": ("my_cat.png", data, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image"]["name"] == "my cat" and body["true_label"] is None and len(body["top"]) == 5
    up = client.post("/api/analysis", files={"file": ("x.jpg", _png(seed=1, fmt="JPEG"), "image/jpeg")}).json()
    # The upload's id addresses the cached result: the page reveals layers without re-uploading.
    layer = client.get("/api/activations/conv5", params={"image": up["id"]})
    assert layer.status_code == 200 and layer.json()["layer"] == "conv5"
    post_layer = client.post("/api/activations/conv1", files={"file": ("x.png", data, "image/png")})
    assert post_layer.status_code == 200 and len(post_layer.json()["channels"]) == 6
    nb = client.post("/api/neighbors", files={"file": ("x.png", data, "image/png")}).json()
    assert len(nb["neighbors"]) == 8


def test_real_photo_upload(client: TestClient) -> None:
    """A real ImageNet JPEG (any size, any aspect) goes through the paper's resize and centre crop."""
    samples = ROOT.parent / "shared" / "data" / "imagenet-samples"
    photos = sorted(p for p in samples.glob("*.JPEG") if p.stat().st_size < 200_000)[:2] if samples.is_dir() else []
    if not photos:
        pytest.skip("no real ImageNet samples in ../shared/data")
    for photo in photos:
        r = client.post("/api/analysis", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["name"] == photo.stem.replace("_", " ")
        assert len(body["layers"]) == 5 and len(body["predictions"]["top"]) == 5


def test_batched_forward_matches_one_by_one(assets: tuple[Path, Path]) -> None:
    """Concurrent requests share forward passes; each still gets exactly its own image's answer."""
    from concurrent.futures import ThreadPoolExecutor

    from alexnet.explorer.engine import Engine

    engine = Engine.from_checkpoint(assets[0], None, max_batch=4)
    images = [engine.decode_upload(_png((40 + i, 44), seed=i), "image/png") for i in range(12)]
    alone = [engine._forward(im[None], ["conv2", "fc8"]) for im in images]
    batches: list[int] = []
    forward = engine._forward_locked

    def counting(x: np.ndarray, layers: list[str]):
        batches.append(len(x))
        return forward(x, layers)

    engine._forward_locked = counting  # type: ignore[method-assign]
    with ThreadPoolExecutor(12) as pool:
        together = list(pool.map(lambda im: engine._forward_one(im, ["conv2", "fc8"]), images))
    assert sum(batches) == 12 and max(batches) <= 4
    for a, b in zip(alone, together, strict=True):
        torch.testing.assert_close(a["fc8"], b["fc8"], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a["conv2"], b["conv2"], atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- untrusted input


@pytest.mark.reliability
@pytest.mark.parametrize(
    ("files", "status"),
    [
        ({"file": ("a.txt", b"hello, not an image", "text/plain")}, 415),
        ({"file": ("a.png", b"hello, not an image", "image/png")}, 422),
        ({"file": ("a.png", _png()[:60], "image/png")}, 422),  # truncated
        ({"file": ("a.png", b"", "image/png")}, 400),
        ({"file": ("big.png", _png((1200, 1000)), "image/png")}, 413),  # 1.2 MP > 1 MP limit
        ({"file": ("bomb.png", _bomb(), "image/png")}, 413),
        ({"file": ("big.bin", b"\xff" * 300_000, "image/jpeg")}, 413),  # bytes over the cap
        ({"other": ("a.png", _png(), "image/png")}, 422),  # wrong field name
    ],
)
def test_bad_uploads_get_4xx_json(client: TestClient, files: dict, status: int, figure) -> None:
    r = client.post("/api/predict", files=files)
    assert r.status_code == status, r.text
    assert isinstance(r.json()["detail"], str)
    figure("bad upload answered with a 4xx JSON error", r.status_code)


@pytest.mark.reliability
def test_cached_upload_still_checked(client: TestClient) -> None:
    data = _png(seed=3)
    assert client.post("/api/predict", files={"file": ("a.png", data, "image/png")}).status_code == 200
    assert client.post("/api/predict", files={"file": ("a.png", data, "text/html")}).status_code == 415


@pytest.mark.reliability
def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from alexnet.cli import main

    assert main(["explore", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 not a checkpoint")
    assert main(["explore", "--checkpoint", str(bad)]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_without_a_dataset(assets: tuple[Path, Path]) -> None:
    """No --data: an empty gallery, no neighbours, and uploads still work."""
    from alexnet.explorer import create_app

    with TestClient(create_app(assets[0], None)) as c:
        assert c.get("/api/gallery").json() == {"images": []}
        assert c.get("/api/info").json()["neighbors"]["available"] is False
        assert c.get("/api/images/val-0").status_code == 404
        nb = c.post("/api/neighbors", files={"file": ("a.png", _png(), "image/png")})
        assert nb.status_code == 200 and nb.json()["available"] is False and nb.json()["neighbors"] == []


def test_cli_refuses_a_busy_port(assets: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from alexnet.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["explore", "--checkpoint", str(assets[0]), "--port", str(port)]) == 2
    assert "choose another --port" in capsys.readouterr().err


def test_data_from_the_run_config(tmp_path: Path, assets: tuple[Path, Path]) -> None:
    """`alexnet explore --checkpoint RUN/checkpoints/best.pt` finds the run's dataset by itself."""
    import json

    from alexnet.runs import run_data as guess_data

    ck = tmp_path / "run" / "checkpoints" / "best.pt"
    ck.parent.mkdir(parents=True)
    ck.write_bytes(assets[0].read_bytes())
    assert guess_data(ck) is None  # no config.json
    (tmp_path / "run" / "config.json").write_text(json.dumps({"data": str(assets[1])}))
    assert guess_data(ck) == assets[1]
    (tmp_path / "run" / "config.json").write_text(json.dumps({"data": str(tmp_path / "gone")}))
    assert guess_data(ck) is None
    (tmp_path / "run" / "config.json").write_text("{not json")
    assert guess_data(ck) is None


@pytest.mark.reliability
def test_bad_requests_and_traversal(client: TestClient, figure) -> None:
    assert client.post("/api/predict", json={"file": "x"}).status_code == 415
    assert client.post("/api/predict", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"}).status_code == 422
    bad_ids = ["..", "../../etc/passwd", "val-999999", "val-1.jpg", "train--1", "upload-abc", "%2e%2e%2fapp.py", "val-1/../../x", "val-1%0A", "val-" + "9" * 40]
    for bad in bad_ids:
        r = client.get(f"/api/images/{bad}")
        assert r.status_code == 404, (bad, r.status_code)
        assert "detail" in r.json()
        assert client.get("/api/analysis", params={"image": bad}).status_code == 404
    assert client.get("/api/activations/fc9", params={"image": "val-0"}).status_code == 404
    assert client.get("/api/predict", params={"image": "val-0", "k": 0}).status_code == 422
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fengine.py", "/api/images/..%2f..%2fsrc"):
        r = client.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert b"def create_app" not in r.content
    figure("traversal and bad ids tried (all 404, nothing outside served)", 2 * len(bad_ids) + 4)


@pytest.mark.reliability
def test_raw_traversal_over_a_real_socket(server: Server, figure) -> None:
    """Paths sent byte-for-byte (no client-side normalisation) never reach files outside."""
    host, port = server.url.removeprefix("http://").split(":")
    for raw in ("/static/../app.py", "/static/../../../../etc/passwd", "/api/images/../../etc/passwd", "/static/%2e%2e/engine.py"):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(f"GET {raw} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            response = b""
            while chunk := s.recv(65536):
                response += chunk
        status = int(response.split(b" ", 2)[1])
        assert status in (400, 404), (raw, response[:200])
        assert b"root:" not in response and b"def create_app" not in response
    figure("raw (un-normalised) traversal requests refused", 4)


# --------------------------------------------------------------------------- a real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class Server(NamedTuple):
    url: str
    pid: int


@pytest.fixture(scope="module")
def server(assets: tuple[Path, Path]):
    """`alexnet explore` in a subprocess on a free 127.0.0.1 port."""
    checkpoint, data = assets
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ALEXNET_DATA": str(checkpoint.parent / "home")}  # the atlas cache
    cmd = [sys.executable, "-m", "alexnet", "explore", "--checkpoint", str(checkpoint), "--data", str(data),
           "--port", str(port), "--log-level", "warning", "--max-upload-mb", "1", "--upload-seconds", "4"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"explorer exited early: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(url + "/api/info", timeout=1).json()["neighbors"]["ready"]:
                break
        except (httpx.HTTPError, ValueError):
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("explorer did not start within 60 s")
    yield Server(url, proc.pid)
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _slow_upload(url: str, declared: int = 200_000) -> socket.socket:
    """A client that declares a large multipart body, sends its start, then goes quiet."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=30)
    boundary = "slowslow"
    s.sendall(
        f"POST /api/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {declared}\r\n\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
        f"filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n".encode() + b"\x89PNG" + b"\0" * 1000
    )
    return s


@pytest.mark.reliability
def test_slow_uploads_cannot_starve_the_others(server: Server, figure) -> None:
    """16 connections that trickle their bodies (twice the processing slots) do not block a real
    upload, which is answered while they are all still open; each slow one is then cut off with
    408 at its deadline (the server runs with --upload-seconds 4)."""
    slow = [_slow_upload(server.url) for _ in range(16)]
    try:
        time.sleep(0.5)  # the slow bodies are being received
        start = time.monotonic()
        r = httpx.post(server.url + "/api/predict", files={"file": ("ok.png", _png(seed=7), "image/png")}, timeout=30)
        answered = time.monotonic() - start
        assert r.status_code == 200
        for s in slow:  # none of them has been answered yet: the real upload did not wait for them
            s.settimeout(0.01)
            with pytest.raises(TimeoutError):
                s.recv(1)
        figure("real upload answered while 16 slow uploads were open (s)", round(answered, 2))
        statuses = []
        for s in slow:
            s.settimeout(15)
            statuses.append(s.recv(4096).split(b" ", 2)[1])
        assert statuses == [b"408"] * 16
    finally:
        for s in slow:
            s.close()


@pytest.mark.reliability
def test_200_concurrent_predictions(server: Server, figure) -> None:
    """200 uploads at once: all answered, none with a 5xx, and the server's memory stays bounded."""
    pid = server.pid
    uploads = [_png((64 + i % 7, 48 + i % 5), seed=i, fmt="JPEG" if i % 2 else "PNG") for i in range(40)]
    uploads[::8] = [_png((540, 540), seed=100 + i) for i in range(5)]  # ~0.9 MB each: near the 1 MiB cap
    assert all(len(u) < 1024 * 1024 for u in uploads)

    async def run() -> list[int]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as c:
            await c.post("/api/predict", files={"file": ("w.png", uploads[1], "image/png")})  # warm-up
            base = _rss_kib(pid)
            with contextlib.suppress(OSError):  # reset the peak (VmHWM) so it measures this load only
                Path(f"/proc/{pid}/clear_refs").write_text("5")

            async def one(i: int) -> int:
                kind = "image/jpeg" if i % 2 else "image/png"
                data = uploads[i % len(uploads)] if i % 10 else b"garbage" * 50  # some bad ones mixed in
                r = await c.post("/api/predict", files={"file": (f"u{i}", data, kind)})
                if r.status_code == 200:
                    assert len(r.json()["top"]) == 5
                return r.status_code

            start = time.perf_counter()
            statuses = await asyncio.gather(*(one(i) for i in range(200)))
            return [*statuses, time.perf_counter() - start, _rss_kib(pid, "VmHWM") - base]

    *statuses, seconds, growth_kib = asyncio.run(run())
    assert not [s for s in statuses if s >= 500]
    assert statuses.count(200) == 180 and statuses.count(422) == 20
    print(f"200 concurrent predictions in {seconds:.1f} s, peak RSS growth {growth_kib / 1024:.1f} MiB")
    assert growth_kib < 300 * 1024
    figure("concurrent requests served (180 images + 20 garbage)", len(statuses))
    figure("5xx responses", sum(st >= 500 for st in statuses))
    figure("seconds for all 200", round(seconds, 1))
    figure("peak server RSS growth, MiB (limit 300)", round(growth_kib / 1024, 1))


# --------------------------------------------------------------------------- the page in a real browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _artifacts(tmp_path: Path) -> Path:
    out = Path(os.environ["ALEXNET_ARTIFACTS"]) if os.environ.get("ALEXNET_ARTIFACTS") else tmp_path / "artifacts"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (make browser)")
def test_page_in_chromium(server: Server, tmp_path: Path) -> None:
    """Pick an image, reveal five layers, check status, real activation images and the top-5; screenshots."""
    sync_api = pytest.importorskip("playwright.sync_api")
    artifacts = _artifacts(tmp_path)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for device, viewport in (("laptop", {"width": 1280, "height": 800}), ("phone", {"width": 390, "height": 844})):
                page = browser.new_page(viewport=viewport, device_scale_factor=2 if device == "phone" else 1)
                problems: list[str] = []
                page.on("pageerror", lambda exc, problems=problems: problems.append(str(exc)))
                page.on("console", lambda m, problems=problems: m.type == "error" and problems.append(m.text))
                page.goto(server.url + "/")
                page.wait_for_selector("#gallery button")
                button = page.locator("#gallery button").nth(1)
                name = button.get_attribute("title")
                button.click()
                status = page.locator("#status")
                sync_api.expect(status).to_have_text(f'Image "{name}" - 0 of 5 layers revealed')
                sync_api.expect(page.locator("#pipeline .stage.lit")).to_have_count(0)  # waits to be seen
                page.locator("#pipeline").scroll_into_view_if_needed()
                sync_api.expect(page.locator("#pipeline .stage.lit")).to_have_count(7, timeout=15_000)
                for k in range(1, 6):
                    page.click("#reveal")
                    sync_api.expect(status).to_have_text(f'Image "{name}" - {k} of 5 layers revealed')
                    sync_api.expect(page.locator(".layer.revealed")).to_have_count(k)
                assert page.locator("#reveal").is_disabled()
                widths = page.eval_on_selector_all(".layer.revealed .tile img", "els => els.map(e => e.complete ? e.naturalWidth : 0)")
                assert len(widths) >= 5 * 6 and min(widths) > 0
                stages = page.eval_on_selector_all("#pipeline .frame img", "els => els.map(e => e.naturalWidth)")
                assert len(stages) == 6 and min(stages) > 0  # the input and five layer overlays
                minis = page.eval_on_selector_all("#pipeline .minis img", "els => els.map(e => e.naturalWidth)")
                assert len(minis) == 15 and min(minis) > 0  # three strongest channels per layer
                top5 = page.locator("#top5 li")
                sync_api.expect(top5).to_have_count(5)
                sync_api.expect(page.locator("#top5 li.correct")).to_have_count(1)  # 5 classes: always in the top 5
                assert "correct label" in page.locator("#top5 li.correct").inner_text()
                assert float(top5.first.locator(".pct").inner_text().rstrip("%").lstrip("<")) > 0
                sync_api.expect(page.locator("#neighbors li")).to_have_count(8, timeout=15_000)
                assert page.eval_on_selector("#kernels", "e => e.naturalWidth") > 0
                assert page.locator("#chart svg circle").count() == 8
                page.wait_for_timeout(700)  # let the last transitions settle for the picture
                page.screenshot(path=str(artifacts / f"explorer-{device}.png"), full_page=True)
                if device == "laptop":  # an upload goes through the same reveal
                    page.set_input_files("#upload", files=[{"name": "my_photo.png", "mimeType": "image/png", "buffer": _png((120, 90), seed=7)}])
                    sync_api.expect(status).to_have_text('Image "my photo" - 0 of 5 layers revealed', timeout=15_000)
                    sync_api.expect(page.locator("#reveal")).to_be_enabled()
                    page.click("#reveal")
                    sync_api.expect(status).to_have_text('Image "my photo" - 1 of 5 layers revealed')
                assert not problems, problems
                if device == "laptop":  # a bad upload is explained on the page (its 422 is logged: expected)
                    page.set_input_files("#upload", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not really a png"}])
                    sync_api.expect(page.locator("#upload-error")).to_contain_text("not an image")
                page.close()
        finally:
            browser.close()
