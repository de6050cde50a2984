"""Stage A and stage B training loops on a tiny model: steps, EMA, checkpoints, resume, CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from tvt import config
from tvt.cli import main


def _cfg(overrides: list[str], *extra: str) -> config.Config:
    return config.load([], list(overrides) + list(extra))


def _stage_a(cfg: config.Config, modality: str, init: str, out: Path) -> Path:
    from tvt.engine.train_dino import train

    c = copy.deepcopy(cfg)
    c.sketch.modality, c.sketch.init, c.sketch.output_dir = modality, init, str(out)
    return train(c, resume=False, device="cpu", progress=False)


@pytest.fixture
def teachers(tiny_overrides, tmp_path) -> tuple[config.Config, Path, Path]:
    cfg = _cfg(tiny_overrides)
    img = _stage_a(cfg, "photo", "random", tmp_path / "image_vit")
    skt = _stage_a(cfg, "sketch", str(img), tmp_path / "sketch_vit")
    cfg.train.image_teacher, cfg.train.sketch_teacher = str(img), str(skt)
    return cfg, img, skt


def test_stage_a_checkpoint_and_ema(teachers):
    cfg, img, skt = teachers
    state = torch.load(skt, map_location="cpu", weights_only=True)
    assert state["stage"] == "sketch" and state["epoch"] == 2
    assert set(state["train_classes"]).isdisjoint(state["test_classes"])
    # the EMA teacher moved away from its start (the image ViT) but is not the student
    start = torch.load(img, map_location="cpu", weights_only=True)["teacher"]
    moved = [k for k in start if not torch.equal(start[k], state["teacher"][k])]
    assert moved, "the sketch teacher did not change during stage A"
    differs = [k for k in state["teacher"] if not torch.equal(state["teacher"][k], state["student"][k])]
    assert differs, "EMA teacher is identical to the student"


def test_ema_update_matches_formula(tiny_overrides):
    from tvt.engine import train_dino
    from tvt.losses.dino import DINOCenter

    cfg = _cfg(tiny_overrides, "sketch.init=random", "sketch.clip_grad=0")
    torch.manual_seed(0)
    teacher = train_dino.build_teacher(cfg)
    student = copy.deepcopy(teacher)
    teacher.requires_grad_(False)
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    crops = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32), torch.randn(4, 3, 16, 16)]
    sched = {"lr": [1e-2], "wd": [0.0], "m": [0.9], "tt": [0.04, 0.04]}
    center = DINOCenter(64, names=("center",))
    train_dino._step(student, student, teacher, center, opt, crops, sched, cfg.sketch, 1, 0, torch.device("cpu"))
    s1 = student.state_dict()
    for name, p in teacher.named_parameters():
        torch.testing.assert_close(p, 0.9 * t0[name] + 0.1 * s1[name])
    assert center.center("center").abs().sum() > 0


def test_stage_b_runs_logs_and_checkpoints(teachers):
    from tvt.engine.train_tvt import train

    cfg, _, _ = teachers
    path = train(cfg, resume=False, device="cpu", progress=False)
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["stage"] == "tvt" and state["epoch"] == 2
    assert state["train_classes"] == sorted(state["train_classes"]) and len(state["test_classes"]) == 2
    assert state["ca_loss"]["center_img"].shape == (4, 16)
    lines = [json.loads(x) for x in (Path(cfg.train.output_dir) / "log.jsonl").read_text().splitlines()]
    steps = [x for x in lines if x["type"] == "step"]
    for key in ("loss", "loss/kd", "loss/ce", "loss/uni", "loss/ca", "lr", "wd", "teacher_temp", "w_t", "img_per_s"):
        assert key in steps[-1], key
    assert steps[0]["lr"] == 0.0  # warm-up starts at 0 (inclusive linspace)
    assert all(torch.isfinite(torch.tensor(x["loss"])) for x in steps)
    assert (Path(cfg.train.output_dir) / "config.yaml").is_file()


def test_resume_equals_uninterrupted(teachers, tmp_path):
    from tvt.engine.train_tvt import train

    cfg, _, _ = teachers
    full = copy.deepcopy(cfg)
    full.train.output_dir = str(tmp_path / "full")
    a = torch.load(train(full, resume=False, device="cpu", progress=False), weights_only=True)
    part = copy.deepcopy(cfg)
    part.train.output_dir = str(tmp_path / "part")
    part.train.epochs = 2
    # interrupt after epoch 1 by training a 1-epoch run with the same schedule length, then resume
    import tvt.engine.train_tvt as tt

    from tvt.engine.common import JsonlLogger
    from tvt.engine.tvt_state import save

    run = tt.build_run(part, "cpu")
    log = JsonlLogger(Path(part.train.output_dir) / "log.jsonl")
    tt.run_epoch(run, 0, run.n_iter, log, progress=False)
    save(run, 1)
    del run
    b = torch.load(train(part, resume=True, device="cpu", progress=False), weights_only=True)
    assert b["epoch"] == a["epoch"] == 2
    for k in a["student"]:
        assert torch.equal(a["student"][k], b["student"][k]), k
    for k in a["ca_loss"]:
        assert torch.equal(a["ca_loss"][k], b["ca_loss"][k]), k


def test_optimizer_steps_reduce_loss(teachers):
    """A few optimizer steps lower the total loss on a fixed batch, measured with frozen centres."""
    import numpy as np

    import tvt.engine.train_tvt as tt
    from tvt.losses.objective import tvt_loss

    cfg, _, _ = teachers
    run = tt.build_run(cfg, "cpu")
    run.sched.lr = np.full_like(run.sched.lr, 2e-3)
    run.sched.w_t = np.full_like(run.sched.w_t, 2.0)
    run.sched.teacher_temp = np.full_like(run.sched.teacher_temp, 0.07)
    batch = next(iter(run.loader))
    tt.train_step(run, batch, epoch=1, it=0)  # centres get non-zero values
    frozen = (copy.deepcopy(run.dino_center.state_dict()), copy.deepcopy(run.ca.state_dict()))

    @torch.no_grad()
    def total() -> float:
        value = 0.0
        for x, y, m, teacher in ((batch[0][0], batch[1], "img", run.teacher_img), (batch[2][0], batch[3], "skt", run.teacher_skt)):
            run.dino_center.load_state_dict(frozen[0]), run.ca.load_state_dict(frozen[1])
            terms = tvt_loss(run.student(x, m), teacher(x), y, m, dino_center=run.dino_center, ca=run.ca,
                             teacher_temp=0.07, w_t=2.0)
            value += float(terms["loss"])
        run.dino_center.load_state_dict(frozen[0]), run.ca.load_state_dict(frozen[1])
        return value

    before = total()
    for _ in range(5):
        tt.train_step(run, batch, epoch=1, it=0)
    after = total()
    assert after < before, (before, after)


def test_cli_pretrain_train_eval(teachers, tmp_path, tiny_overrides):
    cfg, img, skt = teachers
    sets = [x for o in tiny_overrides for x in ("--set", o)]
    assert main(["pretrain-sketch", *sets, "--set", f"sketch.init={img}", "--set", "sketch.epochs=1",
                 "--set", f"sketch.output_dir={tmp_path / 'cli_a'}", "--device", "cpu", "--no-progress"]) == 0
    assert (tmp_path / "cli_a" / "checkpoint.pth").is_file()
    assert main(["train", *sets, "--set", f"train.image_teacher={img}", "--set", f"train.sketch_teacher={skt}",
                 "--set", "train.epochs=1", "--set", f"train.output_dir={tmp_path / 'cli_b'}", "--device", "cpu",
                 "--no-progress"]) == 0
    ckpt = tmp_path / "cli_b" / "checkpoint.pth"
    out = tmp_path / "cli_eval"
    assert main(["eval", *sets, "--checkpoint", str(ckpt), "--out", str(out), "--json", str(tmp_path / "m.json"),
                 "--device", "cpu", "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())["tvt"]
    for key in ("mAP@all", "mAP@200", "P@100", "P@200"):
        assert 0.0 <= metrics[key] <= 1.0
    for f in ("tvt_results.json", "tvt_per_class.csv", "tvt_retrievals.png", "tvt_per_class.png"):
        assert (out / f).is_file(), f
    assert main(["eval", *sets, "--checkpoint", str(ckpt), "--intra-modal", "--exclude-self", "--out", str(out),
                 "--device", "cpu", "--no-progress"]) == 0


def test_eval_refuses_training_classes(teachers, tmp_path, tiny_overrides):
    from tvt.engine.train_tvt import train

    cfg, _, _ = teachers
    c = copy.deepcopy(cfg)
    c.train.epochs = 1
    ckpt = train(c, resume=False, device="cpu", progress=False)
    state = torch.load(ckpt, weights_only=True)
    state["train_classes"] = state["train_classes"] + state["test_classes"][:1]
    bad = tmp_path / "leaky.pth"
    torch.save(state, bad)
    sets = [x for o in tiny_overrides for x in ("--set", o)]
    assert main(["eval", *sets, "--checkpoint", str(bad), "--device", "cpu", "--no-progress",
                 "--out", str(tmp_path / "e")]) == 2


def test_missing_teacher_is_an_error(tiny_overrides, tmp_path):
    sets = [x for o in tiny_overrides for x in ("--set", o)]
    assert main(["train", *sets, "--device", "cpu"]) == 2
    assert main(["train", *sets, "--set", f"train.image_teacher={tmp_path / 'nope.pth'}",
                 "--set", f"train.sketch_teacher={tmp_path / 'nope.pth'}", "--device", "cpu"]) == 2


def test_decoded_image_cache_gives_identical_training(teachers, tmp_path):
    """data.cache_dir only skips decoding: the trained weights are bit-identical, and the cache is filled."""
    from tvt.engine.train_tvt import train

    cfg, _, _ = teachers
    plain, cached = copy.deepcopy(cfg), copy.deepcopy(cfg)
    plain.train.output_dir, cached.train.output_dir = str(tmp_path / "plain"), str(tmp_path / "cached")
    cached.data.cache_dir = str(tmp_path / "cache")
    a = torch.load(train(plain, resume=False, device="cpu", progress=False), weights_only=True)
    b = torch.load(train(cached, resume=False, device="cpu", progress=False), weights_only=True)
    for k in a["student"]:
        assert torch.equal(a["student"][k], b["student"][k]), k
    assert any((tmp_path / "cache").rglob("*.npy"))


def test_stage_b_multicrop_runs_with_instance_alignment(teachers, tmp_path):
    """Two global + two local crops: the teacher sees the global crops, instance alignment is logged."""
    import tvt.engine.train_tvt as tt
    from tvt.engine.tvt_step import train_step
    from tvt.losses.objective import tvt_loss

    cfg, _, _ = teachers
    cfg = copy.deepcopy(cfg)
    cfg.train.output_dir = str(tmp_path / "mc")
    cfg.data.global_crops, cfg.data.local_crops, cfg.data.local_crops_size = 2, 2, 16
    run = tt.build_run(cfg, "cpu")
    run.loader.set_epoch(0)
    photos, y_img, sketches, y_skt = next(iter(run.loader))
    assert [c.shape[-1] for c in photos] == [32, 32, 16, 16]
    # Reference for the first photo sub-batch, computed before the step from the same state.
    b = photos[0].shape[0] // cfg.train.accum_steps
    x = [c[:b] for c in photos]
    center, ca = copy.deepcopy(run.dino_center), copy.deepcopy(run.ca)
    with torch.no_grad():
        t = [run.teacher_img(c) for c in x[:2]]
        outs = [run.bare_student(c, "img") for c in x]
        ref = tvt_loss(outs[0], t, y_img[:b], "img", dino_center=center, ca=ca,
                       teacher_temp=float(run.sched.teacher_temp[0]), w_t=float(run.sched.w_t[0]),
                       extra_crops=outs[1:])
    from tvt.engine import tvt_step

    seen = []
    original = tvt_step.tvt_loss

    def spy(*args, **kw):
        res = original(*args, **kw)
        seen.append(res)
        return res

    tvt_step.tvt_loss = spy
    try:
        sums = train_step(run, (photos, y_img, sketches, y_skt), 0, 0)
    finally:
        tvt_step.tvt_loss = original
    assert "loss/inst" in sums and sums["loss/inst"] > 0
    torch.testing.assert_close(seen[0]["loss"].detach(), ref["loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seen[0]["loss/inst"], ref["loss/inst"], rtol=1e-5, atol=1e-6)


def test_multicrop_with_virtual_ranks_is_refused(teachers):
    import tvt.engine.train_tvt as tt
    from tvt.errors import ConfigError

    cfg = copy.deepcopy(teachers[0])
    cfg.data.global_crops, cfg.train.virtual_world_size = 2, 2
    with pytest.raises(ConfigError, match="one crop per image"):
        tt.build_run(cfg, "cpu")
