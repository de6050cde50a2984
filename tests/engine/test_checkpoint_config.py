"""Atomic checkpoints, fallback to the previous one, RNG state round trip, config loading."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from tvt import config
from tvt.engine import checkpoint as ckpt
from tvt.errors import CheckpointError, ConfigError


def test_save_atomic_roundtrip_weights_only(tmp_path):
    obj = {"a": torch.arange(3), "cfg": {"x": [1, 2]}, "s": "text"}
    p = ckpt.save_atomic(obj, tmp_path / "c.pth")
    back = torch.load(p, weights_only=True)
    assert torch.equal(back["a"], obj["a"]) and back["cfg"] == obj["cfg"]
    assert not list(tmp_path.glob("*.tmp"))


def test_failed_save_keeps_previous(tmp_path, monkeypatch):
    p = ckpt.save_atomic({"v": torch.tensor(1)}, tmp_path / "checkpoint.pth")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        ckpt.save_atomic({"v": torch.tensor(2)}, p)
    monkeypatch.undo()
    assert int(torch.load(p, weights_only=True)["v"]) == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_load_latest_falls_back_on_corrupt(tmp_path, capsys):
    ckpt.save_atomic({"epoch": 1}, tmp_path / "checkpoint-0001.pth")
    ckpt.save_atomic({"epoch": 2}, tmp_path / "checkpoint-0002.pth")
    (tmp_path / "checkpoint.pth").write_bytes(b"garbage, truncated")
    state, path = ckpt.load_latest(tmp_path)
    assert state["epoch"] == 2 and path.name == "checkpoint-0002.pth"
    assert "corrupt" in capsys.readouterr().err
    assert ckpt.load_latest(tmp_path / "empty") is None
    with pytest.raises(CheckpointError):
        ckpt.load_file(tmp_path / "checkpoint.pth")


def test_rng_state_roundtrip(tmp_path):
    state = ckpt.rng_state()
    ckpt.save_atomic({"rng": state}, tmp_path / "r.pth")
    a = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(torch.load(tmp_path / "r.pth", weights_only=True)["rng"])
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_config_defaults_are_the_paper_values():
    c = config.Config()
    assert (c.train.batch_size, c.train.accum_steps, c.train.skt_factor, c.train.lr) == (256, 16, 2, 5e-4)
    assert c.train.align_uniform_weight == 2.0 and c.train.align_uniform_epochs == 20
    assert c.model.token_num == 2 and c.model.pos_resample == "fidelity"
    assert c.sketch.local_crops == 10 and c.sketch.accum_steps == 64 and c.sketch.lr == 1e-4


def test_config_yaml_overrides_and_errors(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 3\ndata:\n  global_crops_scale: [0.2, 1.0]\n")
    c = config.load([f], ["train.lr=0.001", "model.token_num=3"])
    assert c.train.epochs == 3 and c.train.lr == 0.001 and c.model.token_num == 3
    assert c.data.global_crops_scale == (0.2, 1.0)
    config.save(c, tmp_path / "resolved.yaml")
    assert config.load([tmp_path / "resolved.yaml"]).to_dict() == c.to_dict()
    assert config.from_dict(config.as_plain(c)).to_dict() == c.to_dict()
    for bad in (["train.epoch=3"], ["nosection.x=1"], ["train.epochs=abc"], ["train.epochs"]):
        with pytest.raises(ConfigError):
            config.load([], bad)
    (tmp_path / "bad.yaml").write_text("train:\n  unknown_key: 1\n")
    with pytest.raises(ConfigError, match="unknown_key"):
        config.load([tmp_path / "bad.yaml"])
    with pytest.raises(ConfigError, match="not found"):
        config.load([tmp_path / "missing.yaml"])


def test_shipped_configs_load():
    from importlib import resources
    from pathlib import Path

    import yaml

    config.merge(config.Config(), yaml.safe_load(resources.files("tvt").joinpath("configs/demo.yaml").read_text()), "demo")
    for f in sorted((Path(__file__).parents[2] / "configs").glob("*.yaml")):
        config.load([f])


def test_save_latest_rotates_and_survives_a_crash_between_renames(tmp_path, monkeypatch):
    import os

    ckpt.save_latest({"v": 1}, tmp_path)
    assert not (tmp_path / ckpt.PREVIOUS).exists()
    ckpt.save_latest({"v": 2}, tmp_path)
    assert ckpt.load_file(tmp_path / ckpt.LATEST)["v"] == 2 and ckpt.load_file(tmp_path / ckpt.PREVIOUS)["v"] == 1
    real, calls = os.replace, [0]

    def replace(src, dst):
        calls[0] += 1
        if calls[0] == 2:  # latest already moved to prev, new file not yet renamed: the process dies
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_latest({"v": 3}, tmp_path)
    monkeypatch.undo()
    state, path = ckpt.load_latest(tmp_path)
    assert state["v"] == 2 and path.name == ckpt.PREVIOUS


def test_fallback_order_is_newest_first(tmp_path, capsys):
    import os

    ckpt.save_atomic({"epoch": 1}, tmp_path / "checkpoint-0001.pth")
    ckpt.save_atomic({"epoch": 2, "step": 3}, tmp_path / ckpt.PREVIOUS)
    ckpt.save_atomic({"epoch": 2}, tmp_path / "checkpoint-0002.pth")
    for name, t in (("checkpoint-0001.pth", 1_000), (ckpt.PREVIOUS, 3_000), ("checkpoint-0002.pth", 2_000)):
        os.utime(tmp_path / name, (t, t))
    (tmp_path / ckpt.LATEST).write_bytes(b"\x00" * 10)
    assert [p.name for p in ckpt.candidates(tmp_path)] == [ckpt.LATEST, ckpt.PREVIOUS, "checkpoint-0002.pth",
                                                           "checkpoint-0001.pth"]
    state, path = ckpt.load_latest(tmp_path)
    assert path.name == ckpt.PREVIOUS and state["step"] == 3
    assert "checkpoint.pth is corrupt" in capsys.readouterr().err
    for p in tmp_path.glob("*.pth"):
        p.write_bytes(b"bad")
    with pytest.raises(CheckpointError, match="every checkpoint"):
        ckpt.load_latest(tmp_path)


def test_disk_full_error_is_both_checkpoint_and_os_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(ckpt.DiskFullError) as info:
        ckpt.save_latest({"v": 1}, tmp_path)
    assert isinstance(info.value, OSError) and isinstance(info.value, CheckpointError) and info.value.errno == 28
    assert "checkpoint.pth" in str(info.value) and not list(tmp_path.iterdir())


def test_new_config_keys_defaults():
    c = config.Config()
    assert c.train.virtual_world_size == 1 and c.train.checkpoint_every_steps == 0
    assert c.sketch.checkpoint_every_steps == 0 and c.data.per_sample_seed is True
    with pytest.raises(ConfigError):
        config.load([], ["train.virtual_world_size=two"])


def test_checksum_stored_verified_and_optional(tmp_path):
    obj = {"w": torch.arange(64, dtype=torch.float32), "h": torch.ones(3, dtype=torch.bfloat16), "s": 0,
           "nested": {"b": torch.zeros(2, dtype=torch.bool), "name": "x"}}
    path = ckpt.save_atomic(obj, tmp_path / "c.pth")
    stored = torch.load(path, weights_only=True)
    assert stored["checksum"] == ckpt.checksum(obj) and ckpt.load_file(path)["s"] == 0
    stored["nested"]["name"] = "y"  # any content change, not only tensor bytes, changes the checksum
    torch.save(stored, tmp_path / "edited.pth")
    with pytest.raises(CheckpointError, match="checksum"):
        ckpt.load_file(tmp_path / "edited.pth")
    torch.save(obj, tmp_path / "old.pth")  # files written before checksums existed still load
    assert ckpt.load_file(tmp_path / "old.pth")["s"] == 0
