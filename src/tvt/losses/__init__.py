"""TVT losses: pure functions of tensors plus the two stateful centre modules (spec §4)."""

from tvt.losses.classification import smoothed_cross_entropy
from tvt.losses.dino import DINOCenter, dino_loss
from tvt.losses.hypersphere import CenterAlignment, instance_alignment, uniformity
from tvt.losses.objective import StudentOutputLike, sketch_dino_loss, tvt_loss

__all__ = [
    "CenterAlignment",
    "DINOCenter",
    "StudentOutputLike",
    "dino_loss",
    "instance_alignment",
    "sketch_dino_loss",
    "smoothed_cross_entropy",
    "tvt_loss",
    "uniformity",
]
