"""Image transforms: evaluation resize and the DINO / TVT multi-crop augmentations (spec §1.6).

Every pipeline is crop -> flip/colour -> blur -> (solarize) -> ToTensor -> Normalize. Crops,
flips and colour changes draw from the torch RNG; blur and solarize draw from Python's ``random``,
as in the official code [Q23], so both must be seeded for a repeatable result. All transforms are
plain picklable objects, so they work in DataLoader worker processes under any start method.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from tvt.errors import ConfigError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class GaussianBlur:
    """PIL Gaussian blur with radius ~ U[radius_min, radius_max], applied when ``random() <= p``."""

    def __init__(self, p: float = 0.5, radius_min: float = 0.1, radius_max: float = 2.0) -> None:
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() > self.p:  # applied when random() <= p, as the official code
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))

    def __repr__(self) -> str:
        return f"GaussianBlur(p={self.p}, radius=[{self.radius_min}, {self.radius_max}])"


class Solarization:
    """PIL ``solarize`` at ``threshold``, applied when ``random() < p``.

    On a black-on-white sketch this inverts the background, making it almost entirely black [Q9].
    """

    def __init__(self, p: float = 0.2, threshold: int = 128) -> None:
        self.p, self.threshold = p, threshold

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() < self.p:
            return ImageOps.solarize(img, threshold=self.threshold)
        return img

    def __repr__(self) -> str:
        return f"Solarization(p={self.p}, threshold={self.threshold})"


class MultiCrop:
    """Apply several pipelines to one image; return the list of crops, in pipeline order.

    ``pipelines`` is a sequence of ``(transform, count)``; each transform is applied ``count`` times.
    Output: ``list[Tensor]``, each ``[3, size, size]`` for that pipeline's size.
    """

    def __init__(self, pipelines: Sequence[tuple[Callable[[Image.Image], torch.Tensor], int]]) -> None:
        self.pipelines = [(t, int(n)) for t, n in pipelines if n > 0]

    @property
    def num_crops(self) -> int:
        return sum(n for _, n in self.pipelines)

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        return [t(img) for t, n in self.pipelines for _ in range(n)]

    def __repr__(self) -> str:
        inner = ",\n  ".join(f"{n} x {t}" for t, n in self.pipelines)
        return f"MultiCrop(\n  {inner}\n)"


def _normalize(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> T.Compose:
    return T.Compose([T.ToTensor(), T.Normalize(tuple(mean), tuple(std))])


def _flip_and_colour() -> T.Compose:
    return T.Compose([
        T.RandomHorizontalFlip(p=0.5),
        T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ])


def _check_scale(name: str, scale: Sequence[float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in scale)
    if not 0.0 < lo <= hi <= 1.0:
        raise ConfigError(f"{name} must be (min, max) with 0 < min <= max <= 1, got {tuple(scale)}")
    return lo, hi


def _check_size(name: str, size: int) -> int:
    if int(size) < 1:
        raise ConfigError(f"{name} must be a positive number of pixels, got {size}")
    return int(size)


def augment_pipeline(size: int, scale: Sequence[float], blur_p: float, solarize_p: float = 0.0,
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> T.Compose:
    """One crop pipeline: bicubic RandomResizedCrop -> flip/colour -> blur -> [solarize] -> tensor.

    Output: ``Tensor [3, size, size]``, normalised with ``mean``/``std`` (ImageNet's by default).
    """
    steps: list[Callable] = [
        T.RandomResizedCrop(size, scale=tuple(scale), interpolation=InterpolationMode.BICUBIC),
        _flip_and_colour(),
        GaussianBlur(blur_p),
    ]
    if solarize_p > 0:
        steps.append(Solarization(solarize_p))
    steps.append(_normalize(mean, std))
    return T.Compose(steps)


def eval_transform(size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> T.Compose:
    """Evaluation transform: bilinear ``Resize((size, size))`` (no aspect ratio, no centre crop)
    [Q29], ToTensor, Normalize (ImageNet's constants unless the backbone has others, e.g. CLIP).
    Output: ``Tensor [3, size, size]``."""
    size = _check_size("size", size)
    return T.Compose([T.Resize((size, size), interpolation=InterpolationMode.BILINEAR), _normalize(mean, std)])


def tvt_train_transform(size: int = 224, scale: Sequence[float] = (0.14, 1.0), global_crops: int = 1,
                        local_crops: int = 0, local_size: int = 96, local_scale: Sequence[float] = (0.05, 0.4),
                        solarize: bool = True, mean: Sequence[float] = IMAGENET_MEAN,
                        std: Sequence[float] = IMAGENET_STD) -> MultiCrop:
    """Stage-B (TVT) augmentation for photos and sketches alike; returns ``list[Tensor]``.

    Crops, in order: "global 1" (blur p 0.1, solarize p 0.2: DINO's global 2 [Q9]), then
    "global 2" (blur p 1.0) when ``global_crops == 2``, then ``local_crops`` local crops of
    ``local_size`` (blur p 0.5). ``solarize=False`` is the ablation that turns solarization off.
    Each global crop is ``[3, size, size]``, each local crop ``[3, local_size, local_size]``.
    """
    if global_crops not in (1, 2):
        raise ConfigError(f"global_crops must be 1 or 2, got {global_crops}")
    if local_crops < 0:
        raise ConfigError(f"local_crops must be >= 0, got {local_crops}")
    size, local_size = _check_size("size", size), _check_size("local_size", local_size)
    scale, local_scale = _check_scale("scale", scale), _check_scale("local_scale", local_scale)
    norm = dict(mean=mean, std=std)
    global1 = augment_pipeline(size, scale, blur_p=0.1, solarize_p=0.2 if solarize else 0.0, **norm)
    global2 = augment_pipeline(size, scale, blur_p=1.0, **norm)
    local = augment_pipeline(local_size, local_scale, blur_p=0.5, **norm)
    return MultiCrop([(global1, 1), (global2, global_crops - 1), (local, local_crops)])


def dino_multicrop_transform(global_size: int = 224, local_size: int = 96, global_scale: Sequence[float] = (0.4, 1.0),
                             local_scale: Sequence[float] = (0.05, 0.4), local_crops: int = 10,
                             mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> MultiCrop:
    """Stage-A (sketch DINO) multi-crop; returns ``list[Tensor]`` of ``2 + local_crops`` crops.

    Global 1: blur p 1.0; global 2: blur p 0.1 + solarize p 0.2; locals: ``local_size``, blur p 0.5.
    """
    if local_crops < 0:
        raise ConfigError(f"local_crops must be >= 0, got {local_crops}")
    global_size, local_size = _check_size("global_size", global_size), _check_size("local_size", local_size)
    global_scale = _check_scale("global_scale", global_scale)
    local_scale = _check_scale("local_scale", local_scale)
    norm = dict(mean=mean, std=std)
    global1 = augment_pipeline(global_size, global_scale, blur_p=1.0, **norm)
    global2 = augment_pipeline(global_size, global_scale, blur_p=0.1, solarize_p=0.2, **norm)
    local = augment_pipeline(local_size, local_scale, blur_p=0.5, **norm)
    return MultiCrop([(global1, 1), (global2, 1), (local, local_crops)])
