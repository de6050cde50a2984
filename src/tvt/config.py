"""Typed configuration: dataclass defaults, small YAML diffs, command-line overrides last.

A config file is a YAML mapping with the sections ``data``, ``model``, ``sketch`` (stage A),
``train`` (stage B) and ``eval`` (stage C); each section holds only the keys that differ from the
dataclass defaults below. ``load(paths, overrides)`` merges the files left to right, then the
``section.key=value`` overrides. Unknown sections or keys and values of the wrong type are errors.
The defaults are the paper's (spec §4.9, §5); the resolved config is saved beside every run and
inside every checkpoint. Which values each field may hold (choices, ranges) and the bounded YAML
reader are in :mod:`tvt.config_values`.
"""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from tvt.config_values import check_value, coerce, cut, safe_yaml
from tvt.errors import ConfigError


@dataclass
class DataConfig:
    root: str = "data"
    dataset: str = "sketchy"
    split: str = "zeroshot"  # free string: split/<split>_classes.txt [Q1]
    img_size: int = 224
    global_crops_scale: tuple[float, float] = (0.14, 1.0)  # README value (code default 0.4, 1.0)
    global_crops: int = 1  # [Q9]: one global crop -> blur 0.1 + solarize 0.2
    local_crops: int = 0
    local_crops_size: int = 96
    local_crops_scale: tuple[float, float] = (0.05, 0.4)
    solarize_sketch: bool = True  # [Q9] faithful; False = ablation without solarizing sketches
    alpha_background: str = "white"  # "none" = official plain RGB conversion (spec §1.5)
    num_workers: int = 2
    # Seed each training sample's augmentation from (seed, epoch, index): bit-exact resume with
    # workers, identical crops for real and virtual ranks. False = process-global RNG (official).
    per_sample_seed: bool = True
    # Folder for decoded images (.npy, checked against each source's size and mtime): later epochs
    # skip PNG/JPEG decoding. Exact either way; costs disk (10-50x the compressed sources). "" = off.
    cache_dir: str = ""


@dataclass
class ModelConfig:
    # "" = the paper's DINO ViT (sizes read from the checkpoint); else a named timm backbone
    # (tvt.models.backbones, e.g. dinov2_vits14): architecture and normalisation follow it.
    backbone: str = ""
    patch_size: int = 8
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    # "patch" = the paper's ViT; "conv" = convolutional stem for ViTs trained from scratch (the CPU
    # demo). Only used when stage A starts from random weights; otherwise read from the checkpoint.
    stem: str = "patch"
    token_num: int = 2  # 3 is experimental [Q20]
    pos_resample: str = "fidelity"  # [Q10] "fidelity" | "exact"
    out_dim: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    drop_path_rate: float = 0.1


@dataclass
class SketchConfig:
    """Stage A: DINO self-distillation on training-class images of one modality (spec §5)."""

    output_dir: str = "runs/sketch"
    init: str = ""  # full DINO checkpoint of the image ViT ("" = random init, only for demos)
    # "checkpoint": sketch.init holds backbone + DINO head (the paper). "new": sketch.init holds only the
    # weights of model.backbone (DINOv2, CLIP, SigLIP release no head); a fresh DINO head is grown (extension).
    init_head: str = "checkpoint"
    freeze_backbone: bool = False  # train only the DINO head (growing a head on a pretrained backbone)
    modality: str = "sketch"  # "photo" pretrains an image ViT the same way (used by the demo)
    epochs: int = 50
    batch_size: int = 512
    accum_steps: int = 64
    lr: float = 1e-4  # reference LR, scaled by batch_size * world_size / 256
    min_lr: float = 1e-6
    warmup_epochs: int = 5
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0
    clip_mode: str = "per_substep"  # [Q37] official; "per_step" clips the summed gradient once
    freeze_last_layer: int = 1
    momentum_teacher: float = 0.996
    center_momentum: float = 0.9
    norm_last_layer: bool = False
    global_crops_scale: tuple[float, float] = (0.4, 1.0)
    local_crops: int = 10
    local_crops_size: int = 96
    local_crops_scale: tuple[float, float] = (0.05, 0.4)
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: int = 5
    # [Q41] "batch" = the per-process batch size (official: 512 in the README); a number, e.g. 0.1
    # (DINO's intended value), is used as given.
    student_temp: float | str = "batch"
    drop_path_rate: float = 0.1
    precision: str = "fp32"  # official (use_fp16 false); "auto" | "bf16" | "fp16" (fp16 needs clip_mode per_step)
    # [Q21] W > 1 emulates W ranks in one process (the authors used 2 GPUs x 512): batch_size stays
    # per rank, the DINO centre sees all W ranks, the LR scales with batch_size * W, and the
    # per-sub-batch clipping of [Q37] acts on each rank's own partial sums, as under DDP no_sync.
    virtual_world_size: int = 1
    selection: str = "holdout"  # [Q39] "holdout" | "last"
    holdout_fraction: float = 0.1
    seed: int = 0
    save_every: int = 1
    log_every: int = 10
    max_steps_per_epoch: int = 0  # 0 = full epoch; >0 truncates (tests, smoke runs)
    checkpoint_every_steps: int = 0  # >0: also write checkpoint.pth every N optimizer steps (kill -9 loses less)


@dataclass
class TrainConfig:
    """Stage B: TVT training of the fusion ViT (spec §4)."""

    output_dir: str = "runs/tvt"
    image_teacher: str = ""  # full DINO checkpoint (teacher with head); required
    sketch_teacher: str = ""  # stage-A checkpoint; required
    epochs: int = 50
    batch_size: int = 256  # photos per process per optimizer step
    accum_steps: int = 16
    skt_factor: int = 2
    lr: float = 5e-4  # reference LR, scaled by batch_size * world_size / 256
    min_lr: float = 1e-6
    warmup_epochs: int = 5
    early_schedule_epochs: int = 0
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    backbone_lr_mult: float = 0.1
    # LR multiplier of the fusion classifier head_fusion.fc alone (1 = the paper). Its input is a unit
    # vector, so the logits grow only as fast as Adam grows its weights: a short run (the CPU demo)
    # needs a larger step there for L_CLS to move at all.
    fc_lr_mult: float = 1.0
    clip_grad: float = 3.0  # per parameter tensor [Q15]
    freeze_last_layer: int = 1
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: int = 5
    student_temp: float = 0.1
    center_momentum: float = 0.9
    label_smoothing: float = 0.1
    use_align_uniform: bool = True
    # Weights of the two distillation terms (1 = the paper); 0 switches a teacher's term off (ablations).
    kd_img_weight: float = 1.0
    kd_skt_weight: float = 1.0
    align_uniform_weight: float = 2.0
    align_uniform_epochs: int = 20
    ca_momentum: float = 0.9
    disable_dropout: bool = True  # [Q19] student in eval mode throughout; false: drop-path model.drop_path_rate
    # With several crops: "all" = the teachers see every crop, local ones included (official);
    # "global" = only the global crops, as DINO does.
    teacher_crops: str = "all"
    precision: str = "auto"  # "auto" (bf16 on GPU, fp32 on CPU) | "fp16" (official) | "bf16" | "fp32"
    seed: int = 0
    save_every: int = 1  # also keep checkpoint-XXXX.pth every N epochs (0 = only checkpoint.pth)
    log_every: int = 10
    max_steps_per_epoch: int = 0
    checkpoint_every_steps: int = 0  # >0: also write checkpoint.pth every N optimizer steps (kill -9 loses less)
    # [Q21] W > 1 emulates W ranks in one process (the paper used W = 2, TU-Berlin 4): batch_size
    # stays per rank, uniformity per rank's sub-batch, centres over all W, LR scaled by B * W.
    virtual_world_size: int = 1


@dataclass
class EvalConfig:
    checkpoint: str = ""
    return_idx: int = 0
    batch_size: int = 64
    map_k: list[int] = field(default_factory=lambda: [200])
    prec_k: list[int] = field(default_factory=lambda: [100, 200])
    use_train: bool = False
    binary_bits: int = 0  # 64 reports TVT_b (ITQ) beside the real-valued metrics
    grid_queries: int = 8
    grid_k: int = 8
    output_dir: str = ""  # default: <checkpoint dir>/eval


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sketch: SketchConfig = field(default_factory=SketchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _apply(section_obj: Any, updates: dict[str, Any], section: str, source: str) -> None:
    hints = typing.get_type_hints(type(section_obj))
    names = {f.name for f in fields(section_obj)}
    for key, value in updates.items():
        if key not in names:
            close = ", ".join(sorted(names))
            raise ConfigError(f"{source}: unknown key '{section}.{key}'. Valid keys of '{section}': {close}")
        where = f"{source}: {section}.{key}"
        value = coerce(value, hints[key], where)
        check_value(f"{section}.{key}", value, where)
        setattr(section_obj, key, value)


def merge(cfg: Config, tree: dict[str, Any], source: str) -> Config:
    """Apply a nested mapping ``{section: {key: value}}`` onto ``cfg`` in place."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(tree).__name__}")
    sections = {f.name for f in fields(cfg)}
    for section, updates in tree.items():
        if section not in sections:
            raise ConfigError(f"{source}: unknown section '{section}'. Valid sections: {', '.join(sorted(sections))}")
        if updates is None:
            continue
        if not isinstance(updates, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping")
        _apply(getattr(cfg, section), updates, section, source)
    return cfg


def parse_override(text: str) -> dict[str, Any]:
    """``"train.epochs=10"`` -> ``{"train": {"epochs": 10}}`` (value parsed as YAML)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override '{text}': expected section.key=value, e.g. train.epochs=10")
    key, raw = text.split("=", 1)
    section, name = key.strip().split(".", 1)
    value = safe_yaml(raw, f"override '{cut(text)}'") if raw.strip() else ""
    return {section: {name: value}}


def load(paths: list[str | Path] | tuple[str | Path, ...] = (), overrides: list[str] = ()) -> Config:
    """The typed config: defaults, then each YAML file in order, then each ``section.key=value`` override.

    Args:
        paths: YAML files, each a diff over the defaults (``section: {key: value}``).
        overrides: strings like ``"train.lr=1e-4"``; values are parsed as YAML.
    Returns:
        A :class:`Config` (sections ``data``, ``model``, ``sketch``, ``train``, ``eval``).
    Raises :class:`~tvt.errors.ConfigError` naming the file or override for an unknown key, a
    value of the wrong type or out of range.
    """
    cfg = Config()
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        merge(cfg, safe_yaml(p.read_text(), str(p)) or {}, str(p))
    for text in overrides:
        merge(cfg, parse_override(text), f"override '{cut(text)}'")
    return cfg


def from_dict(tree: dict[str, Any]) -> Config:
    """Rebuild a Config from ``Config.to_dict()`` output (e.g. stored in a checkpoint)."""
    return merge(Config(), tree, "stored config")


def as_plain(cfg: Config) -> dict[str, Any]:
    """The config as nested dicts of lists/numbers/strings (YAML- and checkpoint-safe)."""
    return _plain(cfg.to_dict())


def save(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (tuples as lists)."""
    Path(path).write_text(yaml.safe_dump(as_plain(cfg), sort_keys=False))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


__all__ = [
    "Config", "DataConfig", "ModelConfig", "SketchConfig", "TrainConfig", "EvalConfig",
    "load", "merge", "from_dict", "save", "parse_override", "as_plain",
]
