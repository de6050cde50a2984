"""Each training step against an independent, hand-written computation of the authors' code.

Stage A: ``sketch_dino.train_one_epoch`` with its DINOLoss (τ_s = the per-GPU batch [Q41]),
uneven sub-batches, per-sub-batch clipping [Q37] and the EMA teacher. Stage B: the official
multi-crop behaviour (teachers on all crops, centre from all crops, one uniformity term over all
rows, [Q7]), drop-path when dropout is not disabled, and the loss divisor G' + G'/s [Q13].
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from tvt import config


def _official_dino(student_crops, teacher_crops, center, t_temp: float, s_temp: float) -> torch.Tensor:
    """DINOLoss.forward of the official stage A, written out: every teacher crop against every
    other student crop, student logits divided by ``s_temp``."""
    total, n = 0.0, 0
    for iq, t in enumerate(teacher_crops):
        q = torch.softmax((t - center) / t_temp, dim=-1)
        for v, s in enumerate(student_crops):
            if v == iq:
                continue
            total = total + torch.sum(-q * torch.log_softmax(s / s_temp, dim=-1), dim=-1).mean()
            n += 1
    return total / n


def _clip_official(model: torch.nn.Module, clip: float) -> None:
    """utils.clip_gradients: each parameter's gradient scaled by clip / (norm + 1e-6) when below 1."""
    for p in model.parameters():
        if p.grad is not None:
            coef = clip / (p.grad.norm(2) + 1e-6)
            if coef < 1:
                p.grad.mul_(coef)


def _stage_a_task(tiny_overrides, *extra: str):
    from tvt.engine import train_dino

    over = tiny_overrides + ["sketch.init=random", "sketch.modality=photo", "sketch.batch_size=7",
                             "sketch.accum_steps=2", "sketch.drop_path_rate=0", "sketch.clip_grad=0.05",
                             "sketch.warmup_epochs=0", "sketch.lr=0.05", *extra]
    return train_dino.build(config.load([], over), "cpu")


@pytest.mark.parametrize("option, expected_temp", [("batch", 7.0), ("0.1", 0.1)])
def test_stage_a_step_equals_official_computation(tiny_overrides, option, expected_temp):
    """One public stage-A step = the official sub-batch loop, written out independently.

    The optimizer is swapped for plain SGD over the same groups so the parameter change is linear
    in the gradient (AdamW's normalisation would hide a wrong gradient scale such as τ_s).
    """
    from tvt.engine.common import param_groups

    task = _stage_a_task(tiny_overrides, f"sketch.student_temp={option}")
    assert task.student_temp == expected_temp
    task.optimizer = torch.optim.SGD(param_groups(task.student, None), lr=0.0)
    crops, _ = next(iter(task.batches(0, 0)))
    assert crops[0].shape[0] == 7 and len(crops) == 4  # 2 global + 2 local crops
    student, teacher = copy.deepcopy(task.student), copy.deepcopy(task.teacher)
    center = task.center.center("center").clone()
    lr, wd, m, t_temp = float(task.lr[0]), float(task.wd[0]), float(task.momentum[0]), float(task.teacher_temp[0])

    # official: B=7, G=2 -> b=3, G' = 2 + ceil(1/3) = 3 sub-batches [0:3], [3:6], [6:7]; loss / G'
    total = 0.0
    for sl in (slice(0, 3), slice(3, 6), slice(6, 7)):
        sub = [c[sl] for c in crops]
        with torch.no_grad():
            t_out = [teacher(x) for x in sub[:2]]
        loss = _official_dino([student(x) for x in sub], t_out, center, t_temp, expected_temp) / 3
        loss.backward()
        total += float(loss.detach())
        _clip_official(student, 0.05)
        for name, p in student.named_parameters():  # freeze_last_layer = 1, epoch 0
            if "last_layer" in name:
                p.grad = None
        center = 0.9 * center + 0.1 * torch.cat(t_out).mean(0, keepdim=True)
    expected = {}
    with torch.no_grad():
        for name, p in student.named_parameters():
            if p.grad is None or not p.requires_grad:
                expected[name] = p.clone()
                continue
            decay = 0.0 if (name.endswith(".bias") or p.ndim == 1) else wd
            expected[name] = p - lr * (p.grad + decay * p)

    terms = task.step((crops, torch.zeros(7)), epoch=0, it=0)
    assert terms["loss"] == pytest.approx(total, rel=1e-5)
    torch.testing.assert_close(task.center.center("center"), center, rtol=1e-5, atol=1e-7)
    moved = 0
    for name, p in task.student.named_parameters():
        torch.testing.assert_close(p, expected[name], rtol=1e-5, atol=1e-7, msg=name)
        moved += not torch.equal(p, dict(teacher.named_parameters())[name])
    assert moved > 0
    for name, p in task.teacher.named_parameters():  # EMA with this step's momentum
        ref = m * dict(teacher.named_parameters())[name] + (1 - m) * expected[name]
        torch.testing.assert_close(p, ref, rtol=1e-5, atol=1e-7, msg=name)


def test_stage_a_student_temperature_is_logged(tiny_overrides, tmp_path, capsys):
    import json
    from pathlib import Path

    from tvt.engine import train_dino

    cfg = config.load([], tiny_overrides + ["sketch.init=random", "sketch.modality=photo", "sketch.epochs=1",
                                            "sketch.log_every=1"])
    train_dino.train(cfg, resume=False, device="cpu", progress=False)
    assert "student temperature 8 (the per-process batch, official [Q41])" in capsys.readouterr().err
    steps = [json.loads(x) for x in (Path(cfg.sketch.output_dir) / "log.jsonl").read_text().splitlines()
             if json.loads(x)["type"] == "step"]
    assert steps and all(s["student_temp"] == 8 for s in steps)


# ---- stage B -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def teacher_files(synth_root, tmp_path_factory):
    from tvt.engine.train_dino import build_teacher

    tmp = tmp_path_factory.mktemp("fid_teachers")
    paths = []
    for seed, name in ((0, "img.pth"), (1, "skt.pth")):
        cfg = config.load([], ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.out_dim=64",
                               "model.head_hidden_dim=32", "model.head_bottleneck_dim=16", "data.img_size=32",
                               "sketch.init=random"])
        torch.manual_seed(seed)
        torch.save({"format": "tvt", "version": 1, "stage": "image", "teacher": build_teacher(cfg).state_dict(),
                    "arch": {"num_heads": 2}}, tmp / name)
        paths.append(tmp / name)
    return paths


def _stage_b_task(tiny_overrides, teacher_files, *extra: str):
    from tvt.engine import train_tvt

    over = tiny_overrides + ["model.depth=2", f"train.image_teacher={teacher_files[0]}",
                             f"train.sketch_teacher={teacher_files[1]}", "train.warmup_epochs=0", *extra]
    return train_tvt.build(config.load([], over), "cpu")


def test_stage_b_teachers_see_all_crops_and_centre_moves_from_all(tiny_overrides, teacher_files):
    """Official: with local crops the teacher runs on every crop and the DINO centre is updated
    from all of them, once per sub-batch; ``train.teacher_crops=global`` is DINO's reading."""
    for option, n_teacher in (("all", 3), ("global", 1)):
        task = _stage_b_task(tiny_overrides, teacher_files, "data.local_crops=2", "data.local_crops_size=16",
                             f"train.teacher_crops={option}")
        batch = next(iter(task.batches(0, 0)))
        photos = batch[0]
        assert len(photos) == 3 and photos[0].shape[0] == 8
        with torch.no_grad():  # two photo sub-batches of 4 rows
            means = [torch.cat([task.teacher_img(c[sl]) for c in photos[:n_teacher]]).mean(0, keepdim=True)
                     for sl in (slice(0, 4), slice(4, 8))]
        terms = task.step(batch, epoch=0, it=0)
        torch.testing.assert_close(task.dino_center.center("img"), 0.9 * 0.1 * means[0] + 0.1 * means[1],
                                   rtol=1e-5, atol=1e-7)
        assert "loss/inst" not in terms  # one global crop: no instance alignment [Q7]


def _outputs(n_crops: int, n: int = 4, k: int = 8, c: int = 4, d: int = 5, seed: int = 0):
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(seed)
    return SimpleNamespace(dino_logits=torch.randn(n_crops * n, k, generator=g),
                           cls_logits=torch.randn(n_crops * n, c, generator=g),
                           f=F.normalize(torch.randn(n_crops * n, d, generator=g), dim=1))


def test_objective_uniformity_is_one_term_over_all_crops():
    from tvt.losses.dino import DINOCenter
    from tvt.losses.hypersphere import CenterAlignment
    from tvt.losses.objective import tvt_loss

    out, y = _outputs(3), torch.tensor([0, 1, 2, 3])
    terms = tvt_loss(out, torch.randn(12, 8), y, "img", dino_center=DINOCenter(8), ca=CenterAlignment(4, 5),
                     teacher_temp=0.05, w_t=1.0, n_crops=3)
    f = out.f
    pairs = [math.exp(-2 * float((f[i] - f[j]).pow(2).sum())) for i in range(12) for j in range(i + 1, 12)]
    assert float(terms["loss/uni"]) == pytest.approx(math.log(sum(pairs) / len(pairs)), rel=1e-5)


def test_objective_q7_two_global_crops_force_alignment_terms():
    """[Q7]: with 2 global crops, IA (weight 1) and UNI + CA are added even with use_align_uniform off;
    with 1 global crop and local crops there is no IA and the flag is honoured."""
    from tvt.losses.dino import DINOCenter
    from tvt.losses.hypersphere import CenterAlignment
    from tvt.losses.objective import tvt_loss

    y = torch.tensor([0, 1, 2, 3])
    kw = dict(teacher_temp=0.05, w_t=1.0, align_weight=2.0, use_align_uniform=False)
    out = _outputs(2)
    two = tvt_loss(out, torch.randn(8, 8), y, "img", dino_center=DINOCenter(8), ca=CenterAlignment(4, 5),
                   n_crops=2, global_crops=2, **kw)
    ia = ((out.f[:4] - out.f[4:]).norm(dim=1) ** 2).mean()
    assert float(two["loss/inst"]) == pytest.approx(float(ia), rel=1e-5)
    assert float(two["loss/uni"]) != 0 and float(two["loss/ca"]) != 0
    total = two["loss/kd"] + two["loss/ce"] + 0.25 * two["loss/uni"] + two["loss/ca"] + two["loss/inst"]
    torch.testing.assert_close(two["objective"].detach(), total)
    local = tvt_loss(_outputs(3), torch.randn(12, 8), y, "img", dino_center=DINOCenter(8), ca=CenterAlignment(4, 5),
                     n_crops=3, global_crops=1, **kw)
    assert "loss/inst" not in local and float(local["loss/uni"]) == 0 and float(local["loss/ca"]) == 0


def test_stage_b_drop_path_when_dropout_is_not_disabled(tiny_overrides, teacher_files):
    """Official: the student is built with drop_path_rate 0.1 and runs in train mode unless
    --disable_dropout; the README's disable_dropout=1 keeps it in eval mode [Q19]."""
    on = _stage_b_task(tiny_overrides, teacher_files, "train.disable_dropout=false")
    assert on.student.training
    blocks = on.student.backbone.blocks
    assert isinstance(blocks[0].drop_path1, torch.nn.Identity)
    assert blocks[1].drop_path1.drop_prob == pytest.approx(0.1) and blocks[1].drop_path2.drop_prob == pytest.approx(0.1)
    off = _stage_b_task(tiny_overrides, teacher_files)
    assert not off.student.training


def test_stage_b_divisor_for_uneven_batches(tiny_overrides, teacher_files, monkeypatch):
    """B=8, G=3, s=2: b=2, G' = 3 + ceil(2/2) = 4 photo sub-batches, sketch after the 2nd and 4th;
    every sub-loss is divided by G' + G'/s = 6. With G = 4, s = 3 the official divisor 4 + 4/3 is not
    the number of sub-steps run (5), which is what this implementation divided by before."""
    from tvt.engine import train_tvt

    seen: list[tuple[str, float]] = []
    real = train_tvt.tvt_loss

    def spy(out, t, y, modality, **kw):
        terms = real(out, t, y, modality, **kw)
        seen.append((modality, float(terms["loss"])))
        return terms

    monkeypatch.setattr(train_tvt, "tvt_loss", spy)
    task = _stage_b_task(tiny_overrides, teacher_files, "train.accum_steps=3")
    terms = task.step(next(iter(task.batches(0, 0))), epoch=0, it=0)
    assert [m for m, _ in seen] == ["img", "img", "skt", "img", "img", "skt"]
    assert terms["loss"] == pytest.approx(sum(v for _, v in seen) / 6, rel=1e-6)
    seen.clear()
    task = _stage_b_task(tiny_overrides, teacher_files, "train.accum_steps=4", "train.skt_factor=3")
    terms = task.step(next(iter(task.batches(0, 0))), epoch=0, it=0)  # G % s != 0 runs, as the official loop
    assert [m for m, _ in seen] == ["img", "img", "img", "skt", "img"]
    assert terms["loss"] == pytest.approx(sum(v for _, v in seen) / (4 + 4 / 3), rel=1e-6)


def test_stage_a_fp16_needs_per_step_clipping(tiny_overrides):
    """[Q37]: GradScaler cannot unscale once per sub-batch (the official code fails the same way)."""
    from tvt.distributed import DistInfo
    from tvt.engine.train_dino import check_config
    from tvt.errors import ConfigError

    cfg = config.load([], tiny_overrides)
    assert cfg.sketch.precision == "fp32"  # official stage A: use_fp16 false
    with pytest.raises(ConfigError, match="fp16 needs sketch.clip_mode per_step"):
        check_config(cfg, DistInfo(), "fp16")
    check_config(config.load([], tiny_overrides + ["sketch.clip_mode=per_step"]), DistInfo(), "fp16")
