"""The sketch-search web app: one static page and a small JSON API over a :class:`Retriever`.

Routes (documented for users in docs/api.md)::

    GET  /                 the drawing page (static/index.html)
    GET  /static/{name}    app.js, style.css (an explicit allow-list, never a path lookup)
    GET  /api/health       status, photo count, model, backend, limits
    POST /api/search       body: a PNG/JPEG sketch (image/png, image/jpeg) or stroke JSON
                           (application/json: {"strokes": [[[x...], [y...]], ...]} or a bare list);
                           query: k (1..max_k), crop (bool, default true). Returns ranked results.
    GET  /thumb/{id}       a JPEG thumbnail (<= 256 px) of indexed photo ``id``

Safety: a photo is only ever named by its integer id, resolved through the index and checked to
lie inside the photo root (symlinks resolved); only requests whose Host header names an allowed
host are answered (DNS rebinding); request bodies are capped (checked on the header and while
streaming, with a deadline for slow senders); images are refused above ``max_pixels`` before they
are decoded, decoded straight to at most ``WORK_SIDE`` px a side, at most ``MAX_DECODES`` at a
time; drawings are simplified and refused above a rasterisation budget; every bad request gets a
4xx with ``{"detail": "<message>"}``, an unexpected failure a 500 with the same headers.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import io
import json
import threading
import time
import warnings
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tvt.data.images import exif_orientation, orient
from tvt.data.strokes import DrawingTooComplex
from tvt.errors import InputError, TvtError
from tvt.search.index import display_name
from tvt.search.retriever import DEFAULT_CROP, Retriever, load_query_image

MAX_BODY_BYTES = 5 * 1024 * 1024
UPLOAD_MAX_PIXELS = 16_000_000  # an uploaded query, e.g. 4000 x 4000; a canvas drawing is well below
MAX_SIDE = 10_000
MAX_K = 100
MAX_POINTS = 100_000
MAX_JSON_DEPTH = 8  # {"strokes": [[[x...], [y...]]]} is 4 deep
MAX_COORD = 1e9  # stroke coordinates beyond this are refused (their extent would overflow)
WORK_SIDE = 1024  # a query image is shrunk to this many px a side right after decoding (model: 224)
MAX_DECODES = 2  # concurrent image decodes / drawing rasterisations; more requests wait their turn
BODY_TIMEOUT_S = 30.0  # a request body must arrive within this time (slow senders)
THUMB_SIZE = 256
ID_PATTERN = r"^[0-9]{1,10}$"  # a photo id: plain ASCII decimal digits, short enough to parse cheaply
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
IMAGE_TYPES = {"image/png": ("PNG",), "image/jpeg": ("JPEG", "MPO")}  # MPO: multi-picture JPEG from cameras
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                               "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
# modes PIL shrinks only by nearest neighbour (thin lines would vanish): converted to 8-bit first
_SHRINK_CONVERT = {"1": "L", "P": "RGBA", "PA": "RGBA"}
_decodes = threading.BoundedSemaphore(MAX_DECODES)


def _static_text(name: str) -> str:
    return resources.files("tvt.serve").joinpath("static", name).read_text(encoding="utf-8")


_malloc_trim: Any = None  # glibc's malloc_trim once looked up; False where there is none (macOS, musl)


def _release_memory() -> None:
    """Hand freed heap pages back to the system after a large decode (glibc keeps them otherwise)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            name = ctypes.util.find_library("c")
            _malloc_trim = getattr(ctypes.CDLL(name), "malloc_trim", False) if name else False
        except OSError:
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


def shrink(img: Image.Image, side: int = WORK_SIDE) -> Image.Image:
    """``img`` scaled down (area average, aspect kept) so that its longer side is at most ``side``."""
    if max(img.size) <= side:
        return img
    if img.mode in _SHRINK_CONVERT:
        img = img.convert(_SHRINK_CONVERT[img.mode])
    scale = side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.BOX)


def decode_image(data: bytes, content_type: str, max_pixels: int = UPLOAD_MAX_PIXELS) -> Image.Image:
    """PNG/JPEG bytes -> RGB image of at most ``WORK_SIDE`` px a side, EXIF orientation applied;
    400 if undecodable or not of the declared type, 413 if too large.

    The size is read from the header before any pixel is decoded (decompression bombs); a JPEG is
    decoded at 1/2..1/8 scale when that still covers ``WORK_SIDE``; the full-size pixels are
    dropped as soon as the image is shrunk, so a request holds at most one full-size copy.
    """
    img = _open(data, content_type, max_pixels)
    orientation = exif_orientation(img)
    try:
        img.draft(None, (WORK_SIDE, WORK_SIDE))  # JPEG only: DCT scaling, a fraction of the memory
        img.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise HTTPException(400, f"the image is truncated or corrupt ({exc}); send a complete PNG or JPEG") from exc
    try:
        return load_query_image(orient(shrink(img), orientation))
    except (TvtError, ValueError) as exc:
        raise HTTPException(400, f"the image cannot be used as a sketch ({exc})") from exc


def _open(data: bytes, content_type: str, max_pixels: int) -> Image.Image:
    """Open (header only) and check format and size."""
    try:
        with warnings.catch_warnings():  # the size is checked below, against our own, lower limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise HTTPException(413, f"image is far too large ({exc}); the limit is {max_pixels} pixels") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise HTTPException(400, f"the body is not a readable image ({type(exc).__name__}); "
                                 "send a PNG or JPEG") from exc
    if img.format not in IMAGE_TYPES[content_type]:
        raise HTTPException(400, f"the body is {img.format or 'unknown'} data but the content type says {content_type}")
    w, h = img.size
    if w * h > max_pixels or max(w, h) > MAX_SIDE:
        raise HTTPException(413, f"image is {w}x{h} pixels; the limit is {max_pixels} pixels and {MAX_SIDE} px a side")
    return img


def _depth_ok(obj: Any, limit: int) -> bool:
    """True when ``obj`` nests lists/dicts at most ``limit`` deep (iterative: no recursion)."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (list, dict)):
            if depth > limit:
                return False
            stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))
    return True


def parse_strokes(data: bytes) -> list:
    """Stroke JSON -> one drawing (list of ``[xs, ys]``); 400 with the reason when malformed."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except RecursionError as exc:  # thousands of nested brackets
        raise HTTPException(400, f"the JSON nests too deeply; a drawing nests {MAX_JSON_DEPTH - 4} levels "
                                 "below its stroke list") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(400, f"the body is not valid JSON ({exc})") from exc
    if not _depth_ok(obj, MAX_JSON_DEPTH):
        raise HTTPException(400, f"the JSON nests deeper than {MAX_JSON_DEPTH} levels; send "
                                 '{"strokes": [[[x0, x1, ...], [y0, y1, ...]], ...]}')
    if isinstance(obj, dict):
        obj = obj.get("strokes", obj.get("drawing"))
    if not isinstance(obj, list) or not obj:
        raise HTTPException(400, 'stroke JSON must be {"strokes": [[[x0, x1, ...], [y0, y1, ...]], ...]} '
                                 'with at least one stroke')
    points = sum(len(s[0]) for s in obj if isinstance(s, list) and s and isinstance(s[0], list))
    if points > MAX_POINTS:
        raise HTTPException(413, f"the drawing has {points} points; the limit is {MAX_POINTS}")
    for k, stroke in enumerate(obj):
        for axis in (stroke[:2] if isinstance(stroke, list) else ()):
            if isinstance(axis, list) and any(isinstance(v, (int, float)) and not abs(v) <= MAX_COORD for v in axis):
                raise HTTPException(400, f"stroke {k} has a coordinate beyond ±{MAX_COORD:g} (or not finite); "
                                         "send pixel-like coordinates")
    return obj


async def read_body(request: Request, limit: int, timeout: float = BODY_TIMEOUT_S) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes without reading it all, and
    (408) a body that has not fully arrived within ``timeout`` seconds."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit() or len(declared) > 18:
            raise HTTPException(400, "invalid Content-Length header")
        if int(declared) > limit:
            raise HTTPException(413, f"request body is {declared} bytes; the limit is {limit} bytes")
    chunks: list[bytes] = []

    async def collect() -> None:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), timeout)
    except asyncio.TimeoutError as exc:
        raise HTTPException(408, f"the request body did not arrive within {timeout:g} s") from exc
    return b"".join(chunks)


def allowed_host_set(bound: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """Host names the server answers to: the bound address (unless a wildcard), this machine's
    loopback names, and ``extra`` (a reverse proxy's public name). ``*`` allows any host."""
    hosts = {h.strip().lower().strip("[]") for h in (*LOCAL_HOSTS, bound, *extra) if h and h.strip()}
    return frozenset(hosts - {"0.0.0.0", "::"})


def _host_name(header: str) -> str:
    """``example.org:8000`` -> ``example.org``; ``[::1]:8000`` -> ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Thumbnails:
    """JPEG thumbnails by photo id, with a small LRU cache keyed by (id, mtime)."""

    def __init__(self, retriever: Retriever, size: int = THUMB_SIZE, cache: int = 512) -> None:
        self.index, self.size, self.cache_size = retriever.index, size, cache
        # per instance; a failed render raises and is not cached
        self._cached = functools.lru_cache(maxsize=cache)(self._decode)

    def get(self, photo_id: int) -> bytes:
        if not 0 <= photo_id < len(self.index):
            raise HTTPException(404, f"no photo with id {photo_id}: ids are integers 0..{len(self.index) - 1}")
        try:
            path = self.index.safe_path(photo_id)
            mtime_ns = path.stat().st_mtime_ns
        except InputError as exc:
            raise HTTPException(404, display_name(str(exc).replace(str(self.index.photo_root), "<photo root>"))) from exc
        except OSError as exc:  # removed between the check and the stat
            raise HTTPException(404, f"photo {photo_id} can no longer be read") from exc
        return self._cached(photo_id, mtime_ns, path)

    def _decode(self, photo_id: int, mtime_ns: int, path: Path) -> bytes:
        with _decodes:
            return self._render(path)

    def _render(self, path: Any) -> bytes:
        from tvt.data.images import DATASET_MAX_PIXELS, to_rgb

        try:
            with Image.open(path) as im:
                if im.width * im.height > DATASET_MAX_PIXELS:
                    raise ValueError("too many pixels")
                orientation = exif_orientation(im)
                im.draft("RGB", (self.size, self.size))  # JPEG: decode at 1/2..1/8 scale, much faster
                im.load()
                img = orient(to_rgb(shrink(im, 2 * self.size), "white"), orientation)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise HTTPException(404, f"photo {display_name(path.name)} cannot be read ({type(exc).__name__})") from exc
        img.thumbnail((self.size, self.size), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        return buf.getvalue()


def create_app(retriever: Retriever, *, max_body: int = MAX_BODY_BYTES, max_pixels: int = UPLOAD_MAX_PIXELS,
               max_k: int = MAX_K, allowed_hosts: Iterable[str] | None = None,
               body_timeout: float = BODY_TIMEOUT_S) -> FastAPI:
    """The FastAPI app serving ``retriever``.

    ``allowed_hosts``: the Host header values answered (default: loopback names only; ``"*"``
    answers any). The OpenAPI description is served at /api/openapi.json (no docs UI: it would
    load scripts from a CDN).
    """
    app = FastAPI(title="tvt sketch search", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    thumbs = Thumbnails(retriever)
    model = retriever.index.model
    hosts = allowed_host_set("127.0.0.1", allowed_hosts or ())
    _add_handlers(app, hosts)

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
                "limits": {"max_body_bytes": max_body, "max_pixels": max_pixels, "max_side": MAX_SIDE,
                           "max_k": max_k, "max_points": MAX_POINTS, "max_coordinate": MAX_COORD,
                           "work_side": WORK_SIDE, "concurrent_decodes": MAX_DECODES,
                           "body_timeout_s": body_timeout, "content_types": [*IMAGE_TYPES, "application/json"]},
                "crop_default": DEFAULT_CROP}

    @app.post("/api/search")
    async def search(request: Request, k: int = Query(24, ge=1, le=max_k),
                     crop: bool = Query(DEFAULT_CROP)) -> dict[str, Any]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in IMAGE_TYPES and ctype != "application/json":
            raise HTTPException(415, f"unsupported content type {ctype[:60] or '(none)'!r}; send image/png, "
                                     "image/jpeg or application/json (strokes)")
        body = await read_body(request, max_body, body_timeout)
        if not body:
            raise HTTPException(400, "empty request body; send a sketch image or strokes")
        return await run_in_threadpool(_search, retriever, body, ctype, k, crop, max_pixels)

    @app.get("/thumb/{photo_id}")
    def thumb(photo_id: str = PathParam(pattern=ID_PATTERN)) -> Response:
        return Response(thumbs.get(int(photo_id)), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=300"})

    return app


def _add_handlers(app: FastAPI, hosts: frozenset[str]) -> None:
    """Error handlers (every answer JSON, security headers on all of them) and the Host check."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        msgs = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}" for e in exc.errors()]
        # a path parameter that is not a valid id is a missing resource, not a malformed request
        status = 404 if any(e.get("loc", ("",))[0] == "path" for e in exc.errors()) else 422
        return JSONResponse({"detail": "; ".join(msgs)[:500]}, status_code=status, headers=SECURITY_HEADERS)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=SECURITY_HEADERS)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); the server keeps serving"},
                            status_code=500, headers=SECURITY_HEADERS)

    @app.middleware("http")
    async def _headers(request: Request, call_next: Any) -> Response:
        if "*" not in hosts and _host_name(request.headers.get("host", "")) not in hosts:
            return JSONResponse({"detail": f"host {request.headers.get('host', '')[:80]!r} is not served here; "
                                           "start `tvt serve` with --allowed-host NAME to allow it"},
                                status_code=400, headers=SECURITY_HEADERS)
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response


def _search(retriever: Retriever, body: bytes, ctype: str, k: int, crop: bool, max_pixels: int) -> dict[str, Any]:
    """Decode, embed, search (runs in a worker thread; at most MAX_DECODES decode at once)."""
    t0 = time.perf_counter()
    try:
        with _decodes:
            query: Any = (_render(parse_strokes(body)) if ctype == "application/json"
                          else decode_image(body, ctype, max_pixels))
    finally:
        if ctype != "application/json":
            _release_memory()
    try:
        results = retriever.search(query, k, crop=crop)
    except TvtError as exc:
        raise HTTPException(400, str(exc)) from exc
    return {"took_ms": round(1000 * (time.perf_counter() - t0), 1), "k": k, "crop": crop,
            "results": [{"rank": r.rank, "id": r.id, "relpath": display_name(r.relpath), "score": round(r.score, 5),
                         "thumb": f"/thumb/{r.id}"} for r in results]}


def _render(drawing: list) -> Image.Image:
    """A parsed drawing rasterised (simplified, within the work budget); 400/413 with the reason."""
    from tvt.search.retriever import render_drawing

    try:
        return render_drawing(drawing)
    except DrawingTooComplex as exc:
        raise HTTPException(413, str(exc)) from exc
    except InputError as exc:
        raise HTTPException(400, str(exc)) from exc
