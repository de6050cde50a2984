"""tvt.files: whole-or-nothing writes, JSON files and file digests."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest

from tvt.files import atomic_write, sha256_file, write_json, write_text


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = write_text(tmp_path / "a.txt", "old")

    def half(fh):
        fh.write(b"new but")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_before_replace_runs_when_the_new_file_is_complete(tmp_path):
    target = write_text(tmp_path / "ckpt", "v1")
    seen = []

    def keep_old():
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        target.rename(tmp_path / "ckpt-prev")

    atomic_write(target, lambda fh: fh.write(b"v2"), before_replace=keep_old)
    assert seen == [["ckpt", "ckpt.tmp"]]
    assert (tmp_path / "ckpt").read_text() == "v2" and (tmp_path / "ckpt-prev").read_text() == "v1"


def test_unique_temporaries_let_writers_race(tmp_path):
    target = tmp_path / "sub" / "entry.bin"
    payloads = [bytes([i]) * 100_000 for i in range(8)]
    barrier = threading.Barrier(len(payloads))

    def writer(data: bytes) -> None:
        def write(fh):
            barrier.wait()  # every writer holds an open temporary at the same time
            fh.write(data)
        atomic_write(target, write, unique=True, fsync=False)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert target.read_bytes() in payloads  # one writer's whole content, never a mix
    assert [p.name for p in target.parent.iterdir()] == ["entry.bin"]


def test_write_json_round_trip_and_refusal(tmp_path):
    path = write_json(tmp_path / "r.json", {"mAP@all": 0.5, "name": "é"}, ensure_ascii=False)
    assert json.loads(path.read_text(encoding="utf-8")) == {"mAP@all": 0.5, "name": "é"}
    assert path.read_text(encoding="utf-8").endswith("}\n") and "é" in path.read_text(encoding="utf-8")
    with pytest.raises(TypeError):
        write_json(path, {"x": object()})
    assert json.loads(path.read_text(encoding="utf-8"))["name"] == "é"  # untouched
    assert write_json(tmp_path / "c.json", [1, 2], indent=None).read_text() == "[1, 2]\n"


def test_sha256_file_matches_hashlib_across_chunks(tmp_path):
    data = bytes(range(256)) * 1000
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path, chunk=999) == sha256_file(path) == hashlib.sha256(data).hexdigest()
