"""Slow and stalled clients against the real server (uvicorn in a thread): the connection is closed or
answered 408, never held open forever, and the server keeps answering everyone else."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

uvicorn = pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def server(index_dir) -> Iterator[int]:
    from tvt.search.retriever import Retriever
    from tvt.serve.app import create_app
    from tvt.serve.protocol import with_head_timeout

    app = create_app(Retriever.from_index(index_dir, quiet=True), body_timeout=0.5)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", http=with_head_timeout(0.5), timeout_keep_alive=1))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield port
    srv.should_exit = True
    thread.join(timeout=10)
    sock.close()


def _talk(port: int, *parts: bytes, pause: float = 0.0) -> bytes:
    """Send ``parts`` (pausing between them), then read until the server closes (15 s at most)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        for part in parts:
            s.sendall(part)
            time.sleep(pause)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, socket.timeout):
            pytest.fail(f"the server held the connection open; got {out[:200]!r}")
        except ConnectionResetError:
            pass
        return out


HEAD = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@pytest.mark.parametrize("parts", [(), (b"GE",), (HEAD,), (HEAD[:10], HEAD[10:20], HEAD[20:30])],
                         ids=["silent", "two_bytes", "no_blank_line", "trickle"])
def test_incomplete_request_head_is_closed(server, parts):
    assert _talk(server, *parts, pause=0.1) == b""  # closed without an answer


def test_stalled_body_gets_408(server):
    head = (b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            b"Content-Length: 1000\r\nConnection: close\r\n\r\n")
    answer = _talk(server, head + b"\x89PNG\r\n\x1a\n")
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive" in answer


def test_others_are_served_meanwhile(server):
    stalled = [socket.create_connection(("127.0.0.1", server)) for _ in range(5)]
    try:
        for s in stalled:
            s.sendall(HEAD[:12])
        answer = _talk(server, HEAD + b"Connection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200") and b'"status":"ok"' in answer
    finally:
        for s in stalled:
            s.close()
