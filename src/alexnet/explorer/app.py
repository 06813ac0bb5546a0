"""The explorer web app: a FastAPI JSON API over :class:`~alexnet.explorer.engine.Engine`
plus the static page that tells the story with it.

``create_app(checkpoint, data)`` builds the app; ``serve(...)`` runs it with uvicorn on
127.0.0.1 unless told otherwise. ``/openapi.json`` describes every endpoint and ``/docs``
renders it as one self-contained page (FastAPI's Swagger page loads its code from a CDN,
which a machine offline cannot reach).

Every request is untrusted. Bodies of POST requests are read by :class:`UploadGate`
before the framework sees them: each capped in bytes and in time, all of them together
in memory, and at most ``max_concurrent_uploads`` processed at a time, so neither a flood
of uploads, nor one huge one, nor clients that send slowly can exhaust memory or starve others.
Images are addressed by dataset index (``val-12``), never by path, so no request can
reach a file outside the dataset.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alexnet.explorer.engine import CONV_LAYERS, Analysis, Engine, ExplorerError
from alexnet.runs import run_data

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"

# The page loads nothing from elsewhere; the CSP makes sure of it.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


# Parameter types shared by the endpoints (module level: FastAPI resolves them by name).
ImageQuery = Annotated[str, Query(max_length=48, description="image id: `val-12`, `train-3` or `upload-<hash>`")]
UploadField = Annotated[UploadFile, File(description="the image (JPEG, PNG, GIF, WebP or BMP)")]
LayerPath = Annotated[str, PathParam(max_length=16, description="conv1 .. conv5")]
TopK = Annotated[int, Query(ge=1, le=50, description="number of labels")]
NeighborK = Annotated[int, Query(ge=1, le=32, description="number of neighbours")]
StencilLayer = Annotated[str, Query(max_length=16, description="conv1 (over the pixels) or conv2 (over conv1's maps)")]
KernelIndex = Annotated[int, Query(ge=0, le=65535, description="the kernel (output channel) of that layer")]
ConvLayer = Annotated[str, Query(max_length=16, description="conv1 .. conv5")]
ChannelIndex = Annotated[int, Query(ge=0, le=65535, description="the channel of that layer")]
UnitLayer = Annotated[str, Query(max_length=16, description="conv1 .. conv5 (a channel) or fc6, fc7, fc8 (a unit; fc8: a class)")]
UnitIndex = Annotated[int, Query(ge=0, le=65535, description="the channel or unit")]
Targets = Annotated[list[int] | None, Query(max_length=5, description="class indices to explain (up to 5; default: the model's answer)")]
Methods = Annotated[list[str] | None, Query(max_length=2, description="`occlusion` and/or `gradcam` (default: both)")]


def _json_error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


class UploadGate:
    """ASGI middleware for POST bodies: a read deadline, a byte cap, bounded memory and
    bounded concurrency, multipart only.

    The body is read here (at most ``max_bytes`` + the multipart envelope) and replayed to
    the app, so an oversized upload is refused with 413 as soon as it crosses the limit,
    whether or not it declared a Content-Length. Reading takes no processing slot: a client
    that trickles its body holds only its own connection, and must finish within
    ``body_seconds`` (and send something every ``idle_seconds``) or get 408. What all
    connections together may hold in memory while receiving is ``max_buffered`` bytes (503
    beyond it); only complete bodies wait for one of the ``max_concurrent`` slots.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        max_concurrent: int = 8,
        body_seconds: float = 20.0,
        idle_seconds: float = 5.0,
        max_buffered: int = 256 * 1024 * 1024,
    ) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.slots = asyncio.Semaphore(max_concurrent)
        self.body_seconds, self.idle_seconds = body_seconds, idle_seconds
        self.max_buffered, self.buffered = max_buffered, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "multipart/form-data":
            await _json_error(415, "send the image as multipart/form-data in a field named 'file'")(scope, receive, send)
            return
        try:
            declared = int(headers.get("content-length", "0") or 0)
        except ValueError:
            declared = 0
        if declared > self.max_bytes:
            await _json_error(413, f"request of {declared} bytes exceeds the upload limit of {self.max_bytes}")(
                scope, receive, send
            )
            return
        held = 0  # bytes of this request counted in self.buffered
        try:
            body, refusal = await self._read_body(receive)
            held = len(body) if body is not None else 0
            if refusal is not None:
                await _json_error(*refusal)(scope, receive, send)
                return
            if body is None:  # the client went away
                return
            sent = False

            async def replay() -> Message:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            async with self.slots:
                await self.app(scope, replay, send)
        finally:
            self.buffered -= held

    def _hold(self, n: int) -> bool:
        """Count ``n`` more bytes as buffered, if all connections together stay within bounds."""
        if self.buffered + n > self.max_buffered:
            return False
        self.buffered += n
        return True

    async def _read_body(self, receive: Receive) -> tuple[bytes | None, tuple[int, str] | None]:
        """(body, None), (None, (status, reason)) to refuse, or (None, None) on disconnect.
        Every byte kept is first counted in ``self.buffered``; on refusal it is given back here."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_seconds
        chunks: list[bytes] = []
        size = 0

        def refuse(status: int, reason: str) -> tuple[None, tuple[int, str]]:
            self.buffered -= size
            return None, (status, reason)

        while True:
            wait = min(self.idle_seconds, deadline - loop.time())
            try:
                if wait <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(receive(), wait)
            except TimeoutError:
                return refuse(408, f"upload too slow: the body must arrive within {self.body_seconds:g} s, "
                                   f"with no pause over {self.idle_seconds:g} s")
            if message["type"] == "http.disconnect":
                self.buffered -= size
                return None, None
            chunk = message.get("body", b"")
            if size + len(chunk) > self.max_bytes:
                return refuse(413, f"upload exceeds the limit of {self.max_bytes} bytes")
            if not self._hold(len(chunk)):
                return refuse(503, "the server is receiving too many uploads; try again shortly")
            size += len(chunk)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None


def create_app(
    checkpoint: str | Path | None,
    data: str | Path | None = None,
    *,
    engine: Engine | None = None,
    build_index: bool = True,
    build_atlas: bool | None = None,
    max_concurrent_uploads: int = 8,
    upload_seconds: float = 20.0,
    max_threads: int = 16,
    **engine_options: Any,
) -> FastAPI:
    """The explorer app for ``checkpoint`` (any file :func:`alexnet.checkpoint.load_model` reads).

    ``data``: the dataset folder (``train/`` and/or ``val/``); the gallery comes from its
    validation split and the fc7 neighbours from its training split. ``engine_options`` go to
    :class:`Engine` (gallery_size, index_size, top_channels, max_upload_bytes, cache_root, ...).
    ``build_atlas`` (default: as ``build_index``) loads or builds the unit atlas and probes in
    the background; until it is ready the evidence endpoints answer 503 and the page waits.
    """
    if build_atlas is None:
        build_atlas = build_index
    if engine is None:
        if checkpoint is None:
            raise ValueError("create_app needs a checkpoint or an engine")
        engine = Engine.from_checkpoint(checkpoint, data, **engine_options)
    eng = engine

    async def lifespan(app: FastAPI):
        # Model work is bounded inside the engine (max_batch analyses, two decodes), so more
        # worker threads than that only add per-thread malloc arenas, i.e. resident memory.
        anyio.to_thread.current_default_thread_limiter().total_tokens = max_threads
        if build_index:
            eng.start_index()
        if build_atlas:
            eng.start_atlas()
        yield

    app = FastAPI(
        title="AlexNet explorer",
        summary=f"The deep learning revolution, computed live by the loaded network: {eng.meta.describe()}.",
        description="Images are addressed by id (`val-12`, `train-3`, or `upload-<hash>` for a recent "
        "upload). Uploads go as multipart/form-data in a field named `file`; errors are JSON "
        "`{\"detail\": ...}` with a 4xx status.",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.engine = eng
    app.add_middleware(
        UploadGate,
        max_bytes=eng.max_upload_bytes + 64 * 1024,
        max_concurrent=max_concurrent_uploads,
        body_seconds=upload_seconds,
        idle_seconds=min(5.0, upload_seconds),
    )

    @app.exception_handler(ExplorerError)
    async def explorer_error(request: Request, exc: ExplorerError) -> JSONResponse:
        return _json_error(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return _json_error(422, errors or "invalid request")

    # ---------------------------------------------------------------- page

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(api_page(app.openapi()), headers=PAGE_HEADERS)

    # ---------------------------------------------------------------- helpers

    async def by_id(image_id: str) -> Analysis:
        return await run_in_threadpool(eng.analyse_id, image_id)

    async def by_upload(file: UploadFile) -> Analysis:
        data = await file.read(eng.max_upload_bytes + 1)
        if len(data) > eng.max_upload_bytes:
            raise ExplorerError(413, f"upload exceeds the limit of {eng.max_upload_bytes} bytes")
        return await run_in_threadpool(eng.analyse_upload, data, file.content_type, file.filename)

    def analysis_payload(a: Analysis) -> dict[str, Any]:
        return {
            "id": a.id,
            "name": a.name,
            "input": a.crop,
            "layers": [
                {
                    **{k: v for k, v in a.layers[name].items() if k != "channels"},
                    "strongest": a.layers[name]["channels"][:3],
                }
                for name in CONV_LAYERS
            ],
            "predictions": eng.predictions(a),
        }

    # ---------------------------------------------------------------- API

    @app.get("/api/info", summary="Model, dataset, limits and the ImageNet timeline")
    async def info() -> dict[str, Any]:
        return eng.info()

    @app.get("/api/gallery", summary="Images of the dataset's validation split to pick from")
    async def gallery() -> dict[str, Any]:
        return {"images": eng.gallery_items()}

    @app.get(
        "/api/images/{image_id}",
        summary="A dataset image by id (JPEG, the stored SxS image)",
        responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "no such image"}},
    )
    async def image(image_id: str) -> Response:
        data = await run_in_threadpool(eng.image_jpeg, image_id)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/analysis", summary="One forward pass: input crop, per-layer overlays, top-5")
    async def analysis(image: ImageQuery) -> dict[str, Any]:
        return analysis_payload(await by_id(image))

    @app.post("/api/analysis", summary="One forward pass over an uploaded image")
    async def analysis_upload(file: UploadField) -> dict[str, Any]:
        return analysis_payload(await by_upload(file))

    @app.get("/api/predict", summary="Top-k labels with probabilities for a dataset image")
    async def predict(image: ImageQuery, k: TopK = 5) -> dict[str, Any]:
        return eng.predictions(await by_id(image), k)

    @app.post("/api/predict", summary="Top-k labels with probabilities for an uploaded image")
    async def predict_upload(file: UploadField, k: TopK = 5) -> dict[str, Any]:
        return eng.predictions(await by_upload(file), k)

    @app.get("/api/activations/{layer}", summary="A layer's strongest channels as heat-map PNGs (base64)")
    async def activations(layer: LayerPath, image: ImageQuery) -> dict[str, Any]:
        if layer not in CONV_LAYERS:
            raise ExplorerError(404, f"unknown layer {layer!r}; choose from {list(CONV_LAYERS)}")
        return eng.layer(await by_id(image), layer)

    @app.post("/api/activations/{layer}", summary="A layer's strongest channels for an uploaded image")
    async def activations_upload(layer: LayerPath, file: UploadField) -> dict[str, Any]:
        if layer not in CONV_LAYERS:
            raise ExplorerError(404, f"unknown layer {layer!r}; choose from {list(CONV_LAYERS)}")
        return eng.layer(await by_upload(file), layer)

    @app.get("/api/neighbors", summary="Nearest training images by fc7 (Euclidean), as in the paper")
    async def neighbors(image: ImageQuery, k: NeighborK = 8) -> dict[str, Any]:
        return eng.neighbors(await by_id(image), k)

    @app.post("/api/neighbors", summary="Nearest training images by fc7 for an uploaded image")
    async def neighbors_upload(file: UploadField, k: NeighborK = 8) -> dict[str, Any]:
        return eng.neighbors(await by_upload(file), k)

    @app.get("/api/anatomy", summary="Every layer's arithmetic: shape, neurons, parameters, connections, receptive field")
    async def anatomy() -> dict[str, Any]:
        return await run_in_threadpool(eng.anatomy)

    @app.get(
        "/api/stencil",
        summary="One conv1/conv2 kernel as a stencil: its weights, the input it slides over, the real output map",
    )
    async def stencil(image: ImageQuery, layer: StencilLayer = "conv1", kernel: KernelIndex = 0) -> dict[str, Any]:
        a = await by_id(image)
        return await run_in_threadpool(eng.stencil, a, layer, kernel)

    @app.post("/api/stencil", summary="The stencil for an uploaded image")
    async def stencil_upload(file: UploadField, layer: StencilLayer = "conv1", kernel: KernelIndex = 0) -> dict[str, Any]:
        a = await by_upload(file)
        return await run_in_threadpool(eng.stencil, a, layer, kernel)

    @app.get("/api/kernels", summary="The conv1 kernels as one image grid (base64 PNG)")
    async def kernels() -> dict[str, Any]:
        return await run_in_threadpool(eng.kernels)

    # ---------------------------------------------------------------- evidence

    ev = eng.evidence

    @app.get("/api/atlas", summary="What each conv layer's units respond to, measured: captions, probes, out-of-class threshold",
             responses={503: {"description": "the atlas is still being built"}})
    async def atlas() -> dict[str, Any]:
        return ev.atlas_summary()

    @app.get("/api/unit", summary="One channel: its enlarged activation map on the image and its top training patches")
    async def unit(image: ImageQuery, layer: ConvLayer, channel: ChannelIndex) -> dict[str, Any]:
        a = await by_id(image)
        return await run_in_threadpool(ev.unit, a, layer, channel)

    @app.post("/api/unit", summary="One channel on an uploaded image")
    async def unit_upload(file: UploadField, layer: ConvLayer, channel: ChannelIndex) -> dict[str, Any]:
        a = await by_upload(file)
        return await run_in_threadpool(ev.unit, a, layer, channel)

    @app.get("/api/knowledge", summary="Per layer, a linear probe's probability of the label: what each depth already knows")
    async def knowledge(image: ImageQuery) -> dict[str, Any]:
        a = await by_id(image)
        return await run_in_threadpool(ev.knowledge, a)

    @app.post("/api/knowledge", summary="Per-layer probe probabilities for an uploaded image")
    async def knowledge_upload(file: UploadField) -> dict[str, Any]:
        a = await by_upload(file)
        return await run_in_threadpool(ev.knowledge, a)

    def methods_of(method: list[str] | None) -> tuple[str, ...]:
        return tuple(dict.fromkeys(method)) if method else ("occlusion", "gradcam")

    @app.get("/api/attribution", summary="Occlusion sensitivity and Grad-CAM for any classes of an image (batched, cached)")
    async def attribution(image: ImageQuery, target: Targets = None, method: Methods = None) -> dict[str, Any]:
        a = await by_id(image)
        return await run_in_threadpool(ev.attribution, a, target, methods_of(method))

    @app.post("/api/attribution", summary="Occlusion and Grad-CAM for an uploaded image")
    async def attribution_upload(file: UploadField, target: Targets = None, method: Methods = None) -> dict[str, Any]:
        a = await by_upload(file)
        return await run_in_threadpool(ev.attribution, a, target, methods_of(method))

    @app.get("/api/featvis", summary="Feature visualisation: the input a unit responds to most, by optimisation (cached)")
    async def featvis(layer: UnitLayer, unit: UnitIndex) -> dict[str, Any]:
        return await run_in_threadpool(ev.featvis, layer, unit)

    return app


_CODE_SPAN = re.compile(r"`([^`]+)`")


def api_page(spec: dict[str, Any]) -> str:
    """The OpenAPI description as a plain HTML page: each endpoint with its parameters,
    request body and responses. Server-rendered, no script, nothing fetched from elsewhere.
    Descriptions are written with markdown's `code` spans; they are shown as code, not backticks."""

    def esc(text: str) -> str:
        return _CODE_SPAN.sub(r"<code>\1</code>", html.escape(text))

    info = spec.get("info", {})
    parts = [
        "<!doctype html><html lang=en><meta charset=utf-8>",
        f"<title>{esc(info.get('title', 'API'))}: API</title>",
        "<link rel=stylesheet href=/static/api.css>",
        f"<h1>{esc(info.get('title', 'API'))}</h1><p>{esc(info.get('summary', ''))}</p>",
        f"<p>{esc(info.get('description', ''))}</p><p>Machine-readable: <a href=/openapi.json>/openapi.json</a></p>",
    ]
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            parts.append(f"<div class=ep><span class=m>{esc(method.upper())}</span> <span class=path>{esc(path)}</span>")
            parts.append(f"<div>{esc(op.get('summary', ''))}</div>")
            params = op.get("parameters", [])
            if params:
                rows = "".join(
                    f"<tr><td><code>{esc(p['name'])}</code></td><td>{esc(p.get('in', ''))}</td>"
                    f"<td>{'required' if p.get('required') else 'optional'}</td>"
                    f"<td>{esc(p.get('description', '') or p.get('schema', {}).get('description', ''))}</td></tr>"
                    for p in params
                )
                parts.append(f"<table>{rows}</table>")
            body = op.get("requestBody", {}).get("content", {})
            if body:
                parts.append(f"<div>body: {esc(', '.join(body))}</div>")
            codes = ", ".join(f"{esc(c)} {esc(r.get('description', ''))}" for c, r in op.get("responses", {}).items())
            parts.append(f"<div>responses: {codes}</div></div>")
    return "".join(parts)


def serve(
    checkpoint: str | Path,
    data: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    **options: Any,
) -> None:
    """Load the checkpoint, then serve the explorer until interrupted."""
    import uvicorn

    if data is None:
        data = run_data(checkpoint)
    app = create_app(checkpoint, data, **options)
    eng: Engine = app.state.engine
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    log.info(
        "explorer: %s (%d classes), data: %s, gallery: %d images",
        eng.meta.model, eng.meta.num_classes, eng.data or "none (upload images)", len(eng.gallery),
    )
    log.info("open http://%s:%d/  (API docs: http://%s:%d/docs)", shown, port, shown, port)
    # Connections beyond this many get 503 from uvicorn itself, before any request is read.
    uvicorn.run(app, host=host, port=port, log_level=log_level, limit_concurrency=256, timeout_keep_alive=5)
