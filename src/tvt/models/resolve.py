"""Which model a command means: a checkpoint, an exported folder, or a pretrained backbone by name.

``tvt index/search/serve/embed`` take either ``--checkpoint`` (a TVT or ViT checkpoint, or a
model folder) or ``--backbone NAME --weights FILE`` (a pretrained backbone used directly as the
encoder of sketches and photos, no training). :func:`open_encoder` turns those arguments into an
:class:`~tvt.models.encoder.Encoder`. Nothing is downloaded unless ``download=True`` is given
explicitly, and then the weights are saved to ``weights`` first so that every later command (and
the index) refers to a local folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tvt.errors import CheckpointError, InputError
from tvt.models.backbone_weights import load_named_backbone
from tvt.models.backbones import build_named_vit
from tvt.models.encoder import Encoder, load_encoder


def fetch_pretrained(backbone: str, folder: str | Path, img_size: int | None = None) -> Path:
    """Download ``backbone``'s weights with timm's own mechanism and save them as a timm model
    folder (``config.json`` + ``model.safetensors``). Needs a network; only on explicit request."""
    from timm.models._hub import save_for_hf

    out = Path(folder).expanduser()
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not empty; give a new folder for the downloaded weights")
    try:
        model = build_named_vit(backbone, img_size, download=True)
    except Exception as exc:  # network, hub and cache errors vary by version
        raise CheckpointError(f"could not download the weights of {backbone} through timm "
                              f"({type(exc).__name__}: {str(exc)[:200]}); this needs a machine that is online") from exc
    out.mkdir(parents=True, exist_ok=True)
    save_for_hf(model, str(out), safe_serialization=True)
    return out


def open_encoder(checkpoint: str | Path | None = None, *, backbone: str | None = None,
                 weights: str | Path | None = None, img_size: int | None = None, return_idx: int | None = None,
                 device: str | torch.device = "cpu", download: bool = False) -> Encoder:
    """The encoder the user asked for: ``checkpoint`` (file or folder), or ``backbone`` + ``weights``.

    With ``download=True`` and ``weights`` not there yet, the backbone's pretrained weights are
    fetched (:func:`fetch_pretrained`) into ``weights`` first.
    """
    if backbone is None and weights is None:
        if checkpoint is None:
            raise InputError("no checkpoint: pass --checkpoint CKPT_OR_FOLDER, or --backbone NAME --weights FILE")
        return load_encoder(checkpoint, return_idx, device)
    if checkpoint is not None:
        raise InputError("pass either --checkpoint or --backbone/--weights, not both")
    if weights is None:
        raise InputError(f"--backbone {backbone} needs --weights FILE_OR_FOLDER (nothing is downloaded unless you "
                         "also pass --download on a machine that is online)")
    path = Path(weights).expanduser()
    if download and not path.exists():
        if not backbone:
            raise InputError("--download needs --backbone NAME (which weights to fetch)")
        fetch_pretrained(backbone, path)
    model = load_named_backbone(path, backbone, img_size)
    return Encoder(model, "vit", 0, device, info={"pretrained_backbone": model.arch.backbone})


SYNTHETIC_DATASETS = ("synth",)  # the dataset `tvt demo` and `tvt data synth` generate
MIN_TRAIN_CLASSES = 50  # fewer training classes than this rarely transfer to a user's own photos


def weak_model_warning(info: dict) -> str | None:
    """A one-paragraph warning when a model was trained on synthetic data or on few classes.

    ``info`` is :attr:`Encoder.info`. Pretrained backbones and foreign files (nothing known
    about their training) give None.
    """
    dataset = info.get("dataset")
    n = len(info.get("train_classes") or [])
    if dataset in SYNTHETIC_DATASETS:
        why = f"was trained on the synthetic '{dataset}' shapes of `tvt demo`, not on real photos"
    elif 0 < n < MIN_TRAIN_CLASSES:
        why = f"was trained on only {n} classes (of dataset '{dataset or 'unknown'}')"
    else:
        return None
    return (f"warning: this model {why}; its results on your photos will be close to chance. For a search that "
            "works without training, use a pretrained backbone: --backbone dinov2_vits14 --weights FOLDER (see "
            "\"Which model should I use?\" in the README), or a TVT model trained on Sketchy/TU-Berlin.")
