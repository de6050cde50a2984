"""The web server against a hostile client: every bad request a 4xx with a message, bounded memory and
work per request, only the hosts it was started for, and the same security headers on every answer."""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi import HTTPException  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from tvt.cli import main  # noqa: E402
from tvt.search.retriever import Retriever  # noqa: E402
from tvt.serve import app as app_module  # noqa: E402
from tvt.serve.app import SECURITY_HEADERS, WORK_SIDE, create_app, decode_image  # noqa: E402

LOCAL = "http://127.0.0.1"


def _png(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _lines16(side: int) -> Image.Image:
    """16-bit greyscale, white with a grid of black lines: a few kB as PNG, 2 bytes a pixel decoded."""
    arr = np.full((side, side), 65535, np.uint16)
    for k in range(1, 8):
        arr[k * side // 8, :] = 0
        arr[:, k * side // 8] = 0
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def retriever(good_index) -> Retriever:
    return Retriever.from_index(good_index[1], quiet=True)


@pytest.fixture(scope="module")
def client(retriever) -> TestClient:
    return TestClient(create_app(retriever), base_url=LOCAL)


def _search(client: TestClient, body: bytes | str, ctype: str = "application/json", query: str = "k=2"):
    return client.post(f"/api/search?{query}", content=body, headers={"Content-Type": ctype})


def _assert_4xx(r, *words: str) -> None:
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail
    for w in words:
        assert w in detail, (w, detail)
    for k, v in SECURITY_HEADERS.items():
        assert r.headers.get(k) == v


# ----------------------------------------------------------------------------- 1. memory per request


def test_large_uploads_are_decoded_to_the_work_size(tmp_path):
    big16 = _lines16(4000)
    img = decode_image(_png(big16), "image/png")
    assert img.mode == "RGB" and max(img.size) == WORK_SIDE
    # the same picture stored as 8 bit decodes to the same pixels: 16-bit values are scaled, not clipped
    big8 = Image.fromarray((np.asarray(big16, np.float64) / 257).round().astype(np.uint8))
    diff = np.abs(np.asarray(img, np.int16) - np.asarray(decode_image(_png(big8), "image/png"), np.int16))
    assert diff.max() <= 2
    # a thin line survives the shrinking (area average, not nearest neighbour), also for 1-bit and palette PNGs
    for mode in ("1", "P"):
        small = decode_image(_png(_lines16(4000).convert("F").point(lambda v: v / 257).convert("L").convert(mode)),
                             "image/png")
        assert np.asarray(small.convert("L")).min() < 200, mode
    jpeg = decode_image(_png(Image.new("RGB", (4000, 3000), "white"), "JPEG"), "image/jpeg")
    assert max(jpeg.size) <= WORK_SIDE and jpeg.size[0] > jpeg.size[1]


def test_concurrent_decodes_are_limited(retriever, monkeypatch):
    active, peak, lock = [0], [0], threading.Lock()
    real = app_module.shrink

    def slow_shrink(img, side=WORK_SIDE):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)  # widen the window in which decodes overlap
        with lock:
            active[0] -= 1
        return real(img, side)

    monkeypatch.setattr(app_module, "shrink", slow_shrink)
    body = _png(_lines16(1500))
    answers: list[dict] = []
    threads = [threading.Thread(target=lambda: answers.append(app_module._search(
        retriever, body, "image/png", 2, True, app_module.UPLOAD_MAX_PIXELS))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 6 and all(len(a["results"]) == 2 for a in answers)
    assert 1 <= peak[0] <= app_module.MAX_DECODES


# ----------------------------------------------------------------------------- 2. Host header


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8000", "127.0.0.1.attacker.example",
                                  "localhost.attacker.example", "", "[::2]:8000", "0.0.0.0:8000"])
@pytest.mark.parametrize("url", ["/", "/api/health", "/thumb/0", "/static/app.js"])
def test_foreign_host_header_refused(client, host, url):
    r = client.get(url, headers={"Host": host})
    _assert_4xx(r, "not served here", "--allowed-host")
    assert r.status_code == 400 and "photos" not in r.text
    r = client.post("/api/search", content=b"[[[0, 1], [0, 1]]]",
                    headers={"Host": host, "Content-Type": "application/json"})
    assert r.status_code == 400 and "results" not in r.text


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000"])
def test_local_host_headers_accepted(client, host):
    assert client.get("/api/health", headers={"Host": host}).status_code == 200


def test_allowed_hosts_for_a_reverse_proxy(retriever):
    app = create_app(retriever, allowed_hosts=["photos.example.org"])
    c = TestClient(app, base_url="http://photos.example.org")
    assert c.get("/api/health").status_code == 200
    assert c.get("/api/health", headers={"Host": "photos.example.org:443"}).status_code == 200
    assert c.get("/api/health", headers={"Host": "other.example.org"}).status_code == 400
    anyhost = TestClient(create_app(retriever, allowed_hosts=["*"]), base_url="http://whatever.example")
    assert anyhost.get("/api/health").status_code == 200


# ----------------------------------------------------------------------------- 3. no 500s


def _deep(n: int) -> str:
    return "[" * n + "]" * n


BAD_JSON = {
    "nested_100k": (_deep(100_000), "nests"),
    "nested_in_strokes": ('{"strokes": ' + _deep(50) + "}", "nests"),
    "nested_dict": ('{"strokes": ' + '{"a": ' * 3000 + "1" + "}" * 3000 + "}", "nests"),
    "plus_1e308": ('{"strokes": [[[0, 1e308], [0, 1]]]}', "1e+09"),
    "minus_1e308": ('{"strokes": [[[-1e308, 1e308], [0, -1e308]]]}', "1e+09"),
    "overflow_inf": ('{"strokes": [[[0, 1e999], [0, 1]]]}', "not finite"),
    "nan_literal": ('{"strokes": [[[0, NaN], [0, 1]]]}', ""),
    "huge_int": ('{"strokes": [[[0, ' + "9" * 4000 + '], [0, 1]]]}', ""),
    "bool_coords": ('{"strokes": [[[true, false], [0, 1]]]}', ""),
    "null_stroke": ('{"strokes": [null]}', ""),
    "string_body": ('"strokes"', "at least one stroke"),
    "latin1": ('{"strokes": "caf\u00e9"}'.encode("latin-1"), "not valid JSON"),
}


@pytest.mark.parametrize("name", list(BAD_JSON))
def test_bad_json_bodies_are_4xx(client, name):
    body, word = BAD_JSON[name]
    _assert_4xx(_search(client, body), word)
    assert _search(client, "[[[0, 5, 9], [0, 9, 2]]]").status_code == 200  # and it keeps serving


@pytest.mark.parametrize("photo_id", ["9" * 5000, "9" * 30, str(2**63), "-0", "+1", "1_000", " 1", "1.0", "٣"])
def test_bad_thumbnail_ids_are_404(client, photo_id):
    r = client.get(f"/thumb/{photo_id}")
    assert r.status_code == 404, r.text
    _assert_4xx(r)
    assert len(r.text) < 1000


def test_unexpected_failure_is_500_with_security_headers(retriever, monkeypatch):
    c = TestClient(create_app(retriever), base_url=LOCAL, raise_server_exceptions=False)

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(retriever, "search", boom)
    r = _search(c, "[[[0, 5], [0, 9]]]")
    assert r.status_code == 500 and "RuntimeError" in r.json()["detail"] and "disk on fire" not in r.text
    for k, v in SECURITY_HEADERS.items():
        assert r.headers.get(k) == v
    monkeypatch.undo()
    assert _search(c, "[[[0, 5], [0, 9]]]").status_code == 200


NON_UTF8_NAMES = [b"caf\xe9.png", b"\xff\xfe.png", b"ok\xc3(.png", b"sub\xe9dir/x.png",
                  b"esc\x1b[31mred.png", b"new\nline.png"]  # valid UTF-8, but would steer a terminal


@pytest.mark.skipif(os.name == "nt", reason="POSIX file names are bytes")
def test_non_utf8_file_names_served_and_shown_safely(tmp_path, tiny_ckpt, capsys, bad):
    photos = tmp_path / "photos"
    bad.write_good(photos / "plain.png", seed=1, size=32)
    for i, raw in enumerate(NON_UTF8_NAMES):
        path = Path(os.fsdecode(os.fsencode(str(photos)) + b"/" + raw))
        bad.write_good(path, seed=2 + i, size=32)
    idx = tmp_path / "idx"
    assert main(["index", str(photos), "--checkpoint", str(tiny_ckpt), "--out", str(idx), "--no-progress",
                 "--device", "cpu"]) == 0
    n = len(NON_UTF8_NAMES) + 1
    c = TestClient(create_app(Retriever.from_index(idx, quiet=True)), base_url=LOCAL)
    r = _search(c, "[[[0, 5, 9], [0, 9, 2]]]", query="k=50")  # k above the photo count: every photo returned
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == n
    shown = {x["relpath"] for x in results}
    assert {"caf\\xe9.png", "\\xff\\xfe.png", "ok\\xc3(.png", "sub\\xe9dir/x.png", "esc\\x1b[31mred.png",
            "new\\nline.png", "plain.png"} == shown
    for x in results:
        t = c.get(x["thumb"])
        assert t.status_code == 200 and Image.open(io.BytesIO(t.content)).size == (32, 32)
    # the CLI prints them too, as text and as JSON, without an encoding error
    sketch = tmp_path / "q.png"
    Image.new("RGB", (32, 32), "white").save(sketch)
    capsys.readouterr()
    assert main(["search", str(sketch), "--index", str(idx), "-k", "9", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "caf\\xe9.png" in out and "\x1b" not in out and len(out.splitlines()) == n
    assert main(["search", str(sketch), "--index", str(idx), "-k", "9", "--device", "cpu", "--json"]) == 0
    assert {h["relpath"] for h in json.loads(capsys.readouterr().out)["results"]} == shown


# ----------------------------------------------------------------------------- 4. expensive drawings


def _criss_cross(points: int) -> list:
    """Every segment spans the whole canvas diagonally: the worst case for a bounding-box rasteriser."""
    xs = [0 if i % 2 else 1000 for i in range(points)]
    ys = [(i // 2) % 2 * 1000 for i in range(points)]
    return [[xs, ys]]


def _scribble(points: int) -> list:
    """A dense random walk: many short segments, each cheap, together expensive."""
    return [np.cumsum(np.random.default_rng(0).normal(size=(2, points)), axis=1).round(2).tolist()]


EXPENSIVE = {"criss_cross_90k": lambda: _criss_cross(90_000),  # too many segments and too much area
             "criss_cross_5k": lambda: _criss_cross(5_000),  # few segments, far too much area
             "scribble_100k": lambda: _scribble(100_000)}  # small area, too many segments


@pytest.mark.parametrize("case", list(EXPENSIVE))
def test_expensive_drawing_refused_before_rasterising(client, monkeypatch, case):
    from tvt.data import strokes

    calls = [0]
    real = strokes._ink_segment
    monkeypatch.setattr(strokes, "_ink_segment", lambda *a: (calls.__setitem__(0, calls[0] + 1), real(*a)))
    r = _search(client, json.dumps({"strokes": EXPENSIVE[case]()}))
    _assert_4xx(r, "too complex")
    assert r.status_code == 413 and calls[0] == 0


@pytest.mark.parametrize("seed", range(4))
def test_rasterising_work_stays_within_the_budget(seed, monkeypatch):
    """The pixels actually visited by the rasteriser never exceed the budget the check allows."""
    from tvt.data import strokes
    from tvt.search.retriever import RENDER_WORK_PER_PIXEL, render_drawing

    touched = [0]
    real = strokes._ink_segment

    def counting(ink, p, q, radius, antialias):
        reach = radius + 1.0
        touched[0] += int((abs(q[0] - p[0]) + 2 * reach + 1) * (abs(q[1] - p[1]) + 2 * reach + 1))
        return real(ink, p, q, radius, antialias)

    monkeypatch.setattr(strokes, "_ink_segment", counting)
    rng = np.random.default_rng(seed)
    n = int(rng.integers(100, 20_000))
    walk = np.cumsum(rng.normal(size=(2, n)), axis=1).tolist()  # a dense scribble: many sub-pixel steps
    budget = RENDER_WORK_PER_PIXEL * 256 * 256
    try:
        img = render_drawing([walk])
    except strokes.DrawingTooComplex:
        assert touched[0] == 0
        return
    assert touched[0] <= budget and np.asarray(img).min() == 0


def test_simplification_keeps_a_sparse_drawing_pixel_identical():
    from tvt.data.strokes import render_strokes
    from tvt.search.retriever import render_drawing

    drawing = [[[0, 40, 80, 120], [0, 60, 0, 60]], [[10, 70], [30, 30]]]  # points far apart: nothing dropped
    assert np.array_equal(np.asarray(render_drawing(drawing)), np.asarray(render_strokes(drawing, line_width=4)))


# ----------------------------------------------------------------------------- 5. slow clients


class _SlowRequest:
    """Sends one chunk, then stalls (a client that stops mid-body)."""

    headers: dict[str, str] = {}

    async def stream(self):
        yield b"abc"
        await asyncio.sleep(60)
        yield b"never"


def test_slow_body_times_out():
    with pytest.raises(HTTPException) as info:
        asyncio.run(app_module.read_body(_SlowRequest(), 1000, timeout=0.2))
    assert info.value.status_code == 408 and "did not arrive" in info.value.detail


def test_serve_sets_connection_timeouts(good_index, monkeypatch, capsys):
    uvicorn = pytest.importorskip("uvicorn")
    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    assert main(["serve", "--index", str(good_index[1]), "--port", "0", "--device", "cpu"]) == 2
    assert "--port 0" in capsys.readouterr().err  # not a port
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["serve", "--index", str(good_index[1]), "--port", str(port), "--device", "cpu"]) == 0
    assert 0 < seen["timeout_keep_alive"] <= 30 and seen["limit_concurrency"] >= 8
    assert seen["h11_max_incomplete_event_size"] <= 64 * 1024
    from tvt.serve.protocol import HeadDeadlineProtocol

    assert issubclass(seen["http"], HeadDeadlineProtocol) and 0 < seen["http"].head_timeout <= 60


# ----------------------------------------------------------------------------- 6. one crop default


def test_same_sketch_same_ranking_everywhere(tmp_path, good_index, retriever, client, capsys):
    canvas = Image.new("RGB", (400, 400), "white")  # a small drawing in a corner of a large canvas
    arr = np.asarray(canvas).copy()
    arr[20:90, 30:34] = 0
    arr[50:54, 10:100] = 0
    sketch = Image.fromarray(arr)
    path = tmp_path / "corner.png"
    sketch.save(path)
    python = [(h.id, round(h.score, 4)) for h in retriever.search(str(path), 4)]
    capsys.readouterr()
    assert main(["search", str(path), "--index", str(good_index[1]), "-k", "4", "--json", "--device", "cpu"]) == 0
    cli = [(h["id"], round(h["score"], 4)) for h in json.loads(capsys.readouterr().out)["results"]]
    web = [(h["id"], round(h["score"], 4)) for h in _search(client, path.read_bytes(), "image/png", "k=4").json()["results"]]
    assert python == cli == web
    cropped = [(h.id, round(h.score, 4)) for h in retriever.search(str(path), 4, crop=True)]
    uncropped = [(h.id, round(h.score, 4)) for h in retriever.search(str(path), 4, crop=False)]
    assert python == cropped and uncropped != cropped  # the default is the crop, and the crop matters here


# ----------------------------------------------------------------------------- 7. the API is documented


def test_every_route_and_limit_is_documented(client):
    doc = (Path(__file__).parents[2] / "docs" / "api.md").read_text(encoding="utf-8")
    spec = client.get("/api/openapi.json")
    assert spec.status_code == 200
    for route in spec.json()["paths"]:
        assert route in doc, route
    for key in client.get("/api/health").json()["limits"]:
        assert key in doc, key
    assert "curl " in doc and "--allowed-host" in doc
