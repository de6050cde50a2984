"""The sketch-search web app: one static page and a small JSON API over a :class:`Retriever`.

Routes::

    GET  /                 the drawing page (static/index.html)
    GET  /static/{name}    app.js, style.css (an explicit allow-list, never a path lookup)
    GET  /api/health       status, photo count, model, backend, limits
    POST /api/search       body: a PNG/JPEG sketch (image/png, image/jpeg) or stroke JSON
                           (application/json: {"strokes": [[[x...], [y...]], ...]} or a bare list);
                           query: k (1..max_k), crop (bool). Returns ranked results with thumb URLs.
    GET  /thumb/{id}       a JPEG thumbnail (<= 256 px) of indexed photo ``id``

Safety: a photo is only ever named by its integer id, resolved through the index and checked to
lie inside the photo root (symlinks resolved); request bodies are capped (checked on the header
and while streaming); images are refused above ``max_pixels`` before they are decoded; every bad
request gets a 4xx with ``{"detail": "<message>"}`` and the server keeps serving.
"""

from __future__ import annotations

import io
import json
import threading
import time
import warnings
from collections import OrderedDict
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tvt.errors import InputError, TvtError
from tvt.search.retriever import Retriever, load_query_image

MAX_BODY_BYTES = 5 * 1024 * 1024
MAX_PIXELS = 16_000_000  # e.g. 4000 x 4000; a canvas drawing is well below
MAX_SIDE = 10_000
MAX_K = 100
MAX_POINTS = 100_000
THUMB_SIZE = 256
IMAGE_TYPES = {"image/png": ("PNG",), "image/jpeg": ("JPEG", "MPO")}  # MPO: multi-picture JPEG from cameras
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                               "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


def _static_text(name: str) -> str:
    return resources.files("tvt.serve").joinpath("static", name).read_text(encoding="utf-8")


def decode_image(data: bytes, content_type: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """PNG/JPEG bytes -> RGB image; 400 if undecodable or not of the declared type, 413 if too large.

    The size is read from the header before any pixel is decoded (decompression bombs).
    """
    try:
        with warnings.catch_warnings():  # the size is checked below, against our own, lower limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise HTTPException(413, f"image is far too large ({exc}); the limit is {max_pixels} pixels") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise HTTPException(400, f"the body is not a readable image ({type(exc).__name__}); "
                                 "send a PNG or JPEG") from exc
    if img.format not in IMAGE_TYPES[content_type]:
        raise HTTPException(400, f"the body is {img.format or 'unknown'} data but the content type says {content_type}")
    w, h = img.size
    if w * h > max_pixels or max(w, h) > MAX_SIDE:
        raise HTTPException(413, f"image is {w}x{h} pixels; the limit is {max_pixels} pixels and {MAX_SIDE} px a side")
    try:
        img.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise HTTPException(400, f"the image is truncated or corrupt ({exc}); send a complete PNG or JPEG") from exc
    try:
        return load_query_image(img)
    except TvtError as exc:
        raise HTTPException(400, str(exc)) from exc


def parse_strokes(data: bytes) -> list:
    """Stroke JSON -> one drawing (list of ``[xs, ys]``); 400 with the reason when malformed."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(400, f"the body is not valid JSON ({exc})") from exc
    if isinstance(obj, dict):
        obj = obj.get("strokes", obj.get("drawing"))
    if not isinstance(obj, list) or not obj:
        raise HTTPException(400, 'stroke JSON must be {"strokes": [[[x0, x1, ...], [y0, y1, ...]], ...]} '
                                 'with at least one stroke')
    points = sum(len(s[0]) for s in obj if isinstance(s, list) and s and isinstance(s[0], list))
    if points > MAX_POINTS:
        raise HTTPException(413, f"the drawing has {points} points; the limit is {MAX_POINTS}")
    return obj


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(400, "invalid Content-Length header")
        if int(declared) > limit:
            raise HTTPException(413, f"request body is {declared} bytes; the limit is {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class Thumbnails:
    """JPEG thumbnails by photo id, with a small LRU cache keyed by (id, mtime)."""

    def __init__(self, retriever: Retriever, size: int = THUMB_SIZE, cache: int = 512) -> None:
        self.index, self.size, self.cache_size = retriever.index, size, cache
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, photo_id: str) -> bytes:
        if not (photo_id.isascii() and photo_id.isdigit()) or int(photo_id) >= len(self.index):
            raise HTTPException(404, f"no photo with id {photo_id[:40]!r}: ids are integers 0..{len(self.index) - 1}")
        try:
            path = self.index.safe_path(int(photo_id))
            key = (int(photo_id), path.stat().st_mtime_ns)
        except InputError as exc:
            raise HTTPException(404, str(exc).replace(str(self.index.photo_root), "<photo root>")) from exc
        except OSError as exc:  # removed between the check and the stat
            raise HTTPException(404, f"photo {photo_id} can no longer be read") from exc
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        data = self._render(path)
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return data

    def _render(self, path: Any) -> bytes:
        from tvt.data.folder import DEFAULT_MAX_PIXELS, to_rgb

        try:
            with Image.open(path) as im:
                if im.width * im.height > DEFAULT_MAX_PIXELS:
                    raise ValueError("too many pixels")
                im.draft("RGB", (self.size, self.size))  # JPEG: decode at 1/2..1/8 scale, much faster
                im.load()
                img = to_rgb(im, "white")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise HTTPException(404, f"photo {path.name} cannot be read ({type(exc).__name__})") from exc
        img.thumbnail((self.size, self.size), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        return buf.getvalue()


def create_app(retriever: Retriever, *, max_body: int = MAX_BODY_BYTES, max_pixels: int = MAX_PIXELS,
               max_k: int = MAX_K) -> FastAPI:
    """The FastAPI app serving ``retriever`` (no docs UI: it would load scripts from a CDN)."""
    app = FastAPI(title="tvt sketch search", docs_url=None, redoc_url=None, openapi_url=None)
    thumbs = Thumbnails(retriever)
    model = retriever.index.model

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        msgs = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(msgs)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=SECURITY_HEADERS)

    @app.middleware("http")
    async def _headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        return HTMLResponse(_static_text("index.html"))

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, f"no static file {name[:40]!r}")
        return Response(_static_text(name), media_type=STATIC[name])

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "photos": len(retriever), "skipped": len(retriever.index.skipped),
                "model": {"kind": model.kind, "dim": model.dim, "img_size": model.img_size,
                          "return_idx": model.return_idx, "checkpoint_sha256": model.sha256},
                "backend": {"name": retriever.backend.name, **retriever.backend.params},
                "limits": {"max_body_bytes": max_body, "max_pixels": max_pixels, "max_k": max_k,
                           "content_types": [*IMAGE_TYPES, "application/json"]}}

    @app.post("/api/search")
    async def search(request: Request, k: int = Query(24, ge=1, le=max_k), crop: bool = Query(False)) -> dict[str, Any]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in IMAGE_TYPES and ctype != "application/json":
            raise HTTPException(415, f"unsupported content type {ctype or '(none)'!r}; send image/png, image/jpeg "
                                     "or application/json (strokes)")
        body = await read_body(request, max_body)
        if not body:
            raise HTTPException(400, "empty request body; send a sketch image or strokes")
        return await run_in_threadpool(_search, retriever, body, ctype, k, crop, max_pixels)

    @app.get("/thumb/{photo_id}")
    def thumb(photo_id: str) -> Response:
        return Response(thumbs.get(photo_id), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=300"})

    return app


def _search(retriever: Retriever, body: bytes, ctype: str, k: int, crop: bool, max_pixels: int) -> dict[str, Any]:
    """Decode, embed, search (runs in a worker thread)."""
    t0 = time.perf_counter()
    query: Any = parse_strokes(body) if ctype == "application/json" else decode_image(body, ctype, max_pixels)
    try:
        results = retriever.search(query, k, crop=crop)
    except TvtError as exc:
        raise HTTPException(400, str(exc)) from exc
    return {"took_ms": round(1000 * (time.perf_counter() - t0), 1), "k": k,
            "results": [{"rank": r.rank, "id": r.id, "relpath": r.relpath, "score": round(r.score, 5),
                         "thumb": f"/thumb/{r.id}"} for r in results]}
