"""Non-finite weights are refused at load time, naming the file and the tensor (every format)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tvt.errors import CheckpointError
from tvt.models.encoder import load_encoder
from tvt.models.weights import load_backbone, load_student, load_teacher


def _poison(state: dict, key: str, value: float) -> dict:
    state = {k: v.clone() for k, v in state.items()}
    state[key].view(-1)[1] = value
    return state


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_dino_backbone_file(tools, teacher, tmp_path, value):
    path = tools.save(_poison(teacher.backbone.state_dict(), "blocks.1.attn.qkv.weight", value), tmp_path / "b.pth")
    for load in (load_backbone, load_encoder):
        with pytest.raises(CheckpointError, match=r"b\.pth.*'blocks\.1\.attn\.qkv\.weight'.*non-finite"):
            load(path)


def test_teacher_student_and_safetensors(tools, teacher, student, tmp_path):
    bad_teacher = _poison(teacher.state_dict(), "head.last_layer.weight_v", float("nan"))
    path = tools.save({"teacher": bad_teacher}, tmp_path / "full.pth")
    with pytest.raises(CheckpointError, match="head.last_layer.weight_v"):
        load_teacher(path)
    bad_student = _poison(student.state_dict(), "backbone.fusion_token", float("inf"))
    path = tools.save({"student": tools.module_prefixed(bad_student)}, tmp_path / "tvt.pth")
    with pytest.raises(CheckpointError, match=r"tvt\.pth.*fusion_token"):
        load_student(path)
    with pytest.raises(CheckpointError, match="fusion_token"):
        load_encoder(path)
    save_file({k: v.contiguous() for k, v in bad_student.items()}, str(tmp_path / "s.safetensors"))
    with pytest.raises(CheckpointError, match=r"s\.safetensors.*fusion_token"):
        load_encoder(tmp_path / "s.safetensors")


def test_finite_files_still_load(tools, teacher, tmp_path):
    path = tools.save(teacher.backbone.state_dict(), tmp_path / "ok.pth")
    x = tools.images(2)
    assert torch.equal(load_backbone(path)(x), teacher.backbone(x))
