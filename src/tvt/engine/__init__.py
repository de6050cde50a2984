"""Training: one loop (:func:`fit`) and one task per stage (stage A sketch DINO, stage B TVT).

User API (``__all__``, each name imported on first use): run a stage (:func:`train_sketch`,
:func:`train`), or build its task to drive steps yourself (:func:`build_sketch_task`,
:func:`build_tvt_task`, then ``task.step(batch, epoch, it)``), the loop and its protocol
(:func:`fit`, :class:`Task`), the demo (:func:`run_demo`). Plumbing (checkpoint files, schedules,
samplers, precision, signals) stays in the submodules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tvt._lazy import lazy_exports

_EXPORTS = {
    "train_sketch": "tvt.engine.train_dino:train",
    "train": "tvt.engine.train_tvt:train",
    "build_sketch_task": "tvt.engine.train_dino:build",
    "build_tvt_task": "tvt.engine.train_tvt:build",
    "SketchTask": "tvt.engine.train_dino:SketchTask",
    "TVTTask": "tvt.engine.train_tvt:TVTTask",
    "Task": "tvt.engine.loop:Task",
    "fit": "tvt.engine.loop:fit",
    "TrainingInterrupted": "tvt.engine.faults:TrainingInterrupted",
    "run_demo": "tvt.engine.demo:run_demo",
}

__all__ = [
    "train_sketch",
    "train",
    "build_sketch_task",
    "build_tvt_task",
    "SketchTask",
    "TVTTask",
    "Task",
    "fit",
    "TrainingInterrupted",
    "run_demo",
]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from tvt.engine.demo import run_demo
    from tvt.engine.faults import TrainingInterrupted
    from tvt.engine.loop import Task, fit
    from tvt.engine.train_dino import SketchTask
    from tvt.engine.train_dino import build as build_sketch_task
    from tvt.engine.train_dino import train as train_sketch
    from tvt.engine.train_tvt import TVTTask, train
    from tvt.engine.train_tvt import build as build_tvt_task
