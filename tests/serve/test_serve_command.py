"""`tvt serve` in-process: argument handling, without starting a real server."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
from fastapi.testclient import TestClient  # noqa: E402

from tvt.cli import main  # noqa: E402


def test_serve_builds_the_app_with_limits(index_dir, monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    assert main(["serve", "--index", str(index_dir), "--port", "8123", "--max-upload-mb", "0.5",
                 "--backend", "exact", "--device", "cpu"]) == 0
    assert seen["port"] == 8123 and seen["host"] == "127.0.0.1"
    assert "serving 24 photos" in capsys.readouterr().out
    health = TestClient(seen["app"], base_url="http://127.0.0.1").get("/api/health").json()
    assert health["limits"]["max_body_bytes"] == 512 * 1024 and health["photos"] == 24


def test_serve_errors(tmp_path, index_dir, capsys):
    assert main(["serve", "--index", str(tmp_path)]) == 2
    assert "not a tvt index" in capsys.readouterr().err
    assert main(["serve", "--index", str(index_dir), "--max-upload-mb", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err
