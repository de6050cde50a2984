"""Which values a config may hold, and how YAML text becomes them.

The allowed-value tables (:data:`CHOICES`, :data:`RANGES`) with the checks of one field
(:func:`check_value`), the conversion of a parsed value to a field's annotated type
(:func:`coerce`), and the bounded YAML reader (:func:`safe_yaml`). :mod:`tvt.config` holds the
dataclasses and applies these to every file and override it merges; this module knows nothing of
the dataclasses, so it imports nothing from :mod:`tvt.config`.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any

import yaml

from tvt.errors import ConfigError

# Choice fields: a typo fails when the config loads, naming the allowed values.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.alpha_background": ("white", "none"),
    "model.stem": ("patch", "conv"),
    "model.pos_resample": ("fidelity", "exact"),
    "sketch.modality": ("sketch", "photo"),
    "sketch.clip_mode": ("per_substep", "per_step"),
    "sketch.selection": ("holdout", "last"),
    "sketch.init_head": ("checkpoint", "new"),
    "sketch.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.teacher_crops": ("all", "global"),
}

# Numeric ranges (inclusive bounds; None = open). Every float must also be finite.
_POS_INT = (1, None)
_NONNEG = (0, None)
_UNIT = (0.0, 1.0)
RANGES: dict[str, tuple[float | None, float | None]] = {
    **{f"data.{k}": _POS_INT for k in ("img_size", "global_crops", "local_crops_size")},
    **{f"data.{k}": _NONNEG for k in ("local_crops", "num_workers")},
    **{f"model.{k}": _POS_INT for k in ("patch_size", "embed_dim", "depth", "num_heads", "out_dim", "head_hidden_dim",
                                        "head_bottleneck_dim")},
    "model.mlp_ratio": (0.0, None), "model.token_num": (2, 3), "model.drop_path_rate": (0.0, 0.99),
    **{f"{s}.{k}": _POS_INT for s in ("sketch", "train") for k in ("epochs", "batch_size", "accum_steps", "log_every",
                                                                   "virtual_world_size")},
    **{f"{s}.{k}": _NONNEG for s in ("sketch", "train") for k in (
        "lr", "min_lr", "warmup_epochs", "weight_decay", "weight_decay_end", "clip_grad", "freeze_last_layer",
        "warmup_teacher_temp_epochs", "save_every", "max_steps_per_epoch", "checkpoint_every_steps")},
    **{f"{s}.{k}": (1e-6, None) for s in ("sketch", "train") for k in ("warmup_teacher_temp", "teacher_temp")},
    **{f"{s}.{k}": _UNIT for s in ("sketch", "train") for k in ("center_momentum",)},
    "sketch.momentum_teacher": _UNIT, "sketch.drop_path_rate": (0.0, 0.99), "sketch.holdout_fraction": (0.0, 0.9),
    "train.skt_factor": _POS_INT, "train.early_schedule_epochs": _NONNEG, "train.backbone_lr_mult": _NONNEG,
    "train.fc_lr_mult": (1e-6, None), "train.kd_img_weight": _NONNEG, "train.kd_skt_weight": _NONNEG,
    "train.label_smoothing": (0.0, 0.99), "train.align_uniform_weight": _NONNEG,
    "train.align_uniform_epochs": _NONNEG, "train.ca_momentum": _UNIT, "train.student_temp": (1e-6, None),
    "eval.batch_size": _POS_INT, "eval.binary_bits": _NONNEG, "eval.grid_queries": _NONNEG, "eval.grid_k": _NONNEG,
}

# A YAML file may use anchors and aliases, but their expansion is bounded: a few hundred bytes
# of nested aliases ("billion laughs") would otherwise expand to gigabytes.
MAX_YAML_NODES = 10_000


def cut(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters: an error message never prints a huge value."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(value: Any) -> str:
    return cut(repr(value))


def check_value(key: str, value: Any, where: str) -> None:
    """Choice and range checks of one resolved field (ConfigError naming the allowed values)."""
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{where}: {_short(value)} is not one of {', '.join(CHOICES[key])}")
    if key == "sketch.student_temp":
        if value == "batch":
            return
        if isinstance(value, str) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{where}: expected 'batch' (the per-process batch size, official [Q41]) or a positive "
                              f"number such as 0.1, got {_short(value)}")
    for item in (value if isinstance(value, (list, tuple)) else [value]):
        if isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(f"{where}: expected a finite number, got {item!r}")
    lo, hi = RANGES.get(key, (None, None))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            span = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            raise ConfigError(f"{where}: must be {span}, got {value!r}")


def coerce(value: Any, typ: Any, where: str) -> Any:
    """Check/convert ``value`` to the annotated type ``typ``; ConfigError on mismatch."""
    origin = typing.get_origin(typ)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {_short(value)}")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {_short(value)}")
    if typ is str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
        raise ConfigError(f"{where}: expected a string, got {_short(value)}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_short(value)}")
        args = typing.get_args(typ)
        if origin is tuple and len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {_short(value)}")
        items = [coerce(v, args[i] if origin is tuple else args[0], where) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (typing.Union, types.UnionType):  # float | str (sketch.student_temp)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and float in typing.get_args(typ):
            return float(value)
        if isinstance(value, str) and str in typing.get_args(typ):
            return value
        raise ConfigError(f"{where}: expected a number or a string, got {_short(value)}")
    return value


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes of the YAML graph once every alias is expanded (shared nodes counted once per use)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a recursive alias counts once instead of looping
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(n, memo) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = size
    return size


def safe_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` that refuses documents whose aliases expand past :data:`MAX_YAML_NODES`."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)  # aliases stay shared references here
        if node is not None and _expanded_size(node, {}) > MAX_YAML_NODES:
            raise ConfigError(f"{source}: the YAML expands to more than {MAX_YAML_NODES} values through anchors and "
                              "aliases; a config is a few dozen keys, write them out")
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc


__all__ = ["CHOICES", "RANGES", "MAX_YAML_NODES", "check_value", "coerce", "cut", "safe_yaml"]
