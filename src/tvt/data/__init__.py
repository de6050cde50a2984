"""Data: benchmark layouts and splits, image loading, datasets, transforms, the synthetic dataset.

User API (``__all__``, each name imported on first use): reading a dataset in the tvt layout
(:func:`load_split`, :class:`ClassFolder`, :func:`load_rgb`), checking and preparing one
(:func:`check_dataset`, :func:`prepare_dataset`), the built-in synthetic dataset
(:func:`generate_synthetic`), QuickDraw stroke files and the model transforms. Plumbing (paired
sampling, class-name matching, outlier lists, the shipped protocols) stays in the submodules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tvt._lazy import lazy_exports

_EXPORTS = {
    "ClassFolder": "tvt.data.folder:ClassFolder",
    "ImageReadError": "tvt.data.images:ImageReadError",
    "load_rgb": "tvt.data.images:load_rgb",
    "Split": "tvt.data.layout:Split",
    "load_split": "tvt.data.layout:load_split",
    "list_images": "tvt.data.layout:list_images",
    "DecodedCache": "tvt.data.cache:DecodedCache",
    "check_dataset": "tvt.data.check:check_dataset",
    "PrepareOptions": "tvt.data.prepare:PrepareOptions",
    "prepare_dataset": "tvt.data.prepare:prepare",  # not `prepare`: that is the submodule's name
    "generate_synthetic": "tvt.data.synth:generate",
    "load_stroke_file": "tvt.data.strokes:load_stroke_file",
    "render_stroke_file": "tvt.data.strokes:render_stroke_file",
    "eval_transform": "tvt.data.transforms:eval_transform",
    "tvt_train_transform": "tvt.data.transforms:tvt_train_transform",
    "dino_multicrop_transform": "tvt.data.transforms:dino_multicrop_transform",
}

__all__ = [
    "ClassFolder",
    "ImageReadError",
    "load_rgb",
    "Split",
    "load_split",
    "list_images",
    "DecodedCache",
    "check_dataset",
    "PrepareOptions",
    "prepare_dataset",
    "generate_synthetic",
    "load_stroke_file",
    "render_stroke_file",
    "eval_transform",
    "tvt_train_transform",
    "dino_multicrop_transform",
]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from tvt.data.cache import DecodedCache
    from tvt.data.check import check_dataset
    from tvt.data.folder import ClassFolder
    from tvt.data.images import ImageReadError, load_rgb
    from tvt.data.layout import Split, list_images, load_split
    from tvt.data.prepare import PrepareOptions
    from tvt.data.prepare import prepare as prepare_dataset
    from tvt.data.strokes import load_stroke_file, render_stroke_file
    from tvt.data.synth import generate as generate_synthetic
    from tvt.data.transforms import dino_multicrop_transform, eval_transform, tvt_train_transform
