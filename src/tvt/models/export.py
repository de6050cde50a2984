"""`tvt export`: an inference-only model folder that people can share and load without pickle.

Layout::

    model.safetensors   the encoder's weights (TVT student, or plain ViT), our key layout
    config.json         format "tvt-model", kind, backbone, tokens, image size, normalisation,
                        return_idx, feature size, classes it was trained on, licence, source
    README.md           model card: what it is, training data and config, metrics, licence

:func:`tvt.models.encoder.load_model_folder` (and ``load_encoder`` on the folder) reads it back
with ``json`` and ``safetensors`` only. Optimizer state, teachers and RNG states are left out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tvt.errors import InputError
from tvt.files import atomic_write, sha256_file, write_json, write_text
from tvt.models.encoder import MODEL_FORMAT, MODEL_WEIGHTS, Encoder, load_encoder, training_info
from tvt.models.weights import arch_hints, read_checkpoint

PAPER_BACKBONE = "dino_vit"  # config.json "backbone" of the paper's DINO ViT (sizes in "arch")


def _tokens(encoder: Encoder) -> list[str]:
    backbone = getattr(encoder.model, "backbone", encoder.model)
    names = list(getattr(backbone, "token_names", ()))
    return names or (["cls"] if getattr(backbone, "cls_token", None) is not None else ["pooled"])


def model_config(encoder: Encoder, ckpt: Mapping[str, Any], source: Path, licence: str,
                 metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config.json of an exported model (everything a loader and a reader need)."""
    arch = arch_hints(encoder.model)
    cfg: dict[str, Any] = {
        "format": MODEL_FORMAT, "version": 1, "kind": encoder.kind,
        "backbone": arch.get("backbone", PAPER_BACKBONE), "arch": arch, "tokens": _tokens(encoder),
        "img_size": encoder.img_size, "patch_size": encoder.patch_size,
        "mean": list(encoder.mean), "std": list(encoder.std),
        "return_idx": encoder.return_idx, "dim": encoder.dim,
        **training_info(ckpt),
        "licence": licence,
        "source": {"file": source.name, "sha256": sha256_file(source)},
    }
    if isinstance(ckpt.get("config"), Mapping):
        cfg["training_config"] = ckpt["config"]
    if metrics:
        cfg["metrics"] = dict(metrics)
    return cfg


def model_card(cfg: Mapping[str, Any]) -> str:
    """README.md of an exported model: what it is, its data, config, metrics and licence."""
    kind = ("a TVT fusion ViT (zero-shot sketch-based image retrieval)" if cfg["kind"] == "tvt"
            else "a plain ViT encoder")
    lines = [f"# tvt model: {cfg['backbone']}", "", f"This folder holds {kind}, exported by `tvt export` from "
             f"`{cfg['source']['file']}` (sha256 `{cfg['source']['sha256'][:16]}…`). Load it with "
             "`tvt index PHOTOS --checkpoint THIS_FOLDER`, `tvt search/serve/embed/eval --checkpoint THIS_FOLDER` or "
             "`tvt.models.load_encoder(\"THIS_FOLDER\")`; nothing in it is pickled.", "",
             "| field | value |", "|---|---|",
             f"| backbone | {cfg['backbone']} |", f"| tokens | {', '.join(cfg['tokens'])} |",
             f"| image size | {cfg['img_size']} px (patch {cfg['patch_size']}) |",
             f"| normalisation | mean {cfg['mean']}, std {cfg['std']} |",
             f"| feature | return_idx {cfg['return_idx']}, {cfg['dim']}-d |",
             f"| licence | {cfg['licence']} |", ""]
    lines += ["## Training data", ""]
    if cfg.get("dataset"):
        classes = cfg.get("train_classes") or []
        lines.append(f"Dataset `{cfg['dataset']}`, split `{cfg.get('split', '?')}`, stage `{cfg.get('stage', '?')}`: "
                     f"{len(classes)} training classes" + (f", {len(cfg['test_classes'])} held-out classes."
                                                           if cfg.get("test_classes") else "."))
        if cfg["dataset"] == "synth":
            lines.append("\nThese are the synthetic shapes of `tvt demo`: this model does not work on real photos.")
    else:
        lines.append("Not recorded in the source file.")
    lines += ["", "## Evaluation", ""]
    metrics = cfg.get("metrics") or {}
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if scalars:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in scalars.items()]
    else:
        lines.append("No evaluation was given (`tvt eval` writes one; pass it with `tvt export --metrics`).")
    lines += ["", "## Training config", "", "See `training_config` in config.json." if cfg.get("training_config")
              else "Not recorded in the source file.", ""]
    return "\n".join(lines)


def find_metrics(checkpoint: Path) -> Path | None:
    """The ``tvt eval`` results next to a checkpoint (``eval/tvt_results.json``), if any."""
    path = checkpoint.parent / "eval" / "tvt_results.json"
    return path if path.is_file() else None


def read_metrics(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"metrics file {path} is not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InputError(f"metrics file {path} holds a JSON {type(data).__name__}, expected an object")
    return data


def export_model(checkpoint: str | Path, out_dir: str | Path, *, return_idx: int = 0, licence: str = "unspecified",
                 metrics: str | Path | None = None) -> Path:
    """Write the model folder of ``checkpoint`` to ``out_dir`` (created; an existing folder must be
    empty or an earlier export). Returns ``out_dir``."""
    from safetensors.torch import save

    src = Path(checkpoint).expanduser()
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").is_file())):
        raise InputError(f"--out {out} exists and is not an empty folder or an earlier export; choose another")
    if src.is_dir():
        raise InputError(f"{src} is already a model folder; export takes a checkpoint file")
    encoder = load_encoder(src, return_idx=return_idx)
    ckpt = read_checkpoint(src)
    mpath = Path(metrics).expanduser() if metrics else find_metrics(src)
    cfg = model_config(encoder, ckpt, src, licence, read_metrics(mpath) if mpath else None)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in encoder.model.state_dict().items()}
    weights = save(state, metadata={"format": MODEL_FORMAT})
    atomic_write(out / MODEL_WEIGHTS, lambda fh: fh.write(weights))
    write_json(out / "config.json", cfg, indent=1, default=str)
    write_text(out / "README.md", model_card(cfg))
    return out
