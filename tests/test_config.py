"""Config validation at load time: choice fields, numeric ranges, YAML alias bombs."""

from __future__ import annotations

import pytest

from tvt import config
from tvt.cli import main
from tvt.config_values import CHOICES
from tvt.errors import ConfigError


@pytest.mark.parametrize("key, bad", [
    ("sketch.clip_mode", "per_substeps"), ("sketch.modality", "sketches"), ("sketch.selection", "best"),
    ("sketch.precision", "fp64"), ("train.precision", "half"), ("train.teacher_crops", "local"),
    ("model.stem", "convolution"), ("model.pos_resample", "exactly"), ("data.alpha_background", "black"),
])
def test_choice_typo_fails_at_load_naming_the_choices(key, bad):
    with pytest.raises(ConfigError, match=rf"{key}: '{bad}' is not one of") as info:
        config.load([], [f"{key}={bad}"])
    for allowed in CHOICES[key]:
        assert allowed in str(info.value)


def test_choice_typo_in_a_yaml_file_fails_at_load(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  precision: bf61\n")
    with pytest.raises(ConfigError, match=r"c.yaml: train.precision: 'bf61' is not one of auto, fp32, bf16, fp16"):
        config.load([tmp_path / "c.yaml"])


@pytest.mark.parametrize("override, message", [
    ("train.lr=.nan", "expected a finite number"), ("sketch.lr=.inf", "expected a finite number"),
    ("train.lr=-1", "must be >= 0"), ("train.epochs=0", "must be >= 1"), ("sketch.batch_size=-4", "must be >= 1"),
    ("train.label_smoothing=1.5", "between 0.0 and 0.99"), ("sketch.momentum_teacher=1.2", "between 0.0 and 1.0"),
    ("train.teacher_temp=0", "must be >= 1e-06"), ("data.global_crops_scale=[0.1, .nan]", "finite"),
    ("sketch.student_temp=-0.1", "'batch'"), ("sketch.student_temp=batches", "'batch'"),
    ("train.virtual_world_size=0", "must be >= 1"),
])
def test_numbers_out_of_range_are_refused_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        config.load([], [override])


def test_student_temp_accepts_batch_or_a_number():
    assert config.load().sketch.student_temp == "batch"  # [Q41] official default
    assert config.load([], ["sketch.student_temp=0.1"]).sketch.student_temp == 0.1
    assert config.load([], ["sketch.student_temp=1"]).sketch.student_temp == 1.0
    stored = config.from_dict(config.as_plain(config.load([], ["sketch.student_temp=0.1"])))
    assert stored.sketch.student_temp == 0.1


def test_cli_reports_a_bad_number_without_traceback(capsys):
    assert main(["train", "--set", "train.lr=.nan", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "train.lr: expected a finite number" in err and "Traceback" not in err


def _bomb(levels: int) -> str:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines.append(f"train: {{output_dir: *a{levels - 1}}}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [5, 9])
def test_yaml_alias_bomb_is_refused_with_a_short_message(tmp_path, levels):
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb(levels))
    assert len(path.read_bytes()) < 600
    with pytest.raises(ConfigError, match="expands to more than") as info:
        config.load([path])  # 9 levels = 9**9 strings: building them would exhaust memory
    assert len(str(info.value)) < 300


def test_yaml_alias_bomb_in_an_override_is_refused():
    bomb = "[" + ", ".join(["&x [1,2,3,4,5,6,7,8,9,10]"] + ["*x"] * 5) + "]"
    with pytest.raises(ConfigError):
        config.load([], [f"train.output_dir={bomb}"])
    nested = "{a: &a [1,1,1,1,1,1,1,1,1,1], b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], " \
             "d: [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]}"
    with pytest.raises(ConfigError, match="expands to more than") as info:
        config.load([], [f"train.output_dir={nested}"])
    assert len(str(info.value)) < 300


def test_small_anchors_are_still_allowed(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("data:\n  global_crops_scale: &s [0.2, 1.0]\nsketch:\n  global_crops_scale: *s\n")
    cfg = config.load([path])
    assert cfg.data.global_crops_scale == cfg.sketch.global_crops_scale == (0.2, 1.0)


def test_wrong_type_error_never_prints_a_huge_value():
    with pytest.raises(ConfigError) as info:
        config.load([], ["train.epochs=[" + ",".join(["1"] * 5000) + "]"])
    assert len(str(info.value)) < 300
