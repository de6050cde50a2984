"""What produced an index's embeddings: the model's identity, recorded in ``index.json``.

An index built by one model is never searched or extended with another: :meth:`ModelIdentity.key`
(kind, feature size, input size, feature choice, checksum of the weights) must agree.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tvt.files import sha256_file


@dataclass(frozen=True)
class ModelIdentity:
    """What produced the embeddings; two indexes are compatible when :meth:`key` agrees."""

    kind: str
    dim: int
    img_size: int
    return_idx: int = 0
    checkpoint: str | None = None
    sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def key(self) -> tuple:
        return (self.kind, self.dim, self.img_size, self.return_idx, self.sha256)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelIdentity:
        keys = ("kind", "dim", "img_size", "return_idx", "checkpoint", "sha256", "extra")
        return cls(**{k: d[k] for k in keys if k in d})


# Files of a model folder that identify the model (README.md, the editable card, does not).
MODEL_FOLDER_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")


def model_sha256(path: str | Path) -> str:
    """sha256 of a checkpoint file, or of a model folder's config and weights files."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256()
    for name in MODEL_FOLDER_FILES:
        if (p / name).is_file():
            h.update(f"{name}:{sha256_file(p / name)}\n".encode())
    return h.hexdigest()


def model_identity(encoder: Any, source: str | Path) -> ModelIdentity:
    """The :class:`ModelIdentity` of an encoder loaded from ``source`` (file or folder).

    ``extra`` records the architecture, the input normalisation, the pretrained backbone's name
    when the encoder is one used without training, and what is known of the training data.
    """
    from tvt.models.weights import arch_hints

    extra: dict[str, Any] = {"arch": arch_hints(encoder.model), "mean": list(encoder.mean), "std": list(encoder.std)}
    info = dict(encoder.info)
    if info.get("pretrained_backbone"):
        extra["pretrained_backbone"] = info["pretrained_backbone"]
    if info.get("dataset") or info.get("train_classes"):
        extra["training"] = {"dataset": info.get("dataset"), "split": info.get("split"),
                             "num_train_classes": len(info.get("train_classes") or [])}
    path = Path(source)
    return ModelIdentity(kind=encoder.kind, dim=encoder.dim, img_size=encoder.img_size,
                         return_idx=encoder.return_idx, checkpoint=str(path), sha256=model_sha256(path), extra=extra)
