"""The explorer's evidence: the unit atlas and probes built in the background and stored by the
weights' digest, a channel's map and top patches, what each layer knows, occlusion and
Grad-CAM, feature visualisation and the answer's scope; on the demo-style ``alexnet_small``
and on a torchvision-layout ``alexnet_owt``; and the page driven by keyboard in Chromium.

Every number the endpoints return is checked against the library computed directly on the
same model, so a page that showed something else would fail here.
"""

from __future__ import annotations

import base64
import io
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from test_explorer import _png, _train_tiny

from alexnet.checkpoint import ModelMeta, load_model
from alexnet.data.stats import compute_stats

LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5"]


def _image(url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(checkpoint, data, cache root): alexnet_small trained a few steps on 5 synthetic shapes."""
    from alexnet.data import synth

    tmp = tmp_path_factory.mktemp("evidence")
    data = synth.generate(tmp / "data", num_classes=5, train_per_class=8, val_per_class=3, size=40, workers=1)
    return _train_tiny(data, tmp), data, tmp / "cache"


@pytest.fixture(scope="module")
def client(tiny: tuple[Path, Path, Path]):
    from alexnet.explorer import create_app

    checkpoint, data, cache = tiny
    app = create_app(checkpoint, data, gallery_size=5, top_channels=6, build_index=False, build_atlas=True,
                     cache_root=cache, featvis_seconds=1.0)
    with TestClient(app) as c:
        assert app.state.engine.evidence.job.ready.wait(60)
        yield c


def _first(client: TestClient) -> str:
    return client.get("/api/gallery").json()["images"][0]["id"]


def _dataset_image(data: Path, image_id: str, image_size: int) -> torch.Tensor:
    from alexnet.data import open_dataset

    split, index = image_id.split("-")
    return open_dataset(data, split, image_size=image_size)[int(index)][0]


# --------------------------------------------------------------------------- atlas and probes


def test_atlas_is_built_once_per_weights_and_reported(client: TestClient, tiny) -> None:
    from alexnet.analysis.atlas import load_atlas, model_cache_dir
    from alexnet.analysis.retrieval import weights_fingerprint
    from alexnet.explorer.engine import Engine

    checkpoint, data, cache = tiny
    model, meta = load_model(checkpoint)
    info = client.get("/api/info").json()
    assert info["describe"] == meta.describe() and "121,917 parameters" in info["describe"]
    assert info["params"] == meta.num_params() == sum(p.numel() for p in model.parameters())
    status = info["atlas"]
    assert status["ready"] and status["built"] and status["probes"] and status["calibrated"]
    assert status["sample"] == 40 and status["top_k"] == 9  # every training image of the small set
    # Stored beside the model's other caches, under the weights' digest, and read back as stored.
    where = model_cache_dir(weights_fingerprint(model), cache) / "atlas"
    assert (where / "atlas.json").is_file()
    stored = load_atlas(model, cache)
    assert stored is not None
    body = client.get("/api/atlas").json()
    assert [body["layers"][name]["caption"] for name in LAYERS] == [stored.caption(name) for name in LAYERS]
    assert [p["layer"] for p in body["probes"]] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    # A second explorer on the same weights reads it instead of building it again.
    again = Engine.from_checkpoint(checkpoint, data, cache_root=cache)
    again.evidence.build_atlas()
    assert again.evidence.status()["ready"] and again.evidence.status()["built"] is False


def test_unit_shows_the_channels_map_and_its_top_patches(client: TestClient, tiny) -> None:
    from alexnet.analysis.atlas import load_atlas

    checkpoint, data, cache = tiny
    model, meta = load_model(checkpoint)
    image_id = _first(client)
    u = client.get(f"/api/unit?image={image_id}&layer=conv3&channel=5").json()
    with torch.no_grad():
        act = model.forward_layers(meta.eval_transform()(_dataset_image(data, image_id, 40)[None]), ["conv3"])["conv3"][0]
    assert u["channels"] == act.shape[0] and u["shape"] == list(act.shape[1:])
    assert u["max"] == pytest.approx(float(act[5].max()), abs=1e-3)
    means = act.mean((1, 2))
    assert u["rank"] == int((means > means[5]).sum()) + 1
    assert min(_image(u["map"]).size) >= 192  # enlarged, not a 7x7 blob
    la = load_atlas(model, cache).layers["conv3"]
    hits = u["atlas"]["hits"]
    assert la.values.shape[1] == 9 and len(hits) == int((la.images[5] >= 0).sum()) >= 1  # a hit per image it fired on
    assert [h["value"] for h in hits] == pytest.approx(la.values[5].tolist())
    first = np.asarray(_image(hits[0]["patch"]).convert("RGB"))
    side = la.patches.shape[-1]
    factor = first.shape[0] // side  # enlarged by an integer factor, nearest neighbour: exact pixels
    np.testing.assert_array_equal(first[::factor, ::factor], la.patches[5, 0].permute(1, 2, 0).numpy())
    assert client.get(f"/api/unit?image={image_id}&layer=conv3&channel=999").status_code == 404
    assert client.get(f"/api/unit?image={image_id}&layer=fc6&channel=0").status_code == 404
    assert client.get(f"/api/unit?image={image_id}&layer=conv3&channel=-1").status_code == 422


def test_knowledge_is_each_layers_probe_on_this_image(client: TestClient, tiny) -> None:
    from alexnet.analysis.atlas import load_atlas
    from alexnet.analysis.probes import layer_knowledge

    checkpoint, data, cache = tiny
    model, meta = load_model(checkpoint)
    image_id = _first(client)
    k = client.get(f"/api/knowledge?image={image_id}").json()
    probes = load_atlas(model, cache).probes
    expected = layer_knowledge(model, meta, probes, _dataset_image(data, image_id, 40)[None])
    truth = client.get(f"/api/predict?image={image_id}").json()["true_label"]
    assert k["target"]["source"] == "the true label" and k["target"]["name"] == truth["name"]
    t = k["target"]["index"]
    assert [row["layer"] for row in k["layers"]] == [*LAYERS, "fc6", "fc7", "fc8"]
    for row in k["layers"]:
        assert row["prob"] == pytest.approx(float(expected[row["layer"]][0, t]), abs=1e-5)
    assert k["layers"][-1]["prob"] == pytest.approx(truth["prob"], abs=1e-5)  # fc8: the model's own softmax


def test_attribution_for_any_class_batched_and_cached(client: TestClient, tiny) -> None:
    from alexnet.analysis.attribution import Attributor

    checkpoint, data, _ = tiny
    model, meta = load_model(checkpoint)
    image_id = _first(client)
    r = client.get(f"/api/attribution?image={image_id}&target=3&target=1").json()
    assert [t["index"] for t in r["targets"]] == [3, 1] and r["methods"] == ["occlusion", "gradcam"]
    direct = Attributor(model, meta, "cpu")
    image = _dataset_image(data, image_id, 40)[None].expand(2, -1, -1, -1)
    occ, cam = direct.occlusion(image, [3, 1]), direct.gradcam(image, [3, 1])
    for row, o, g in zip(r["targets"], occ, cam, strict=True):
        assert row["occlusion"]["max"] == pytest.approx(float(o.values.max()), abs=1e-5)
        assert row["gradcam"]["max"] == pytest.approx(float(g.values.max()), abs=1e-5)
        assert _image(row["occlusion"]["overlay"]).size == (224, 224)
    attributor = client.app.state.engine.evidence._attributor
    cached = len(attributor._cache)
    again = client.get(f"/api/attribution?image={image_id}&target=1&method=gradcam").json()
    assert again["targets"][0]["gradcam"]["max"] == r["targets"][1]["gradcam"]["max"]
    assert len(attributor._cache) == cached  # served from the cache, nothing recomputed
    assert client.get(f"/api/attribution?image={image_id}&target=99").status_code == 422
    assert client.get(f"/api/attribution?image={image_id}&method=saliency").status_code == 422
    up = client.post("/api/attribution?method=gradcam", files={"file": ("p.png", _png(seed=4), "image/png")})
    assert up.status_code == 200 and up.json()["image"]["id"].startswith("upload-")


def test_feature_visualisation_is_cached_and_fits_a_time_budget(client: TestClient) -> None:
    first = client.get("/api/featvis?layer=conv2&unit=3").json()
    assert first["computed"] and 16 <= first["steps"] <= 128 and first["steps"] % 16 == 0
    assert min(_image(first["png"]).size) >= 192
    second = client.get("/api/featvis?layer=conv2&unit=3").json()
    assert not second["computed"] and second["png"] == first["png"]
    fc = client.get("/api/featvis?layer=fc8&unit=2").json()
    assert fc["class"] == client.get("/api/info").json()["classes"][2]
    assert client.get("/api/featvis?layer=conv2&unit=9999").status_code == 404
    assert client.get("/api/featvis?layer=pool1&unit=0").status_code == 404


def test_the_answer_says_how_few_classes_the_model_knows(client: TestClient, tiny) -> None:
    from alexnet.analysis.atlas import load_atlas

    checkpoint, _, cache = tiny
    model, _ = load_model(checkpoint)
    ood = load_atlas(model, cache).ood
    p = client.post("/api/predict", files={"file": ("photo.png", _png((120, 90), seed=7), "image/png")}).json()
    scope = p["scope"]
    assert "only knows these 5 classes" in scope["message"] and scope["calibrated"]
    assert scope["threshold"] == pytest.approx(ood.threshold)
    assert scope["outside"] == (max(t["prob"] for t in p["top"]) < ood.threshold)


def test_bad_upload_message_is_words_not_a_code(client: TestClient) -> None:
    r = client.post("/api/predict", files={"file": ("a.png", b"hello, not an image", "image/png")})
    assert r.status_code == 422 and r.json()["detail"] == "the file is not an image"


def test_while_the_atlas_builds_and_without_training_data(tiny) -> None:
    """The page degrades: 503 while building (it retries), 404 where there can be no atlas;
    the live activations, the channel's own map and the class count work regardless."""
    from alexnet.explorer import create_app

    checkpoint, data, cache = tiny
    with TestClient(create_app(checkpoint, data, gallery_size=2, build_index=False, build_atlas=False,
                               cache_root=cache / "other")) as c:
        assert c.get("/api/info").json()["atlas"]["building"]
        assert c.get("/api/atlas").status_code == 503
        image_id = _first(c)
        u = c.get(f"/api/unit?image={image_id}&layer=conv2&channel=0").json()
        assert u["atlas"]["ready"] is False and "still being built" in u["atlas"]["message"]
        assert c.get(f"/api/knowledge?image={image_id}").status_code == 503
        scope = c.get(f"/api/predict?image={image_id}").json()["scope"]
        assert scope["calibrated"] is False and "only knows these 5 classes" in scope["message"]
    with TestClient(create_app(checkpoint, None, build_index=False, cache_root=cache / "none")) as c:
        status = c.get("/api/info").json()["atlas"]
        assert status["available"] is False and not status["building"]
        assert c.get("/api/atlas").status_code == 404


# --------------------------------------------------------------------------- a torchvision-layout model


@pytest.fixture(scope="module")
def owt(tmp_path_factory: pytest.TempPathFactory):
    """alexnet_owt (torchvision's layout, random weights, 3 classes) on 256 px synthetic shapes."""
    from alexnet.data import open_dataset, synth
    from alexnet.explorer.engine import Engine

    tmp = tmp_path_factory.mktemp("owt")
    data = synth.generate(tmp / "data", num_classes=3, train_per_class=2, val_per_class=1, size=256, workers=1)
    train = open_dataset(data, "train", image_size=256)
    x, _ = train.get_batch(range(len(train)))
    meta = ModelMeta("alexnet_owt", 3, list(train.classes), list(train.class_names), 256, 224, "channel", compute_stats([x]))
    torch.manual_seed(0)
    eng = Engine(meta.build(), meta, data, gallery_size=3, atlas_top_k=2, cache_root=tmp / "cache", featvis_seconds=2.0)
    eng.evidence.build_atlas()
    return eng


def test_evidence_on_a_torchvision_layout_model(owt) -> None:
    ev = owt.evidence
    assert ev.status()["ready"], ev.status()
    a = owt.analyse_id("val-0")
    u = ev.unit(a, "conv5", 7)
    assert u["channels"] == 256 and u["shape"] == [13, 13] and len(u["atlas"]["hits"]) == 2
    assert u["atlas"]["receptive_field"] == 163  # conv5's field in torchvision's AlexNet
    k = ev.knowledge(a)
    assert [row["layer"] for row in k["layers"]][-1] == "fc8" and k["target"]["source"] == "the true label"
    r = ev.attribution(a, [0, 2], ("gradcam",))
    assert [t["index"] for t in r["targets"]] == [0, 2] and "occlusion" not in r["targets"][0]
    assert "alexnet_owt" in owt.info()["describe"] and owt.info()["params"] == sum(p.numel() for p in owt.model.parameters())


@pytest.mark.slow
def test_occlusion_and_featvis_on_a_torchvision_layout_model(owt) -> None:
    a = owt.analyse_id("val-1")
    r = owt.evidence.attribution(a, None, ("occlusion",))
    assert r["occlusion_window"] == {"window": 32, "stride": 16}
    f = owt.evidence.featvis("conv4", 3)
    assert f["computed"] and f["steps"] >= 16


# --------------------------------------------------------------------------- the page, by keyboard

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(tiny: tuple[Path, Path, Path]):
    import uvicorn

    from alexnet.explorer import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    checkpoint, data, cache = tiny
    app = create_app(checkpoint, data, gallery_size=5, build_index=False, build_atlas=True, cache_root=cache,
                     featvis_seconds=1.0)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app
    srv.should_exit = True
    thread.join(10)


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (make browser)")
def test_keyboard_reveal_and_a_conv3_tile_shows_its_top_patches(server, tiny) -> None:
    """Skip link to the controls; Reveal keeps focus through five reveals; a conv3 tile opened
    with Enter shows its map and top patches (the atlas's); Escape returns to the tile. The depth
    curve has a point per revealed layer; a bad upload keeps the image and says why in words."""
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    url, app = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.goto(url + "/")
            page.wait_for_selector("#gallery button[aria-pressed='true']")
            expect(page.locator("#reveal")).to_be_enabled()
            expect(page.locator("#model-text")).to_contain_text("alexnet_small(input_size=32, width=0.125): 121,917 parameters")
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.className") == "skip-link"
            page.keyboard.press("Enter")
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.id") == "reveal"
            name = page.locator("#gallery button[aria-pressed='true']").get_attribute("title")
            for k in range(1, 6):
                page.keyboard.press("Enter")
                expect(page.locator("#status")).to_have_text(f'Image "{name}" - {k} of 5 layers revealed')
                if k < 5:  # focus stays on Reveal while it loads and after
                    assert page.evaluate("document.activeElement.id") == "reveal"
            assert page.evaluate("document.activeElement.id") == "result-title"  # Reveal is done: focus moves on
            expect(page.locator("#depth-chart circle")).to_have_count(8)  # five conv probes, fc6, fc7, fc8
            expect(page.locator("#layer-conv3 .layer-caption")).to_contain_text("conv3: of ")  # measured, not a fixed phrase
            # Tab from the conv2 tiles into conv3's first tile, then open it with Enter.
            page.locator("#layer-conv2 .tile").last.focus()
            page.keyboard.press("Tab")
            tile = page.locator("#layer-conv3 .tile").first
            assert page.evaluate("document.activeElement.dataset.layer") == "conv3"
            channel = int(tile.get_attribute("data-channel"))
            page.keyboard.press("Enter")
            expect(page.locator("#unit-title")).to_have_text(f"conv3 · channel {channel}")
            atlas = app.state.engine.evidence.job.atlas
            fired = int((atlas.layers["conv3"].images[channel] >= 0).sum())
            assert fired >= 1
            expect(page.locator("#unit-patches img")).to_have_count(fired)
            assert min(page.eval_on_selector_all("#unit-patches img", "els => els.map(e => e.naturalWidth)")) > 0
            labels = [atlas.info["class_names"][int(c)] for c in atlas.layers["conv3"].labels[channel] if c >= 0]
            assert page.locator("#unit-patches span").all_inner_texts() == labels
            page.keyboard.press("Escape")
            expect(page.locator("#unit")).to_be_hidden()
            assert page.evaluate("document.activeElement.dataset.channel") == str(channel)
            # Why this answer: occlusion and Grad-CAM for the model's answer.
            expect(page.locator("#explain-occ")).to_have_attribute("src", re.compile("^data:image/jpeg"))
            expect(page.locator("#scope-note")).to_contain_text("only knows these 5 classes")
            # A bad upload keeps the current image and explains itself in words.
            page.set_input_files("#upload", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not a png"}])
            expect(page.locator("#upload-error")).to_contain_text("“notes.png” could not be used: the file is not an image")
            assert "not_an_image" not in page.locator("#upload-error").inner_text()
            expect(page.locator("#status")).to_have_text(f'Image "{name}" - 5 of 5 layers revealed')
            # The timeline: the 15.3% entry with extra data, every value readable without hover.
            assert page.locator("#chart .pt.extra").count() == 1
            expect(page.locator("#timeline-table tbody tr")).to_have_count(8)
            assert not problems, problems
        finally:
            browser.close()


# --------------------------------------------------------------------------- an ImageNet model without a dataset


def _imagenet_engine():
    from alexnet.checkpoint import imagenet_meta
    from alexnet.explorer.engine import Engine

    meta = imagenet_meta("alexnet_owt", 1000)
    torch.manual_seed(0)
    return Engine(meta.build(), meta, None, gallery_size=3)


def test_imagenet_gallery_offers_scikit_image_photos_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """With scikit-image (faked here: it is not installed), its photos are the gallery; they are
    served and analysed like any image. Without it, the gallery is empty and says why."""
    import sys
    import types

    rng = np.random.default_rng(0)
    photos = {"chelsea": rng.integers(0, 255, (300, 451, 3), dtype=np.uint8),
              "coffee": rng.integers(0, 255, (400, 600, 3), dtype=np.uint8)}
    data = types.ModuleType("skimage.data")
    for name, arr in photos.items():
        setattr(data, name, lambda arr=arr: arr)
    data.astronaut = lambda: (_ for _ in ()).throw(OSError("not downloaded"))  # one that fails is skipped
    pkg = types.ModuleType("skimage")
    pkg.data = data
    monkeypatch.setitem(sys.modules, "skimage", pkg)
    monkeypatch.setitem(sys.modules, "skimage.data", data)
    eng = _imagenet_engine()
    assert [g["id"] for g in eng.gallery_items()] == ["sample-chelsea", "sample-coffee"]
    assert eng.info()["gallery_source"] == "scikit-image"
    jpeg = Image.open(io.BytesIO(eng.image_jpeg("sample-coffee")))
    assert jpeg.size == (256, 256)
    a = eng.analyse_id("sample-chelsea")
    assert a.true_index is None and a.probs.shape == (1000,) and a.name == "Chelsea the cat"
    expected = eng.predictions(a)["expected"]  # tabby, tiger cat, Egyptian cat: what a right answer would be
    assert len(expected) == 3 and set(expected) <= set(eng.meta.class_names)
    from alexnet.errors import ExplorerError

    for bad in ("sample-astronaut", "sample-../x", "sample-"):
        with pytest.raises(ExplorerError):
            eng.analyse_id(bad)
    monkeypatch.setitem(sys.modules, "skimage", None)  # not installed: skipped, and said so
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    bare = _imagenet_engine()
    assert bare.gallery_items() == [] and "scikit-image" in bare.info()["gallery_note"]
