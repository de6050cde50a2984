"""Indexing over 2 gloo processes (torchrun): equal to one process, and resumable after a crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import tvt
from tvt.search.sharded import batch_share

# An encoder that is a fixed random projection of the image; on rank ``interrupt_rank`` it raises
# KeyboardInterrupt on its call number ``interrupt_at`` (the crash of one worker).
JOB = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from tvt.distributed import cleanup, rank_and_world, setup
    from tvt.search import ModelIdentity
    from tvt.search.sharded import update_index_sharded

    args = json.loads(Path(sys.argv[1]).read_text())
    setup("cpu")
    rank, world = rank_and_world()

    class Projection:
        kind, dim, img_size = "proj", 16, 16
        def __init__(self):
            self.w = torch.randn(3 * 16 * 16, 16, generator=torch.Generator().manual_seed(0))
            self.calls = self.seen = 0
        def __call__(self, x, modality="skt"):
            self.calls += 1
            if rank == args["interrupt_rank"] and self.calls == args["interrupt_at"]:
                raise KeyboardInterrupt
            self.seen += len(x)
            return x.flatten(1) @ self.w

    enc = Projection()
    model = ModelIdentity(kind="proj", dim=16, img_size=16, checkpoint="proj.pth", sha256="0" * 64)
    out = Path(args["out"])
    try:
        report = update_index_sharded(args["photos"], args["index"], enc, model, batch_size=2, flush_every=2,
                                      progress=False)
    finally:
        (out / f"seen_{args['tag']}_{rank}.json").write_text(json.dumps(enc.seen))
    if report is not None:
        (out / f"report_{args['tag']}.json").write_text(json.dumps({"resumed": report.resumed, "total": report.total,
                                                                    "added": report.added}))
    cleanup()
''')


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    src = str(Path(tvt.__file__).resolve().parents[1])  # the checkout under test, also in the children
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)


def _index_files(d: Path) -> tuple[np.ndarray, dict, dict]:
    meta = json.loads((d / "index.json").read_text())
    for volatile in ("created", "updated", "last_update"):
        meta.pop(volatile)
    return np.load(d / "embeddings.npy"), json.loads((d / "files.json").read_text()), meta


def test_batch_share_covers_every_item_once():
    items = [f"p{i}" for i in range(23)]
    for world in (1, 2, 3, 7):
        shares = [batch_share(items, 4, r, world) for r in range(world)]
        assert sum(shares, []) == items
        assert all(len(s) % 4 == 0 for s in shares[:-1])  # cut at batch boundaries
        sizes = [-(-len(s) // 4) for s in shares]
        assert max(sizes) - min(sizes) <= 1


def test_two_processes_build_the_same_index_as_one(photo_dir, tmp_path, tiny_ckpt):
    """`torchrun --nproc_per_node 2 -m tvt.cli index` == `tvt index`, byte for byte (embeddings too)."""
    (photo_dir / "broken.jpg").write_bytes(b"not an image")  # skipped by whichever rank gets it
    common = [str(photo_dir), "--checkpoint", str(tiny_ckpt), "--batch-size", "3", "--no-progress", "--device", "cpu"]
    one = subprocess.run([sys.executable, "-m", "tvt.cli", "index", *common, "--out", str(tmp_path / "one")],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(["-m", "tvt.cli", "index", *common, "--out", str(tmp_path / "two")], tmp_path)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-4000:]
    assert "13 photos" not in two.stdout and "12 photos (12 added" in two.stdout  # rank 0 reports once
    emb1, files1, meta1 = _index_files(tmp_path / "one")
    emb2, files2, meta2 = _index_files(tmp_path / "two")
    assert emb1.shape == (12, 32)
    np.testing.assert_array_equal(emb2, emb1)
    assert files2 == files1 and meta2 == meta1
    assert meta2["skipped"][0]["path"] == "broken.jpg"
    assert not (tmp_path / "two" / "partial").exists()


def test_interrupted_sharded_indexing_resumes(photo_dir, tmp_path, helpers):
    from tvt.search.update import update_index

    for i in range(12, 24):  # 24 photos: 6 batches of 2 per rank
        helpers.write_photo(photo_dir / "more" / f"{i}.png", seed=i)
    job = tmp_path / "job.py"
    job.write_text(JOB)
    base = {"photos": str(photo_dir), "index": str(tmp_path / "idx"), "out": str(tmp_path)}

    def launch(tag: str, interrupt_rank: int) -> subprocess.CompletedProcess:
        args = tmp_path / f"{tag}.json"
        args.write_text(json.dumps({**base, "tag": tag, "interrupt_rank": interrupt_rank, "interrupt_at": 3}))
        return _torchrun([str(job), str(args)], tmp_path)

    crashed = launch("crash", interrupt_rank=1)  # rank 1 dies in its third batch
    assert crashed.returncode != 0
    assert not (tmp_path / "idx" / "index.json").exists()
    shards = sorted(p.name for p in (tmp_path / "idx" / "partial").glob("shard-*.npz"))
    assert any(s.endswith("-r1.npz") for s in shards)  # rank 1's first two batches survived
    saved = [np.load(tmp_path / "idx" / "partial" / s)["paths"] for s in shards]
    done_before = sum(len(p) for p in saved)
    assert 4 <= done_before < 24 and len(set(np.concatenate(saved).tolist())) == done_before

    resumed = launch("resume", interrupt_rank=-1)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-4000:]
    report = json.loads((tmp_path / "report_resume.json").read_text())
    seen_after = sum(json.loads((tmp_path / f"seen_resume_{r}.json").read_text()) for r in (0, 1))
    assert report["total"] == report["added"] == 24
    assert report["resumed"] == done_before and seen_after == 24 - done_before  # nothing embedded twice
    assert not (tmp_path / "idx" / "partial").exists()

    enc = helpers.Encoder()  # the same projection, one process, uninterrupted
    update_index(photo_dir, tmp_path / "ref", enc, helpers.identity(enc), batch_size=2, progress=False)
    emb, files, meta = _index_files(tmp_path / "idx")
    emb_ref, files_ref, meta_ref = _index_files(tmp_path / "ref")
    assert files == files_ref and meta == meta_ref
    np.testing.assert_allclose(emb, emb_ref, rtol=0, atol=1e-6)  # resumed batches differ from the reference's


@pytest.mark.parametrize("world", [2, 3])
def test_shares_reproduce_single_process_batches(world):
    items = [str(i) for i in range(17)]
    batches = [items[i: i + 3] for i in range(0, 17, 3)]
    from_ranks = [s[i: i + 3] for r in range(world) for s in [batch_share(items, 3, r, world)] for i in range(0, len(s), 3)]
    assert from_ranks == batches
