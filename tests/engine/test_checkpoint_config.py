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
