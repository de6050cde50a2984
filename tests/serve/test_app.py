"""The JSON API: good requests, a 4xx with a clear message for every bad one, no path escapes."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from tvt.search.retriever import Retriever  # noqa: E402
from tvt.serve.app import create_app  # noqa: E402

LOCAL = "http://127.0.0.1"  # the default allowed hosts are the loopback names


def _png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def retriever(index_dir) -> Retriever:
    return Retriever.from_index(index_dir, quiet=True)


@pytest.fixture(scope="module")
def client(retriever) -> TestClient:
    return TestClient(create_app(retriever, max_body=200_000, max_pixels=4_000_000), base_url=LOCAL)


@pytest.fixture(scope="module")
def sketch(synth_dir) -> Image.Image:
    return Image.open(next((synth_dir / "sketch").rglob("*.png"))).convert("RGB")


def test_page_health_and_static(client, retriever):
    page = client.get("/")
    assert page.status_code == 200 and '<canvas id="canvas"' in page.text
    assert page.headers["x-content-type-options"] == "nosniff"
    for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(ctype)
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["photos"] == len(retriever) == 24
    assert h["model"]["kind"] == "tvt" and h["model"]["dim"] == 32 and h["backend"]["name"] == "exact"
    assert h["limits"]["max_body_bytes"] == 200_000


def test_search_png_jpeg_and_strokes(client, retriever, sketch):
    r = client.post("/api/search?k=5", content=_png(sketch), headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    expected = retriever.search(sketch, 5)
    assert [x["id"] for x in res] == [h.id for h in expected]
    assert [x["relpath"] for x in res] == [h.relpath for h in expected]
    np.testing.assert_allclose([x["score"] for x in res], [h.score for h in expected], atol=1e-4)
    assert [x["rank"] for x in res] == [1, 2, 3, 4, 5] and res[0]["thumb"] == f"/thumb/{res[0]['id']}"
    assert not any(os.sep + "tmp" in json.dumps(x) for x in res)  # no absolute paths leave the server
    r = client.post("/api/search?k=3&crop=true", content=_png(sketch, "JPEG"), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200 and len(r.json()["results"]) == 3
    drawing = [[[0, 40, 80], [0, 60, 0]], [[10, 70], [30, 30]]]
    for body in ({"strokes": drawing}, drawing):
        r = client.post("/api/search?k=4", content=json.dumps(body), headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        assert [x["id"] for x in r.json()["results"]] == [h.id for h in retriever.search(drawing, 4)]


def test_thumbnails(client, retriever):
    r = client.get("/thumb/0")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(r.content))
    src = Image.open(retriever.index.abspath(0))
    assert img.format == "JPEG" and img.size == src.size  # 48 px photos are not enlarged
    assert client.get("/thumb/0").content == r.content  # cached


def test_thumbnail_cache_keeps_the_most_recent_and_notices_a_changed_file(private_index):
    import os

    from tvt.search import Retriever
    from tvt.serve.app import Thumbnails

    photos, index = private_index
    rendered = []

    class Counting(Thumbnails):
        def _render(self, path):
            rendered.append(path.name)
            return path.name.encode()

    thumbs = Counting(Retriever.from_index(index, quiet=True), cache=1)
    a, b = thumbs.get(0), thumbs.get(0)
    assert a == b and len(rendered) == 1  # the second call is served from the cache
    thumbs.get(1)
    thumbs.get(0)
    assert len(rendered) == 3  # one entry: photo 1 pushed photo 0 out
    path = thumbs.index.abspath(0)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    thumbs.get(0)
    assert len(rendered) == 4  # a changed file is rendered again


def _bomb(side: int = 12_000) -> bytes:
    """A side x side 1-bit PNG: ~100 kB on the wire for 144 M pixels."""
    return _png(Image.new("1", (side, side), 1))


BAD_SEARCHES = [
    # (headers, body, query, status, words in the message)
    ({}, b"x", "", 415, "content type"),
    ({"Content-Type": "text/plain"}, b"hello", "", 415, "text/plain"),
    ({"Content-Type": "image/gif"}, b"GIF89a", "", 415, "image/gif"),
    ({"Content-Type": "image/png"}, b"", "", 400, "empty"),
    ({"Content-Type": "image/png"}, b"\x89PNG\r\n\x1a\nnot really", "", 400, "not a readable image"),
    ({"Content-Type": "image/png"}, "jpeg-as-png", "", 400, "JPEG data"),
    ({"Content-Type": "image/png"}, "truncated", "", 400, "truncated"),
    ({"Content-Type": "image/png"}, "bomb", "", 413, "pixels"),
    ({"Content-Type": "image/png"}, "big bomb", "", 413, "far too large"),
    ({"Content-Type": "image/png"}, b"\0" * 300_000, "", 413, "limit"),
    ({"Content-Type": "application/json"}, b"{not json", "", 400, "not valid JSON"),
    ({"Content-Type": "application/json"}, b'{"strokes": []}', "", 400, "at least one stroke"),
    ({"Content-Type": "application/json"}, b'{"strokes": [[["a"], [1]]]}', "", 400, ""),
    ({"Content-Type": "application/json"}, b'{"strokes": [[[1, 2], [1]]]}', "", 400, ""),
    ({"Content-Type": "application/json"}, b'{"strokes": [[[0], [0]]]}', "k=0", 422, "k"),
    ({"Content-Type": "application/json"}, b'{"strokes": [[[0], [0]]]}', "k=101", 422, "k"),
    ({"Content-Type": "application/json"}, b'{"strokes": [[[0], [0]]]}', "k=abc", 422, "k"),
    ({"Content-Type": "application/json"}, b'{"strokes": [[[0], [0]]]}', "crop=maybe", 422, "crop"),
]


@pytest.mark.parametrize("headers,body,query,status,words", BAD_SEARCHES)
def test_bad_search_requests(client, sketch, headers, body, query, status, words):
    if body == "jpeg-as-png":
        body = _png(sketch, "JPEG")
    elif body == "truncated":
        body = _png(sketch.resize((200, 200)))[:400]
    elif body == "bomb":
        body = _bomb()
    elif body == "big bomb":  # above twice PIL's own limit: PIL refuses it when opening
        body = _bomb(14_000)
    r = client.post(f"/api/search?{query}", content=body, headers=headers)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and words in detail


def test_more_bad_requests_and_server_keeps_serving(client, sketch):
    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(10):
            yield b"\0" * 50_000

    r = client.post("/api/search", content=chunks(), headers={"Content-Type": "image/png"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    r = client.post("/api/search", content=b"x", headers={"Content-Type": "image/png", "Content-Length": "9999999"})
    assert r.status_code == 413
    many = {"strokes": [[list(range(60_000)), list(range(60_000))]]}
    r = client.post("/api/search", content=json.dumps(many), headers={"Content-Type": "application/json"})
    assert r.status_code == 413  # 1 MB of JSON over the 200 kB limit
    assert client.get("/api/search").status_code == 405
    assert client.get("/api/nothing").status_code == 404
    ok = client.post("/api/search?k=2", content=_png(sketch), headers={"Content-Type": "image/png"})
    assert ok.status_code == 200 and len(ok.json()["results"]) == 2


def test_too_many_points(retriever):
    app = TestClient(create_app(retriever, max_body=5_000_000), base_url=LOCAL)
    many = {"strokes": [[list(range(60_000)), list(range(60_000))]] * 2}
    r = app.post("/api/search", content=json.dumps(many), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "points" in r.json()["detail"]


@pytest.mark.parametrize("url", [
    "/thumb/../../etc/passwd", "/thumb/..%2F..%2Fetc%2Fpasswd", "/thumb/%2Fetc%2Fpasswd", "/thumb/-1",
    "/thumb/24", "/thumb/99999999999999999999", "/thumb/1e3", "/thumb/0x1", "/thumb/%00", "/thumb/%D9%A3",
    "/static/../app.py", "/static/..%2F__init__.py", "/static/index.html/../../app.py", "/static/%2Fetc%2Fpasswd",
])
def test_path_traversal_refused(client, url):
    r = client.get(url)
    assert r.status_code == 404
    assert "root:" not in r.text and "import" not in r.text


def test_symlink_swapped_in_after_indexing(private_index, tmp_path):
    photos, idx = private_index
    client = TestClient(create_app(Retriever.from_index(idx, quiet=True)), base_url=LOCAL)
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), "red").save(secret)
    from tvt.search.index import PhotoIndex

    target = photos / PhotoIndex.load(idx).paths[3]
    target.unlink()
    os.symlink(secret, target)
    r = client.get("/thumb/3")
    assert r.status_code == 404 and "outside the photo root" in r.json()["detail"]
    assert str(tmp_path) not in r.json()["detail"]
    os.unlink(target)
    r = client.get("/thumb/3")
    assert r.status_code == 404 and "no longer exists" in r.json()["detail"]
    assert client.get("/thumb/4").status_code == 200
