"""A flaky disk, a busy index folder, odd files and a newcomer's mistakes: a clear message (exit 2,
``tvt: error: ...``), never a traceback or a hang, and the last good index is always kept."""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from tvt.cli import main
from tvt.errors import DataError
from tvt.search import index as index_mod
from tvt.search.lock import LOCK_FILE, index_lock


def _user_error(capsys, argv: list[str], *must_mention: str) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and any(ln.startswith("tvt: error:") for ln in err.splitlines()), err
    for word in must_mention:
        assert word in err, (word, err)
    return err


def _index_state(idx: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in idx.iterdir()
            if f.is_file() and f.name != LOCK_FILE}


@pytest.fixture
def fresh(tmp_path, tiny_ckpt, bad) -> tuple[Path, Path]:
    """(photos, index) of 4 photos that a test may change."""
    photos = tmp_path / "photos"
    for i in range(4):
        bad.write_good(photos / f"{i}.png", seed=i, size=32)
    idx = tmp_path / "idx"
    assert main(["index", str(photos), "--checkpoint", str(tiny_ckpt), "--out", str(idx), "--no-progress",
                 "--device", "cpu"]) == 0
    return photos, idx


def _index(photos: Path, idx: Path, *extra: str) -> list[str]:
    return ["index", str(photos), "--out", str(idx), "--no-progress", "--device", "cpu", *extra]


# ----------------------------------------------------------------------------- 9. full / read-only disk


def _fd_name(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name the file being written")
@pytest.mark.parametrize("target,code", [("files.json.tmp", errno.ENOSPC), ("index.json.tmp", errno.ENOSPC),
                                         ("embeddings.npy.tmp", errno.EDQUOT), (".npz.tmp", errno.ENOSPC),
                                         ("", errno.EROFS)])
def test_disk_full_or_read_only_keeps_the_last_index(capsys, fresh, monkeypatch, bad, target, code):
    photos, idx = fresh
    bad.write_good(photos / "new.png", seed=9, size=32)  # something to write
    before = _index_state(idx)
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        if _fd_name(fd).endswith(target):
            raise OSError(code, os.strerror(code))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    err = _user_error(capsys, _index(photos, idx), os.strerror(code), "kept unchanged", str(idx))
    assert "Traceback" not in err
    monkeypatch.undo()
    assert _index_state(idx) == before and not list(idx.glob("*.tmp"))
    assert len(index_mod.PhotoIndex.load(idx)) == 4  # still a complete, verified index
    assert main(_index(photos, idx)) == 0 and len(index_mod.PhotoIndex.load(idx)) == 5  # and it recovers


def test_unchanged_update_writes_nothing(capsys, fresh, monkeypatch):
    """A read-only index folder: an update with nothing to do succeeds; one with work says why it cannot."""
    photos, idx = fresh
    before = {f.name: f.stat().st_mtime_ns for f in idx.iterdir()}
    real_open = os.open

    def read_only_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and str(path).startswith(str(idx)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", read_only_open)
    real_builtin_open = open

    def read_only_builtin(file, mode="r", *a, **k):
        if any(m in mode for m in "wax+") and str(file).startswith(str(idx)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_builtin_open(file, mode, *a, **k)

    monkeypatch.setattr("builtins.open", read_only_builtin)
    capsys.readouterr()
    assert main(_index(photos, idx)) == 0
    assert "4 unchanged" in capsys.readouterr().out
    assert {f.name: f.stat().st_mtime_ns for f in idx.iterdir()} == before
    Image.new("RGB", (32, 32), "red").save(photos / "new.png")
    _user_error(capsys, _index(photos, idx), "Read-only file system", "kept unchanged")


# ----------------------------------------------------------------------------- 10. two runs on one folder


def test_index_folder_lock_names_its_holder(capsys, fresh):
    photos, idx = fresh
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from tvt.search.lock import index_lock\n"
         f"with index_lock(Path({str(idx)!r})):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _index_state(idx)
        _user_error(capsys, _index(photos, idx), "being updated", f"process {holder.pid}",
                    f"host {socket.gethostname()}")
        assert _index_state(idx) == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert main(_index(photos, idx)) == 0  # released when the holder ends (also if it is killed)


def test_lock_is_released_by_a_killed_holder(tmp_path):
    idx = tmp_path / "idx"
    idx.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from pathlib import Path; from tvt.search.lock import index_lock\n"
         f"with index_lock(Path({str(idx)!r})):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Exception, match="being updated"):
        with index_lock(idx):
            pass
    holder.kill()
    holder.wait(timeout=30)
    with index_lock(idx):  # no stale lock
        assert json.loads((idx / LOCK_FILE).read_text())["pid"] == os.getpid()


# ----------------------------------------------------------------------------- 11. FIFOs, sockets


def _specials(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "pipe.png")
    os.mkfifo(folder / "pipe.JPG")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "sock.jpeg"))
    sock.close()
    return ["pipe.JPG", "pipe.png", "sock.jpeg"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX only")
def test_index_skips_non_regular_files(tmp_path, capsys, tiny_ckpt, bad):
    photos = tmp_path / "photos"
    bad.write_good(photos / "ok.png", seed=1, size=32)
    names = _specials(photos)
    capsys.readouterr()
    assert main(["index", str(photos), "--checkpoint", str(tiny_ckpt), "--out", str(tmp_path / "idx"),
                 "--no-progress", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["count"] == 1
    reasons = {s["path"]: s["reason"] for s in meta["skipped"]}
    assert sorted(reasons) == names
    assert "a FIFO" in reasons["pipe.png"] and "a socket" in reasons["sock.jpeg"] and "skipped pipe.png" in err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX only")
def test_loaders_and_data_check_refuse_non_regular_files(tmp_path, capsys, bad):
    from tvt.data.images import load_rgb

    names = _specials(tmp_path / "x")
    for name in names:
        with pytest.raises(DataError, match="not a regular file"):
            load_rgb(tmp_path / "x" / name)
    ds = bad.make_tree(tmp_path / "root")
    _specials(ds / "photo" / "a")
    capsys.readouterr()
    assert main(["data", "check", str(tmp_path / "root"), "--dataset", "ds", "--split", "s"]) == 0
    out = capsys.readouterr().out
    assert out.count("not a regular file") == 3 and "3 problem(s)" in out


# ----------------------------------------------------------------------------- 12. EXIF orientation


def _exif_jpeg(path: Path, orientation: int) -> Path:
    """A 48x32 picture with a distinct corner, stored with EXIF orientation ``orientation``."""
    arr = np.full((32, 48, 3), 230, np.uint8)
    arr[:8, :12] = (200, 0, 0)
    arr[20:, 30:] = (0, 0, 180)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, "JPEG", quality=95, exif=exif)
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    from tvt.data.images import load_rgb
    from tvt.search.retriever import load_query_image

    path = _exif_jpeg(tmp_path / "p.jpg", orientation)
    with Image.open(path) as im:
        upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        stored = np.asarray(im.convert("RGB"))
    assert np.array_equal(np.asarray(load_rgb(path, exif_transpose=True)), upright)
    assert np.array_equal(np.asarray(load_query_image(path)), upright)  # queries: upright
    assert np.array_equal(np.asarray(load_rgb(path)), stored)  # the benchmark loader: as the official code


def test_index_thumbnails_and_server_queries_are_upright(tmp_path, tiny_ckpt):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from tvt.data.transforms import eval_transform
    from tvt.search.retriever import Retriever
    from tvt.serve.app import create_app, decode_image

    photos = tmp_path / "photos"
    photos.mkdir()
    _exif_jpeg(photos / "rot6.jpg", 6)
    _exif_jpeg(photos / "rot3.jpg", 3)
    idx = tmp_path / "idx"
    assert main(["index", str(photos), "--checkpoint", str(tiny_ckpt), "--out", str(idx), "--no-progress",
                 "--device", "cpu"]) == 0
    r = Retriever.from_index(idx, quiet=True)
    assert json.loads((idx / "index.json").read_text())["preprocess"]["exif_transpose"] is True
    for i, rel in enumerate(r.index.paths):
        with Image.open(photos / rel) as im:
            upright = ImageOps.exif_transpose(im).convert("RGB")
        ref = r.encoder(eval_transform(r.index.model.img_size)(upright)[None], "img")
        ref = (ref / ref.norm(dim=1, keepdim=True)).detach().numpy()[0]
        np.testing.assert_allclose(r.index.embeddings[i], ref, atol=1e-5)
    client = TestClient(create_app(r), base_url="http://127.0.0.1")
    sizes = {rel: Image.open(__import__("io").BytesIO(client.get(f"/thumb/{i}").content)).size
             for i, rel in enumerate(r.index.paths)}
    assert sizes == {"rot6.jpg": (32, 48), "rot3.jpg": (48, 32)}
    q = decode_image((photos / "rot6.jpg").read_bytes(), "image/jpeg")
    with Image.open(photos / "rot6.jpg") as im:
        assert np.array_equal(np.asarray(q), np.asarray(ImageOps.exif_transpose(im).convert("RGB")))


def test_old_index_without_orientation_is_reembedded(capsys, fresh):
    photos, idx = fresh
    meta = json.loads((idx / "index.json").read_text())
    del meta["preprocess"]["exif_transpose"]  # as written before orientation was applied
    (idx / "index.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(_index(photos, idx)) == 0
    out = capsys.readouterr()
    assert "embedded again" in out.err and "4 changed" in out.out


# ----------------------------------------------------------------------------- 13. class names, counts


BAD_CLASS_NAMES = [".", "..", " . ", "../photo", "a/b", "/etc", "a\\b", "tab\there", "bell\x07"]


@pytest.mark.parametrize("name", BAD_CLASS_NAMES)
@pytest.mark.parametrize("which", ["all", "test"])
def test_class_names_that_are_not_folder_names_are_refused(tmp_path, capsys, bad, name, which):
    from tvt.data.layout import load_split

    ds = bad.make_tree(tmp_path)
    all_names = ["a", "b", "c"] + ([name] if which in ("all", "test") else [])
    (ds / "split" / "all_classes.txt").write_text("\n".join(all_names) + "\n")
    if which == "test":
        (ds / "split" / "s_classes.txt").write_text(f"c\n{name}\n")
    with pytest.raises(DataError, match="not a plain folder name") as info:
        load_split(tmp_path, "ds", "s")
    assert "line 4" in str(info.value) or "line 2" in str(info.value)
    _user_error(capsys, ["data", "check", str(tmp_path), "--dataset", "ds", "--split", "s"], "plain folder name")


def test_class_folder_refuses_dot(tmp_path, bad):
    from tvt.data.folder import ClassFolder

    bad.write_good(tmp_path / "a" / "0.png")
    for name in (".", ".."):
        with pytest.raises(DataError, match="plain folder name"):
            ClassFolder(tmp_path, ["a", name])


def test_published_counts_checked_for_known_protocols(tmp_path, capsys, bad):
    from tvt.data.check import published_count_problems
    from tvt.data.layout import load_split
    from tvt.data.splits import PROTOCOLS

    p = PROTOCOLS["sketchy_no21"]
    bad.make_tree(tmp_path, classes=tuple(p.test_classes) + ("zz_train",), test=tuple(p.test_classes),
                  dataset="sketchy", split="zeroshot")
    capsys.readouterr()
    assert main(["data", "check", str(tmp_path), "--dataset", "sketchy", "--split", "zeroshot",
                 "--no-verify-images"]) == 0
    out = capsys.readouterr().out
    assert "[count_mismatch]" in out and "sketchy_no21" in out and "10453" in out and "OK" not in out.splitlines()[-1]
    sp = load_split(tmp_path, "sketchy", "zeroshot")
    totals = {"train": {}, "test": {"photos": 10453, "sketches": 12693}}
    assert published_count_problems(sp, totals) == []
    near = {"train": {}, "test": {"photos": 10000, "sketches": 13500}}  # within 10 %
    assert published_count_problems(sp, near) == []
    far = {"train": {}, "test": {"photos": 336, "sketches": 12693}}
    assert [q["kind"] for q in published_count_problems(sp, far)] == ["count_mismatch"]
    # an unknown split (other test classes) is never compared
    bad.make_tree(tmp_path / "other")
    assert published_count_problems(load_split(tmp_path / "other", "ds", "s"), far) == []


# ----------------------------------------------------------------------------- 14. empty input


def test_empty_folder_index_and_search_say_so(tmp_path, capsys, tiny_ckpt, bad):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    capsys.readouterr()
    assert main(["index", str(tmp_path / "empty"), "--checkpoint", str(tiny_ckpt), "--out", str(tmp_path / "idx"),
                 "--no-progress", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "holds no photos" in err and "no image files" in err
    sketch = bad.write_good(tmp_path / "q.png")
    _user_error(capsys, ["search", str(sketch), "--index", str(tmp_path / "idx"), "--device", "cpu"],
                "holds no photos", "tvt index")
    _user_error(capsys, ["serve", "--index", str(tmp_path / "idx"), "--device", "cpu", "--port", "0"], "--port")
    only_bad = tmp_path / "bad"
    bad.write_image(only_bad, "text_png")
    assert main(["index", str(only_bad), "--checkpoint", str(tiny_ckpt), "--out", str(tmp_path / "idx2"),
                 "--no-progress", "--device", "cpu"]) == 0
    assert "all 1 image files were skipped" in capsys.readouterr().err


def test_serve_refuses_an_empty_index(tmp_path, capsys, tiny_ckpt, monkeypatch):
    uvicorn = pytest.importorskip("uvicorn")
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("must not start"))
    (tmp_path / "empty").mkdir()
    assert main(["index", str(tmp_path / "empty"), "--checkpoint", str(tiny_ckpt), "--out", str(tmp_path / "idx"),
                 "--no-progress", "--device", "cpu"]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _user_error(capsys, ["serve", "--index", str(tmp_path / "idx"), "--device", "cpu", "--port", str(port)],
                "holds no photos")


# ----------------------------------------------------------------------------- 19. ~ everywhere


def test_home_is_expanded_everywhere(tmp_path, capsys, monkeypatch, tiny_ckpt, bad):
    import shutil

    from tvt.commands._common import PATH_KEYS, load_config
    from tvt.search import Retriever

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path / ".." if (tmp_path / "..").is_dir() else tmp_path)
    shutil.copy(tiny_ckpt, tmp_path / "ckpt.pth")
    for i in range(3):
        bad.write_good(tmp_path / "photos" / f"{i}.png", seed=i, size=32)
    bad.write_good(tmp_path / "q.png", seed=7)  # the query sketch, used by path below
    assert main(["index", "~/photos", "--checkpoint", "~/ckpt.pth", "--out", "~/idx", "--no-progress",
                 "--device", "cpu"]) == 0
    assert (tmp_path / "idx" / "index.json").is_file() and not Path("~").exists()
    assert main(["search", "~/q.png", "--index", "~/idx", "--sheet", "~/sheet.png", "--device", "cpu"]) == 0
    assert (tmp_path / "sheet.png").is_file()
    hits = Retriever.from_index("~/idx").search("~/q.png", k=2)  # the README's Python snippet
    assert len(hits) == 2 and hits[0].path.is_file()
    assert main(["index", "~/photos", "--out", "~/idx", "--no-progress", "--device", "cpu"]) == 0  # from the index
    (tmp_path / "c.yaml").write_text("train: {epochs: 3}\n")
    args = argparse.Namespace(config=[str(tmp_path / "c.yaml")],
                              overrides=[f"{s}.{k}=~/x_{k}" for s, k in PATH_KEYS])
    cfg = load_config(args)
    for section, key in PATH_KEYS:
        assert getattr(getattr(cfg, section), key) == str(tmp_path / f"x_{key}")
    from tvt.cli import expand_home

    ns = argparse.Namespace(config=["~/c.yaml"], out="~/o", k=3, device="cpu")
    expand_home(ns)
    assert ns.config == [str(tmp_path / "c.yaml")] and ns.out == str(tmp_path / "o") and ns.device == "cpu"


# ----------------------------------------------------------------------------- 20. tiny_cpu.yaml from a fresh clone


def test_tiny_cpu_configs_chain_and_missing_input_says_how(tmp_path, capsys, monkeypatch):
    from tvt import config

    repo = Path(__file__).parents[2]
    tiny = config.load([repo / "configs" / "tiny_cpu.yaml"])
    image = config.load([repo / "configs" / "tiny_cpu.yaml", repo / "configs" / "tiny_cpu_image.yaml"])
    assert image.sketch.init == "random" and image.sketch.modality == "photo"
    made = str(Path(image.sketch.output_dir) / "checkpoint.pth")  # what the image run writes
    assert tiny.sketch.init == made and tiny.train.image_teacher == made
    assert tiny.train.sketch_teacher == str(Path(tiny.sketch.output_dir) / "checkpoint_best.pth")
    monkeypatch.chdir(tmp_path)  # a fresh clone: nothing under runs/
    for command in ("pretrain-sketch", "train"):
        _user_error(capsys, [command, "-c", str(repo / "configs" / "tiny_cpu.yaml"), "--device", "cpu"],
                    "runs/tiny/image/checkpoint.pth", "tiny_cpu_image.yaml")


# ----------------------------------------------------------------------------- 21. mistakes without tracebacks


@pytest.mark.parametrize("sheet,word", [("missing/dir/sheet.png", "does not exist"), ("sheet.txt", ".png"),
                                        ("sheet", ".png"), (".", "folder"), ("adir.png", "is a folder")])
def test_search_sheet_mistakes(tmp_path, capsys, good_index, bad, sheet, word):
    (tmp_path / "adir.png").mkdir()
    sketch = bad.write_good(tmp_path / "q.png")
    _user_error(capsys, ["search", str(sketch), "--index", str(good_index[1]), "--device", "cpu",
                         "--sheet", str(tmp_path / sheet)], word)


def test_index_out_is_a_file(tmp_path, capsys, good_index, tiny_ckpt):
    (tmp_path / "idx").write_text("I am a file")
    _user_error(capsys, ["index", str(good_index[0]), "--checkpoint", str(tiny_ckpt), "--out", str(tmp_path / "idx"),
                         "--no-progress"], "is a file")
    assert (tmp_path / "idx").read_text() == "I am a file"
    from tvt.search.update import update_index

    with pytest.raises(Exception, match="is a file"):
        update_index(good_index[0], tmp_path / "idx", lambda x, m: x, index_mod.ModelIdentity("tvt", 32, 32))


def test_serve_on_a_busy_port(capsys, good_index, monkeypatch):
    uvicorn = pytest.importorskip("uvicorn")
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("must not start"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = _user_error(capsys, ["serve", "--index", str(good_index[1]), "--port", str(port), "--device", "cpu"],
                          f"127.0.0.1:{port}", "in use", "--port")
    assert "serving" not in capsys.readouterr().out + err


# ----------------------------------------------------------------------------- 22. --help and eval columns


def test_every_option_of_every_command_has_help():
    from tvt.cli import COMMANDS, _build_parser

    missing = []
    for words in COMMANDS:
        parser = _build_parser(only=words)
        sub = parser
        for w in words:
            action = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction))
            sub = action.choices[w]
        missing += [f"{' '.join(words)} {'/'.join(a.option_strings) or a.dest}" for a in sub._actions
                    if not a.help and not isinstance(a, argparse._HelpAction)]
    assert missing == []


def test_eval_prints_only_metric_columns():
    from tvt.commands.eval import is_metric

    result = {"mAP@all": 0.5, "mAP@200": 0.4, "P@100": 0.3, "P@200": 0.2, "n_queries": 10, "n_gallery": 20,
              "binary64/mAP@all": 0.4, "binary64/P@200": 0.1, "binary64/n_queries": 10, "binary64/n_gallery": 20,
              "binary64/bits": 64}
    assert [k for k in result if is_metric(k)] == ["mAP@all", "mAP@200", "P@100", "P@200", "binary64/mAP@all",
                                                    "binary64/P@200"]
