"""The explorer's anatomy view and live stencil: the API's numbers are the model's own, and the
page's stencil, stepped in a real browser, fills in the layer's real activation map.

Two engines: an ``alexnet_small`` checkpoint (random weights, no normalisation layer, on a
small synthetic dataset: the one the page and the browser test use) and the paper's
``alexnet`` (random weights, five classes) for the stride-4, padded, two-tower geometry.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from alexnet.checkpoint import ModelMeta, load_model, save_checkpoint
from alexnet.data.stats import compute_stats
from alexnet.errors import ExplorerError


def _arr(blob: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(blob["data"]), dtype="<f4").reshape(blob["shape"])


def _slide(inp: np.ndarray, weight: np.ndarray, bias: float, stride: int, padding: int) -> np.ndarray:
    """The convolution written as the page does it: the stencil's dot product at every position."""
    c, k = weight.shape[0], weight.shape[-1]
    padded = np.pad(inp.astype(np.float64), ((0, 0), (padding, padding), (padding, padding)))
    out_h = (padded.shape[1] - k) // stride + 1
    out_w = (padded.shape[2] - k) // stride + 1
    out = np.empty((out_h, out_w))
    for y in range(out_h):
        for x in range(out_w):
            patch = padded[:c, y * stride : y * stride + k, x * stride : x * stride + k]
            out[y, x] = float((patch * weight).sum()) + bias
    return out


def _png(size: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, data): alexnet_small, random weights, no norm layer, on synthetic shapes."""
    from alexnet.data import open_dataset, synth

    tmp = tmp_path_factory.mktemp("stencil")
    data = synth.generate(tmp / "data", num_classes=4, train_per_class=3, val_per_class=2, size=40, workers=1)
    train = open_dataset(data, "train", image_size=40)
    x, _ = train.get_batch(range(len(train)))
    meta = ModelMeta(
        model="alexnet_small", num_classes=len(train.classes), classes=list(train.classes),
        class_names=list(train.class_names), image_size=40, input_size=32, norm_mode="channel",
        stats=compute_stats([x]), options={"width": 0.125, "input_size": 32, "norm": "none"},
    )
    torch.manual_seed(0)
    return save_checkpoint(tmp / "small.pt", meta.build().state_dict(), meta), data


@pytest.fixture(scope="module")
def client(small: tuple[Path, Path]):
    from alexnet.explorer import create_app

    checkpoint, data = small
    with TestClient(create_app(checkpoint, data, gallery_size=4, build_index=False)) as c:
        yield c


@pytest.fixture(scope="module")
def paper_engine():
    """The paper's network (random weights) behind an engine without a dataset: uploads only."""
    from alexnet.explorer.engine import Engine

    rng = np.random.default_rng(1)
    stats = compute_stats([torch.from_numpy(rng.integers(0, 255, (2, 3, 256, 256), dtype=np.uint8))])
    classes = [f"c{i}" for i in range(5)]
    meta = ModelMeta("alexnet", 5, classes, classes, 256, 224, "channel", stats)
    torch.manual_seed(0)
    return Engine(meta.build(), meta)


def test_anatomy_endpoint(client: TestClient, small: tuple[Path, Path]) -> None:
    from alexnet.anatomy import anatomy

    body = client.get("/api/anatomy").json()
    model, meta = load_model(small[0])
    assert body == anatomy(model, meta.input_size, name="alexnet_small").to_dict()
    conv1 = body["rows"][0]
    assert conv1["label"] == "conv1" and conv1["out_shape"] == [8, 32, 32]
    assert conv1["params_formula"] == "8 x (5*5*3 + 1) = 608"
    assert body["totals"]["model_params"] == sum(p.numel() for p in model.parameters()) == body["totals"]["params"]


def test_conv1_stencil_is_the_real_activation(client: TestClient, small: tuple[Path, Path]) -> None:
    """Sliding the sent kernel over the sent input gives the sent map, and max(0, map) is the
    model's own conv1 activation for that kernel (computed here from the checkpoint)."""
    image_id = client.get("/api/gallery").json()["images"][1]["id"]
    model, meta = load_model(small[0])
    split, index = image_id.split("-")
    from alexnet.data import open_dataset

    img, _ = open_dataset(small[1], split, image_size=meta.image_size)[int(index)]
    with torch.no_grad():
        real = model.forward_layers(meta.eval_transform()(img[None]), ["conv1"])["conv1"][0]
    for kernel in (0, 5):
        s = client.get(f"/api/stencil?image={image_id}&layer=conv1&kernel={kernel}").json()
        assert (s["kernel_size"], s["stride"], s["padding"], s["kernels"]) == (5, 1, 2, 8)
        inp, weight, fmap = _arr(s["input"]), _arr(s["weight"]), _arr(s["map"])
        assert inp.shape == (3, 32, 32) and weight.shape == (3, 5, 5) and fmap.shape == (32, 32)
        np.testing.assert_allclose(_slide(inp, weight, s["bias"], 1, 2), fmap, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.maximum(fmap, 0), real[kernel].numpy(), rtol=1e-5, atol=1e-5)
        assert s["relu_is_stage"] and s["activation"].startswith("pre-ReLU")
        assert s["picture"].startswith("data:image/png;base64,")


def test_conv2_stencil_over_conv1_maps(client: TestClient) -> None:
    image_id = client.get("/api/gallery").json()["images"][0]["id"]
    s = client.get(f"/api/stencil?image={image_id}&layer=conv2&kernel=3").json()
    inp, weight, fmap = _arr(s["input"]), _arr(s["weight"]), _arr(s["map"])
    assert inp.shape == (8, 16, 16) and weight.shape == (8, 5, 5) and fmap.shape == (16, 16)
    assert inp.min() >= 0  # pooled ReLU maps of conv1
    np.testing.assert_allclose(_slide(inp, weight, s["bias"], 1, 2), fmap, rtol=1e-4, atol=1e-4)
    assert "picture" not in s


def test_stencil_requests_are_checked(client: TestClient) -> None:
    image_id = client.get("/api/gallery").json()["images"][0]["id"]
    for query, status in (
        (f"image={image_id}&layer=conv3&kernel=0", 404),
        (f"image={image_id}&layer=conv1&kernel=8", 404),
        (f"image={image_id}&layer=conv1&kernel=-1", 422),
        (f"image={image_id}&layer={'x' * 40}", 422),
        ("image=val-999&layer=conv1", 404),
        ("image=../etc&layer=conv1", 404),
    ):
        r = client.get(f"/api/stencil?{query}")
        assert r.status_code == status, (query, r.text)
        assert isinstance(r.json()["detail"], str)
    up = client.post("/api/stencil?layer=conv1&kernel=2", files={"file": ("u.png", _png(48, 3), "image/png")})
    assert up.status_code == 200 and up.json()["image"]["id"].startswith("upload-")
    again = client.get(f"/api/stencil?image={up.json()['image']['id']}&layer=conv2&kernel=0")
    assert again.status_code == 200


def test_paper_geometry_and_towers(paper_engine) -> None:
    """conv1 at stride 4 with padding 2 (55x55 from 224); a conv2 kernel of tower B slides over
    tower B's 48 maps only."""
    a = paper_engine.analyse_upload(_png(300, 5), "image/png", "photo.png")
    s = paper_engine.stencil(a, "conv1", 50)
    inp, weight, fmap = _arr(s["input"]), _arr(s["weight"]), _arr(s["map"])
    assert inp.shape == (3, 224, 224) and weight.shape == (3, 11, 11) and fmap.shape == (55, 55)
    np.testing.assert_allclose(_slide(inp, weight, s["bias"], 4, 2), fmap, rtol=1e-4, atol=1e-5)
    assert s["relu_is_stage"]
    s2 = paper_engine.stencil(a, "conv2", 200)
    assert s2["groups"] == 2 and s2["group"] == 1 and s2["input_channels"] == [48, 96]
    inp2, w2, map2 = _arr(s2["input"]), _arr(s2["weight"]), _arr(s2["map"])
    assert inp2.shape == (48, 27, 27) and w2.shape == (48, 5, 5)
    np.testing.assert_allclose(_slide(inp2, w2, s2["bias"], 1, 2), map2, rtol=1e-4, atol=1e-4)
    with pytest.raises(ExplorerError, match=r"kernels 0\.\.95"):
        paper_engine.stencil(a, "conv1", 96)
    rows = paper_engine.anatomy()["rows"]
    assert rows[0]["params_formula"] == "96 x (11*11*3 + 1) = 34,944"


# --------------------------------------------------------------------------- the page in a real browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(small: tuple[Path, Path]):
    """The app on a free loopback port, served by uvicorn in a thread of this process."""
    import uvicorn

    from alexnet.explorer import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(small[0], small[1], gallery_size=4, build_index=False)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (make browser)")
def test_stencil_in_chromium(server: str, small: tuple[Path, Path], tmp_path: Path) -> None:
    """Step the stencil from the keyboard, check each step's dot product, scrub to the end and
    compare the page's finished map with the model's real conv1 map; the anatomy view opens
    a layer's arithmetic. Screenshots at desktop and phone sizes."""
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    out = Path(os.environ.get("ALEXNET_ARTIFACTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    import httpx

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for device, viewport in (("desktop", {"width": 1280, "height": 800}), ("phone", {"width": 390, "height": 844})):
                page = browser.new_page(viewport=viewport, device_scale_factor=2 if device == "phone" else 1)
                problems: list[str] = []
                page.on("pageerror", lambda exc, problems=problems: problems.append(str(exc)))
                page.on("console", lambda m, problems=problems: m.type == "error" and problems.append(m.text))
                page.goto(server + "/")
                page.wait_for_selector("#gallery button")
                # The anatomy view: one button per layer; clicking one shows its arithmetic.
                expect(page.locator("#anatomy-layers button")).to_have_count(len(httpx.get(server + "/api/anatomy").json()["rows"]))
                page.locator("#anatomy-layers button", has_text="conv2").click()
                expect(page.locator("#anatomy-detail")).to_contain_text("24 x (5*5*8 + 1) = 4,824")
                # The stencil: kernel 2 of conv1 over the chosen image.
                page.locator("#gallery button").nth(1).click()
                image_id = page.locator("#gallery button").nth(1).get_attribute("data-id")
                page.locator("#stencil").scroll_into_view_if_needed()
                kernel = page.locator("#stencil-kernels button").nth(2)
                kernel.click()
                expect(kernel).to_have_attribute("aria-pressed", "true")
                s = httpx.get(f"{server}/api/stencil?image={image_id}&layer=conv1&kernel=2").json()
                fmap = _arr(s["map"])
                expect(page.locator("#stencil-map")).to_have_attribute("data-kernel", "2")
                slider = page.locator("#stencil-pos")
                slider.focus()
                page.keyboard.press("Home")
                for step in range(4):  # (0,0) (0,1) (0,2) (0,3): the stencil moves along the top row
                    expect(page.locator("#stencil-readout")).to_have_attribute("data-pos", str(step))
                    shown = float(page.locator("#stencil-readout").get_attribute("data-value"))
                    assert shown == pytest.approx(float(fmap[0, step]), rel=1e-4, abs=1e-4)
                    assert page.locator("#stencil-map").get_attribute("data-filled") == str(step + 1)
                    page.keyboard.press("ArrowRight")
                page.click("#stencil-next")
                expect(page.locator("#stencil-readout")).to_have_attribute("data-pos", "5")
                page.keyboard.press("End")  # scrub to the last position: the whole map is filled
                slider.focus()
                page.keyboard.press("End")
                n = fmap.size
                expect(page.locator("#stencil-map")).to_have_attribute("data-filled", str(n))
                values = np.array([float(v) for v in page.locator("#stencil-map").get_attribute("data-values").split(",")])
                np.testing.assert_allclose(values.reshape(fmap.shape), fmap, rtol=1e-4, atol=1e-4)
                # ...and that is the model's own conv1 activation (after its ReLU).
                model, meta = load_model(small[0])
                from alexnet.data import open_dataset

                split, index = image_id.split("-")
                img, _ = open_dataset(small[1], split, image_size=meta.image_size)[int(index)]
                with torch.no_grad():
                    real = model.forward_layers(meta.eval_transform()(img[None]), ["conv1"])["conv1"][0, 2]
                np.testing.assert_allclose(np.maximum(values.reshape(fmap.shape), 0), real.numpy(), rtol=1e-4, atol=1e-4)
                # Switching kernels starts over with the new kernel's numbers.
                page.click("#stencil-kernel-next")
                expect(page.locator("#stencil-map")).to_have_attribute("data-kernel", "3")
                # One level up: a conv2 unit as a stencil over conv1's maps.
                expect(page.locator("#stencil2-map")).to_have_attribute("data-kernel", "0")
                assert int(page.locator("#stencil2-parts li").count()) > 0
                page.wait_for_timeout(300)
                page.locator("#anatomy").screenshot(path=str(out / f"anatomy_{device}_section.png"))
                page.screenshot(path=str(out / f"anatomy_{device}.png"), full_page=True)
                assert not problems, problems
                page.close()
        finally:
            browser.close()
