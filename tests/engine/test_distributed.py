"""Distributed training and extraction: 2 gloo processes vs one process emulating 2 ranks [Q21]."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tvt import config

JOB = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    import numpy as np
    import torch
    torch.set_num_threads(1)
    from tvt import config
    from tvt.cli import main
    from tvt.engine import train_tvt
    from tvt.distributed import cleanup, gather_rows, rank_and_world, shard_dataset
    from tvt.eval.extract import extract_features

    args = json.loads(Path(sys.argv[1]).read_text())
    out = Path(args["out"])
    train_tvt.train(config.load([], args["tvt"]), resume=False, device="cpu", progress=False)
    rows = torch.arange(14, dtype=torch.float32).view(7, 2)
    ds = torch.utils.data.TensorDataset(rows, torch.zeros(7))
    rank, world = rank_and_world()
    # extract_features shards over the ranks itself and gathers every row on every rank
    np.save(out / f"rows_{rank}.npy", extract_features(lambda x: x * 2, ds, batch_size=2, progress=False))
    shard = shard_dataset(ds)
    local = np.stack([ds[i][0].numpy() * 2 for i in shard.indices]) if len(shard) else np.zeros((0, 2), np.float32)
    np.save(out / f"shard_{rank}.npy", local)
    np.save(out / f"gathered_{rank}.npy", gather_rows(local.astype(np.float32), len(ds)))
    sets = [x for o in args["stage_a"] for x in ("--set", o)]
    assert main(["pretrain-sketch", *sets, "--device", "cpu", "--no-progress", "--no-resume"]) == 0
    cleanup()
''')


def save_random_teacher(cfg: config.Config, path: Path, seed: int) -> Path:
    """A randomly initialised teacher in our stage-A checkpoint format (fast stand-in for stage A)."""
    from tvt.engine.train_dino import build_teacher

    c = config.from_dict(config.as_plain(cfg))
    c.sketch.init = "random"
    torch.manual_seed(seed)
    teacher = build_teacher(c)
    torch.save({"format": "tvt", "version": 1, "stage": "image", "teacher": teacher.state_dict(),
                "arch": {"num_heads": cfg.model.num_heads}}, path)
    return path


@pytest.fixture
def dist_overrides(tiny_overrides, tmp_path) -> list[str]:
    cfg = config.load([], tiny_overrides)
    img = save_random_teacher(cfg, tmp_path / "img.pth", 0)
    skt = save_random_teacher(cfg, tmp_path / "skt.pth", 1)
    # per rank: 4 photos and 2 sketches per step, sub-batches of 2 (uniformity needs >= 2 rows)
    return tiny_overrides + [f"train.image_teacher={img}", f"train.sketch_teacher={skt}", "train.batch_size=4",
                             "train.max_steps_per_epoch=2", "train.save_every=0", "train.lr=0.05", "train.warmup_epochs=0"]


def _torchrun(script: Path, args: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(args)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_two_gloo_processes_equal_virtual_ranks(dist_overrides, tmp_path):
    """Stage B on 2 processes == one process with virtual_world_size=2; extraction shards + gathers;
    stage A runs under torchrun with only rank 0 writing."""
    from tvt.engine.train_tvt import train

    real, virt, stage_a = tmp_path / "real", tmp_path / "virtual", tmp_path / "stage_a_dist"
    # stage A: 2 ranks x 4 images, 2 sub-batches each; clipping small enough to act on every partial sum
    a_over = [o for o in dist_overrides if not o.startswith("sketch.output_dir")] + [
        "sketch.init=random", "sketch.modality=photo", "sketch.epochs=1", "sketch.max_steps_per_epoch=2",
        "sketch.batch_size=4", "sketch.drop_path_rate=0", "sketch.clip_grad=0.02", "sketch.lr=0.05",
        "sketch.warmup_epochs=0", "sketch.freeze_last_layer=0"]
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"out": str(tmp_path), "tvt": dist_overrides + [f"train.output_dir={real}"],
                                "stage_a": a_over + [f"sketch.output_dir={stage_a}"]}))
    (tmp_path / "job.py").write_text(JOB)
    proc = _torchrun(tmp_path / "job.py", args, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.stdout.count("selected checkpoint:") == 1  # only rank 0 reports
    assert "Grad strides do not match" not in proc.stderr
    assert proc.stderr.count("student temperature 4 ") == 1  # [Q41] logged once, = the per-process batch

    cfg = config.load([], dist_overrides + [f"train.output_dir={virt}", "train.virtual_world_size=2"])
    train(cfg, resume=False, device="cpu", progress=False)
    a = torch.load(real / "checkpoint.pth", weights_only=True)
    b = torch.load(virt / "checkpoint.pth", weights_only=True)
    assert a["world_size"] == b["world_size"] == 2 and a["epoch"] == b["epoch"] == 2
    for group in ("ca_loss", "dino_loss"):
        for k in a[group]:
            torch.testing.assert_close(a[group][k], b[group][k], rtol=1e-4, atol=1e-6, msg=f"{group}.{k}")
    # parameters: the difference is float noise, tiny next to the training update itself. (Adam
    # turns the noise of exactly-zero gradients, e.g. the key bias, into small steps, so a
    # per-element tolerance would be arbitrary.) One process without emulation differs ~100x more.
    from tvt.models.weights import init_student_from_teacher, load_teacher

    s0 = init_student_from_teacher(load_teacher(tmp_path / "img.pth"), num_classes=4).state_dict()
    update = sum(float((a["student"][k] - s0[k]).pow(2).sum()) for k in s0) ** 0.5
    diff = sum(float((a["student"][k] - b["student"][k]).pow(2).sum()) for k in s0) ** 0.5
    assert update > 0.05 and diff < 1e-3 * update, (diff, update)
    log_real = [json.loads(x) for x in (real / "log.jsonl").read_text().splitlines()]
    log_virt = [json.loads(x) for x in (virt / "log.jsonl").read_text().splitlines()]
    assert len(log_real) == len(log_virt)  # only rank 0 logged
    ep_real, ep_virt = log_real[-1], log_virt[-1]
    for k in ("train_loss/kd", "train_loss/ce", "train_loss/uni", "train_loss/ca"):
        assert ep_real[k] == pytest.approx(ep_virt[k], rel=1e-4, abs=1e-5), k

    # extraction: contiguous, non-padded shards; every rank gets all rows in dataset order
    want = np.arange(14, dtype=np.float32).reshape(7, 2) * 2
    assert np.load(tmp_path / "shard_0.npy").shape[0] + np.load(tmp_path / "shard_1.npy").shape[0] == 7
    for r in (0, 1):
        np.testing.assert_array_equal(np.load(tmp_path / f"rows_{r}.npy"), want)
        np.testing.assert_array_equal(np.load(tmp_path / f"gathered_{r}.npy"), want)

    state_a = torch.load(stage_a / "checkpoint.pth", weights_only=True)
    assert state_a["epoch"] == 1 and not list(stage_a.glob("*.tmp")) and state_a["student_temp"] == 4
    assert sum(json.loads(x)["type"] == "epoch" for x in (stage_a / "log.jsonl").read_text().splitlines()) == 1
    _compare_stage_a(state_a, a_over, tmp_path)


def _compare_stage_a(real: dict, overrides: list[str], tmp_path: Path) -> None:
    """Stage A with sketch.virtual_world_size=2 in one process equals the 2-process run; one process
    with the same 8 images per step but without the emulation does not."""
    from tvt.engine.train_dino import train

    def run(name: str, *extra: str) -> dict:
        train(config.load([], overrides + [f"sketch.output_dir={tmp_path / name}", *extra]), resume=False,
              device="cpu", progress=False)
        return torch.load(tmp_path / name / "checkpoint.pth", weights_only=True)

    virt = run("stage_a_virtual", "sketch.virtual_world_size=2")
    plain = run("stage_a_plain", "sketch.batch_size=8", "sketch.accum_steps=4", "sketch.student_temp=4",
                "sketch.lr=0.1")  # same peak LR (0.05 x 8 / 256 x 2 ranks), same sub-batches of 2
    torch.testing.assert_close(virt["dino_loss"]["center"], real["dino_loss"]["center"], rtol=1e-4, atol=1e-6)
    dist = lambda a, b: sum(float((a["student"][k] - b["student"][k]).pow(2).sum()) for k in a["student"]) ** 0.5  # noqa: E731
    assert dist(virt, real) < 1e-3 * dist(plain, real), (dist(virt, real), dist(plain, real))
    for k in real["teacher"]:
        torch.testing.assert_close(virt["teacher"][k], real["teacher"][k], rtol=1e-3, atol=1e-5, msg=k)


def test_virtual_loader_matches_distributed_sampler(tiny_overrides):
    """Virtual rank r's rows are what DistributedSampler(num_replicas=2, rank=r) gives, same crops."""
    from torch.utils.data import DistributedSampler

    from tvt.engine.sampling import ResumablePairedLoader, VirtualRankLoader
    from tvt.engine.train_tvt import datasets
    from tvt.data.layout import load_split

    cfg = config.load([], tiny_overrides)
    split = load_split(cfg.data.root, cfg.data.dataset, cfg.data.split)
    photos, sketches = datasets(cfg, split)
    make = lambda r: ResumablePairedLoader(photos, sketches, 4, 2, seed=0, rank=r, world_size=2)  # noqa: E731
    virtual = VirtualRankLoader([make(0), make(1)])
    virtual.set_epoch(3)
    x_img, y_img, x_skt, y_skt = next(iter(virtual))
    assert x_img[0].shape[0] == 8 and x_skt[0].shape[0] == 4
    for r in (0, 1):
        sampler = DistributedSampler(photos, num_replicas=2, rank=r, shuffle=True, seed=0)
        sampler.set_epoch(3)
        order = list(sampler)[:4]
        assert y_img[4 * r: 4 * r + 4].tolist() == [photos.targets[i] for i in order]
        alone = make(r)
        alone.set_epoch(3)
        p, _, s, _ = next(iter(alone))
        assert torch.equal(p[0], x_img[0][4 * r: 4 * r + 4]) and torch.equal(s[0], x_skt[0][2 * r: 2 * r + 2])


def test_virtual_loss_gradient_is_ddp_average():
    """With W virtual ranks the KD+CE+UNI+CA gradient equals the average of per-rank gradients
    where each rank's CA is W * mean distance over the gathered batch (spec §4.5)."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    from tvt.losses.dino import DINOCenter
    from tvt.losses.hypersphere import CenterAlignment, uniformity
    from tvt.losses.objective import tvt_loss

    torch.manual_seed(0)
    W, b, K, C, D = 2, 3, 8, 4, 5
    dl, cl, fe = torch.randn(W * b, K), torch.randn(W * b, C), torch.randn(W * b, D)
    t, y = torch.randn(W * b, K), torch.tensor([0, 1, 1, 2, 3, 0])
    kw = dict(teacher_temp=0.05, w_t=1.5, align_weight=2.0)

    def leaves():
        return [v.clone().requires_grad_(True) for v in (dl, cl, fe)]

    ca0 = CenterAlignment(C, D)
    ca0.center_skt.copy_(F.normalize(torch.randn(C, D), dim=1))
    v_leaves = leaves()
    out = SimpleNamespace(dino_logits=v_leaves[0], cls_logits=v_leaves[1], f=F.normalize(v_leaves[2], dim=1))
    ca_v, dc_v = CenterAlignment(C, D), DINOCenter(K)
    ca_v.load_state_dict(ca0.state_dict())
    logs = tvt_loss(out, t, y, "img", dino_center=dc_v, ca=ca_v, ranks=W, **kw)
    logs["objective"].backward()

    # reference: per rank r, its own rows with gradient, CA over all rows (others constant) x W
    grads = [torch.zeros_like(v) for v in (dl, cl, fe)]
    for r in range(W):
        ls = leaves()
        rows = slice(r * b, (r + 1) * b)
        f_all = F.normalize(ls[2], dim=1)
        f_r = f_all[rows]
        ca_r, dc_r = CenterAlignment(C, D), DINOCenter(K)
        ca_r.load_state_dict(ca0.state_dict())
        own = SimpleNamespace(dino_logits=ls[0][rows], cls_logits=ls[1][rows], f=f_r)
        terms = tvt_loss(own, t[rows], y[rows], "img", dino_center=dc_r, ca=CenterAlignment(C, D),
                         use_align_uniform=False, **kw)
        f_g = torch.cat([f_all[i * b:(i + 1) * b] if i == r else f_all[i * b:(i + 1) * b].detach() for i in range(W)])
        loss_r = terms["objective"] + 1.5 * 0.25 * uniformity(f_r) + 1.5 * W * ca_r(f_g, y, "img")
        loss_r.backward()
        for g, leaf in zip(grads, ls):
            g += leaf.grad / W  # DDP averages gradients over ranks
    for g, leaf in zip(grads, v_leaves):
        torch.testing.assert_close(leaf.grad, g, rtol=1e-5, atol=1e-6)
    # DINO centre moved once with the mean of all W*b teacher rows
    torch.testing.assert_close(dc_v.center("img"), 0.1 * t.mean(0, keepdim=True))
    assert logs["loss/ca"] == pytest.approx(float(W * (ca_v.center_img[y.unique()] - ca0.center_skt[y.unique()])
                                                  .pow(2).sum(1).mean()), rel=1e-5)


def test_shard_bounds_partition():
    from tvt.distributed import shard_bounds

    for n in (0, 1, 7, 64):
        for w in (1, 2, 3, 8):
            seen = [i for r in range(w) for i in range(*shard_bounds(n, r, w))]
            assert seen == list(range(n))
            sizes = [shard_bounds(n, r, w)[1] - shard_bounds(n, r, w)[0] for r in range(w)]
            assert max(sizes) - min(sizes) <= 1


def test_virtual_world_size_refused_with_torchrun_and_bad_values(dist_overrides):
    from tvt.distributed import DistInfo
    from tvt.engine import train_dino, train_tvt
    from tvt.errors import ConfigError

    cfg = config.load([], dist_overrides + ["train.virtual_world_size=2", "sketch.virtual_world_size=2"])
    train_tvt.check_config(cfg, DistInfo())
    with pytest.raises(ConfigError, match="virtual_world_size"):
        train_tvt.check_config(cfg, DistInfo(rank=0, world_size=2))
    with pytest.raises(ConfigError, match="sketch.virtual_world_size"):
        train_dino.check_config(cfg, DistInfo(rank=0, world_size=2), "fp32")
    for key in ("train", "sketch"):
        with pytest.raises(ConfigError, match=f"{key}.virtual_world_size: must be >= 1"):
            config.load([], [f"{key}.virtual_world_size=0"])
