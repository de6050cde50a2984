"""Fault tolerance: SIGTERM/SIGINT, kill -9, corrupt checkpoints, full disk; resume is bit-exact."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tvt import config
from tvt.cli import main
from tvt.engine import checkpoint as ckpt


def _overrides(root: Path, out: Path) -> list[str]:
    """A 1-block, 32-wide model on 32 px images: 2 epochs x 3 stage-B steps, 2 x 2 stage-A steps."""
    return [
        f"data.root={root}", "data.dataset=synth", "data.split=zeroshot", "data.img_size=32", "data.num_workers=0",
        "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.out_dim=64", "model.head_hidden_dim=32",
        "model.head_bottleneck_dim=16",
        "sketch.init=random", "sketch.modality=photo", "sketch.epochs=2", "sketch.batch_size=8",
        "sketch.accum_steps=2", "sketch.local_crops=2", "sketch.local_crops_size=16", "sketch.warmup_epochs=1",
        "sketch.selection=last", "sketch.max_steps_per_epoch=2", "sketch.warmup_teacher_temp_epochs=1",
        f"sketch.output_dir={out / 'stage_a'}",
        "train.epochs=2", "train.batch_size=8", "train.accum_steps=2", "train.skt_factor=2", "train.warmup_epochs=0",
        "train.lr=0.01", "train.max_steps_per_epoch=3", "train.align_uniform_epochs=1",
        "train.warmup_teacher_temp_epochs=1", "train.log_every=1", "train.save_every=0",
        f"train.output_dir={out / 'tvt'}",
    ]


def _random_teacher(overrides: list[str], path: Path, seed: int) -> Path:
    from tvt.engine.train_dino import build_teacher

    torch.manual_seed(seed)
    teacher = build_teacher(config.load([], overrides))
    torch.save({"format": "tvt", "version": 1, "stage": "image", "teacher": teacher.state_dict(),
                "arch": {"num_heads": 2}}, path)
    return path


@pytest.fixture(scope="module")
def ref(synth_root, tmp_path_factory) -> tuple[list[str], Path, Path]:
    """(overrides, uninterrupted stage-B run dir, uninterrupted stage-A run dir)."""
    from tvt.engine import train_dino, train_tvt

    tmp = tmp_path_factory.mktemp("faults_ref")
    base = _overrides(synth_root, tmp)
    base += [f"train.image_teacher={_random_teacher(base, tmp / 'img.pth', 0)}",
             f"train.sketch_teacher={_random_teacher(base, tmp / 'skt.pth', 1)}"]
    train_tvt.train(config.load([], base), resume=False, device="cpu", progress=False)
    train_dino.train(config.load([], base), resume=False, device="cpu", progress=False)
    return base, tmp / "tvt", tmp / "stage_a"


def _at(overrides: list[str], out: Path) -> list[str]:
    return overrides + [f"train.output_dir={out / 'tvt'}", f"sketch.output_dir={out / 'stage_a'}"]


def _assert_same_run(a_dir: Path, b_dir: Path, groups: tuple[str, ...]) -> None:
    a, b = ckpt.load_file(a_dir / "checkpoint.pth"), ckpt.load_file(b_dir / "checkpoint.pth")
    assert (a["epoch"], a.get("step", 0)) == (b["epoch"], b.get("step", 0))
    for group in groups:
        assert a[group].keys() == b[group].keys()
        for k in a[group]:
            assert torch.equal(a[group][k], b[group][k]), f"{group}.{k}"
    for state in a["optimizer"]["state"]:
        for k, v in a["optimizer"]["state"][state].items():
            assert torch.equal(v, b["optimizer"]["state"][state][k]), f"optimizer {state}.{k}"


def _epoch_lines(run_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in x.items() if k != "img_per_s"} for x in lines if x["type"] == "epoch"]


def _signal_after(monkeypatch, module, name: str, call: int, signum: int) -> None:
    """Make ``module.name`` deliver ``signum`` to this process after its ``call``-th call."""
    real, count = getattr(module, name), [0]

    def wrapped(*args, **kwargs):
        out = real(*args, **kwargs)
        count[0] += 1
        if count[0] == call:
            os.kill(os.getpid(), signum)
        return out

    monkeypatch.setattr(module, name, wrapped)


def test_sigterm_mid_epoch_saves_and_resume_is_bit_exact(ref, tmp_path, monkeypatch, capsys):
    import tvt.engine.train_tvt as tt

    base, ref_dir, _ = ref
    sets = [x for o in _at(base, tmp_path) for x in ("--set", o)]
    before = signal.getsignal(signal.SIGTERM)
    _signal_after(monkeypatch, tt.TVTTask, "step", 2, signal.SIGTERM)
    # 130: the CLI's KeyboardInterrupt status; 143 = 128 + SIGTERM once the CLI uses exc.exit_code
    assert main(["train", *sets, "--device", "cpu", "--no-progress"]) in (130, 143)
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored
    err = capsys.readouterr().err
    assert "SIGTERM" in err and "interrupted" in err
    state = ckpt.load_file(tmp_path / "tvt" / "checkpoint.pth")
    assert (state["epoch"], state["step"]) == (0, 2)  # the step in flight finished, then the save
    monkeypatch.undo()
    assert main(["train", *sets, "--device", "cpu", "--no-progress"]) == 0
    assert "resuming from" in capsys.readouterr().err
    _assert_same_run(ref_dir, tmp_path / "tvt", ("student", "ca_loss", "dino_loss"))
    assert _epoch_lines(ref_dir) == _epoch_lines(tmp_path / "tvt")


def test_training_interrupted_exception(ref, tmp_path, monkeypatch):
    import tvt.engine.train_tvt as tt
    from tvt.engine.faults import TrainingInterrupted

    base, _, _ = ref
    _signal_after(monkeypatch, tt.TVTTask, "step", 3, signal.SIGINT)  # last step of epoch 0
    with pytest.raises(TrainingInterrupted) as info:
        tt.train(config.load([], _at(base, tmp_path)), resume=False, device="cpu", progress=False)
    assert info.value.exit_code == 130 and (info.value.epoch, info.value.step) == (1, 0)
    assert info.value.checkpoint == tmp_path / "tvt" / "checkpoint.pth"
    assert ckpt.load_file(info.value.checkpoint)["epoch"] == 1  # the ordinary end-of-epoch checkpoint


KILL_JOB = textwrap.dedent('''
    import os, signal, sys
    import torch
    torch.set_num_threads(2)
    from tvt import config
    import tvt.engine.train_tvt as tt
    real, calls = tt.TVTTask.step, [0]
    def step(*a, **k):
        calls[0] += 1
        if calls[0] == 5:  # epoch 1, step 1: never finishes
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    tt.TVTTask.step = step
    tt.train(config.load([], sys.argv[1:]), resume=False, device="cpu", progress=False)
''')


def test_kill9_loses_at_most_the_step_interval(ref, tmp_path):
    base, ref_dir, _ = ref
    over = _at(base, tmp_path) + ["train.checkpoint_every_steps=1"]
    (tmp_path / "job.py").write_text(KILL_JOB)
    env = dict(os.environ, OMP_NUM_THREADS="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(tmp_path / "job.py"), *over], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    state = ckpt.load_file(tmp_path / "tvt" / "checkpoint.pth")
    assert (state["epoch"], state["step"]) == (1, 1)  # only the step in flight was lost
    assert ckpt.load_file(tmp_path / "tvt" / ckpt.PREVIOUS)["epoch"] == 1  # the one before it survives
    from tvt.engine.train_tvt import train

    train(config.load([], over), resume=True, device="cpu", progress=False)
    _assert_same_run(ref_dir, tmp_path / "tvt", ("student", "ca_loss", "dino_loss"))


def test_truncated_latest_falls_back_to_previous(ref, tmp_path, capsys):
    from tvt.engine.train_tvt import train

    base, ref_dir, _ = ref
    run = tmp_path / "tvt"
    shutil.copytree(ref_dir, run)
    data = (run / "checkpoint.pth").read_bytes()
    (run / "checkpoint.pth").write_bytes(data[: len(data) // 2])  # a torn copy
    assert ckpt.load_file(run / ckpt.PREVIOUS)["epoch"] == 1
    train(config.load([], _at(base, tmp_path)), resume=True, device="cpu", progress=False)
    err = capsys.readouterr().err
    assert f"checkpoint {run / 'checkpoint.pth'} is corrupt or truncated" in err and "checkpoint-prev.pth" in err
    _assert_same_run(ref_dir, run, ("student", "ca_loss", "dino_loss"))  # epoch 2 redone from epoch 1


def test_disk_full_keeps_last_good_checkpoint(ref, tmp_path, monkeypatch, capsys):
    base, ref_dir, _ = ref
    sets = [x for o in _at(base, tmp_path) for x in ("--set", o)]
    real_save, calls = torch.save, [0]

    def save(obj, f, *a, **k):
        calls[0] += 1
        if calls[0] == 2:  # the end-of-epoch-2 checkpoint
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    assert main(["train", *sets, "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "checkpoint.pth" in err and "intact" in err
    monkeypatch.undo()
    run = tmp_path / "tvt"
    assert ckpt.load_file(run / "checkpoint.pth")["epoch"] == 1 and not list(run.glob("*.tmp"))
    assert main(["train", *sets, "--device", "cpu", "--no-progress"]) == 0
    _assert_same_run(ref_dir, run, ("student", "ca_loss", "dino_loss"))


def test_stage_a_sigterm_resume_is_bit_exact(ref, tmp_path, monkeypatch):
    import tvt.engine.train_dino as td
    from tvt.engine.faults import TrainingInterrupted

    base, _, ref_a = ref
    cfg = config.load([], _at(base, tmp_path))
    _signal_after(monkeypatch, td.SketchTask, "step", 1, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as info:
        td.train(cfg, resume=False, device="cpu", progress=False)
    assert (info.value.epoch, info.value.step, info.value.exit_code) == (0, 1, 143)
    monkeypatch.undo()
    td.train(cfg, resume=True, device="cpu", progress=False)  # drop-path draws from the restored RNG
    _assert_same_run(ref_a, tmp_path / "stage_a", ("student", "teacher", "dino_loss"))
    assert _epoch_lines(ref_a) == _epoch_lines(tmp_path / "stage_a")


def test_second_signal_stops_at_once():
    from tvt.engine.faults import StopOnSignal

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with StopOnSignal() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.signum == signal.SIGINT and stop.agreed(torch.device("cpu")) == signal.SIGINT
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_seeded_dataset_and_resumable_sampler():
    """Per-sample seeding: an item's augmentation depends on (seed, epoch, index) only and leaves
    the caller's RNG alone; a sampler started at k*B yields the tail of the full order."""
    from torch.utils.data import Dataset

    from tvt.engine.sampling import ResumableSampler, SeededDataset

    class Noisy(Dataset):
        def __len__(self) -> int:
            return 10

        def __getitem__(self, i: int):
            import random

            return torch.rand(2), random.random(), i

    ds = SeededDataset(Noisy(), seed=3, stream=1)
    ds.set_epoch(2)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = [ds[i] for i in (4, 1, 4)]
    assert torch.equal(torch.get_rng_state(), state)  # caller's stream untouched
    assert torch.equal(a[0][0], a[2][0]) and a[0][1] == a[2][1] and not torch.equal(a[0][0], a[1][0])
    ds.set_epoch(3)
    assert not torch.equal(ds[4][0], a[0][0])  # new epoch, new crops

    full = ResumableSampler(ds, num_replicas=2, rank=1, seed=5)
    full.set_epoch(7)
    part = ResumableSampler(ds, num_replicas=2, rank=1, seed=5)
    part.set_epoch(7)
    part.start = 2
    assert list(part) == list(full)[2:] and len(part) == len(full) - 2
    part.set_epoch(8)
    assert part.start == 0


def _flip_tensor_byte(path: Path, tensor: torch.Tensor) -> None:
    """Change one byte inside the stored data of ``tensor`` (found by its bytes in the file)."""
    data = bytearray(path.read_bytes())
    raw = tensor.contiguous().numpy().tobytes()
    at = data.find(raw)
    assert at >= 0 and data.find(raw, at + 1) < 0
    data[at + len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_changed_byte_in_tensor_data_is_caught_and_resume_falls_back(ref, tmp_path, capsys):
    """A flipped bit inside checkpoint tensor data still unpickles; the stored checksum catches it,
    and resume falls back to the previous checkpoint as for a truncated file."""
    from tvt.engine.train_tvt import train

    base, ref_dir, _ = ref
    run = tmp_path / "tvt"
    shutil.copytree(ref_dir, run)
    state = ckpt.load_file(run / "checkpoint.pth")
    weight = max(state["student"].values(), key=lambda t: t.numel())
    _flip_tensor_byte(run / "checkpoint.pth", weight)
    torch.load(run / "checkpoint.pth", map_location="cpu", weights_only=True)  # loads: torch cannot tell
    with pytest.raises(ckpt.CheckpointError, match="checksum"):
        ckpt.load_file(run / "checkpoint.pth")
    train(config.load([], _at(base, tmp_path)), resume=True, device="cpu", progress=False)
    err = capsys.readouterr().err
    assert f"checkpoint {run / 'checkpoint.pth'} is corrupt" in err and "checkpoint-prev.pth" in err
    _assert_same_run(ref_dir, run, ("student", "ca_loss", "dino_loss"))  # epoch 2 redone from epoch 1


@pytest.mark.parametrize("stage", ["pretrain-sketch", "train"])
def test_checkpoint_of_another_width_names_file_and_difference(ref, tmp_path, capsys, stage):
    base, ref_b, ref_a = ref
    shutil.copytree(ref_a, tmp_path / "stage_a")
    shutil.copytree(ref_b, tmp_path / "tvt")
    wide = [o for o in base if not o.startswith("model.embed_dim")] + ["model.embed_dim=48"]
    wide += [f"train.image_teacher={_random_teacher(wide, tmp_path / 'img48.pth', 0)}",
             f"train.sketch_teacher={_random_teacher(wide, tmp_path / 'skt48.pth', 1)}"]
    sets = [x for o in _at(wide, tmp_path) for x in ("--set", o)]
    assert main([stage, *sets, "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    folder = "stage_a" if stage == "pretrain-sketch" else "tvt"
    assert str(tmp_path / folder / "checkpoint.pth") in err and "does not fit this run" in err
    assert "differ in size" in err and "--no-resume" in err
    assert re.search(r"\([^)]*\b32\b[^)]*\) there, \([^)]*\b48\b[^)]*\) here", err), err
    assert "Traceback" not in err and "size mismatch" not in err


@pytest.mark.parametrize("stage, folder", [("pretrain-sketch", "stage_a"), ("train", "tvt")])
def test_second_run_of_a_finished_stage_says_already_complete(ref, tmp_path, capsys, stage, folder):
    base, ref_b, ref_a = ref
    shutil.copytree(ref_a if folder == "stage_a" else ref_b, tmp_path / folder)
    before = (tmp_path / folder / "checkpoint.pth").read_bytes()
    sets = [x for o in _at(base, tmp_path) for x in ("--set", o)]
    assert main([stage, *sets, "--device", "cpu", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "already complete (2 of 2 epochs" in captured.err and "resuming" not in captured.err
    assert "checkpoint.pth" in captured.out
    assert (tmp_path / folder / "checkpoint.pth").read_bytes() == before


def test_pretrain_sketch_help_documents_no_resume(capsys):
    assert main(["pretrain-sketch", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--no-resume start over even if checkpoints exist" in out and "--no-progress no progress bar" in out


def test_stage_a_refuses_a_checkpoint_of_another_stage(ref, tmp_path, capsys):
    """Stage A validates what it resumes from, as stage B does: an image-ViT run folder is not a
    sketch-ViT run folder."""
    base, _, ref_a = ref
    shutil.copytree(ref_a, tmp_path / "stage_a")  # written with sketch.modality=photo (stage "image")
    sets = [x for o in _at(base, tmp_path) + ["sketch.modality=sketch"] for x in ("--set", o)]
    assert main(["pretrain-sketch", *sets, "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "stage_a" / "checkpoint.pth") in err and "belongs to another run" in err
