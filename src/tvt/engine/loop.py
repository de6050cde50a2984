"""The one training loop, shared by stage A and stage B.

A stage is a small :class:`Task`: it builds its data, models and optimizer, runs one optimizer
step on a batch, and turns its state into a checkpoint dict and back. This loop does the rest,
once for both: resume from the newest readable checkpoint (or say the run is already complete),
RNG state, graceful stop on SIGTERM/SIGINT (:mod:`tvt.engine.faults`), checkpoints after every
epoch, every ``checkpoint_every_steps`` steps and on a signal (rank 0 only), a progress bar with
rate and ETA, a JSON-lines log with throughput.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from tvt import config as config_mod
from tvt.config import Config
from tvt.distributed import DistInfo, all_reduce_mean, barrier
from tvt.engine import checkpoint as ckpt
from tvt.engine.checkpoint import Position
from tvt.engine.common import JsonlLogger, Throughput
from tvt.engine.faults import StopOnSignal


@dataclass(frozen=True)
class LoopSettings:
    """What the loop reads from a stage's config section."""

    name: str  # for messages and the progress bar, e.g. "stage A (sketch)"
    epochs: int
    log_every: int
    save_every: int
    checkpoint_every_steps: int


class Task(Protocol):
    """One training stage as the loop drives it."""

    cfg: Config
    info: DistInfo
    out_dir: Path
    n_iter: int  # optimizer steps per epoch
    loop: LoopSettings

    def batches(self, epoch: int, start_step: int) -> Iterator[Any]:
        """The epoch's batches from step ``start_step`` on (samplers reshuffled for ``epoch``)."""

    def step(self, batch: Any, epoch: int, it: int) -> dict[str, float]:
        """One optimizer step on an augmented batch; returns the logged loss terms."""

    def images(self, batch: Any) -> int:
        """Images this step consumed over all ranks (for the throughput)."""

    def schedule_values(self, epoch: int, it: int) -> dict[str, float]:
        """LR, WD, temperatures... at iteration ``it`` (logged with each step)."""

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        """Work after epoch ``epoch`` (e.g. model selection); extra fields of its log line."""

    def state_dict(self, epoch: int, step: int, totals: dict[str, float]) -> dict[str, Any]:
        """The checkpoint at ``epoch`` epochs plus ``step`` steps done."""

    def load_state_dict(self, state: dict[str, Any]) -> Position:
        """Restore a checkpoint (ConfigError if it belongs to another run); where to continue."""

    def saved(self, state: dict[str, Any], epoch: int, step: int) -> None:
        """Called on rank 0 after each checkpoint write (extra files such as the best one)."""

    def result(self) -> Path:
        """The checkpoint this stage hands on."""


def _save(task: Task, epoch: int, step: int, totals: dict[str, float]) -> Path | None:
    """Rank 0 writes checkpoint.pth (+ numbered every ``save_every`` epochs); the others wait."""
    path = None
    if task.info.is_main:
        state = task.state_dict(epoch, step, totals)
        path = ckpt.save_run_files(state, task.out_dir, epoch, step, task.loop.save_every)
        task.saved(state, epoch, step)
    barrier()
    return path


def _open(task: Task, resume: bool) -> Position | None:
    """Where to start; None (after saying so) when the run is already complete."""
    pos, path = ckpt.open_run(task.out_dir, resume, task.load_state_dict)
    main, name, epochs = task.info.is_main, task.loop.name, task.loop.epochs
    if path is not None and pos.epoch >= epochs:
        if main:
            print(f"tvt: {name} in {task.out_dir} is already complete ({pos.epoch} of {epochs} epochs, {path.name}); "
                  "nothing to do. Raise the epochs to train further, or use --no-resume to start over",
                  file=sys.stderr)
        return None
    if path is not None and main:
        print(f"tvt: resuming from {path} ({name}) at epoch {pos.epoch}, step {pos.step}", file=sys.stderr)
    return pos


def fit(task: Task, resume: bool = True, progress: bool = True) -> Path:
    """Train ``task`` to its last epoch; returns :meth:`Task.result`.

    Raises :class:`~tvt.engine.faults.TrainingInterrupted` after saving when SIGTERM/SIGINT arrives.
    """
    pos = _open(task, resume)
    if pos is None:
        return task.result()
    main = task.info.is_main
    if main:
        task.out_dir.mkdir(parents=True, exist_ok=True)
        config_mod.save(task.cfg, task.out_dir / "config.yaml")
    log = JsonlLogger(task.out_dir / "log.jsonl", enabled=main)
    with StopOnSignal(announce=main) as stop:
        for epoch in range(pos.epoch, task.loop.epochs):
            here = pos if epoch == pos.epoch else Position(epoch)
            means = run_epoch(task, epoch, log, progress and main, here, stop)
            log.write({"type": "epoch", "epoch": epoch, **means, **task.end_epoch(epoch)})
            path = _save(task, epoch + 1, 0, {})
            if (sig := stop.agreed(task.info.device)) and epoch + 1 < task.loop.epochs:
                raise stop.interrupted(sig, path, epoch + 1, 0)
    return task.result()


def run_epoch(task: Task, epoch: int, log: JsonlLogger, progress: bool, start: Position | None = None,
              stop: StopOnSignal | None = None) -> dict[str, float]:
    """Epoch ``epoch`` from step ``start.step``; returns ``train_<term>`` means over its steps and the rate."""
    start, n_iter = start or Position(epoch), task.n_iter
    batches = task.batches(epoch, start.step)
    if start.rng is not None:  # mid-epoch resume: the RNG as it was after `start.step` steps
        ckpt.set_rng_state(start.rng)
    totals, meter, tput = dict(start.totals), Throughput(), Throughput()
    bar = tqdm(total=n_iter, initial=start.step, desc=f"{task.loop.name} epoch {epoch + 1}/{task.loop.epochs}",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for step, batch in enumerate(batches, start=start.step):
        if step >= n_iter:
            break
        it = epoch * n_iter + step
        terms = task.step(batch, epoch, it)
        n_img = task.images(batch)
        meter.add(n_img), tput.add(n_img)
        for k, v in terms.items():
            totals[k] = totals.get(k, 0.0) + v
        bar.update(1), bar.set_postfix(loss=f"{terms['loss']:.3f}")
        if (step + 1) % task.loop.log_every == 0 or step + 1 == n_iter:
            log.write({"type": "step", "epoch": epoch, "step": step, "it": it, **terms,
                       **task.schedule_values(epoch, it), "img_per_s": meter.rate()})
        if step + 1 < n_iter:
            sig = stop.agreed(task.info.device) if stop is not None else None
            every = task.loop.checkpoint_every_steps
            if sig or (every and (step + 1) % every == 0):
                path = _save(task, epoch, step + 1, totals)
                if sig:
                    bar.close()
                    raise stop.interrupted(sig, path, epoch, step + 1)  # type: ignore[union-attr]
    bar.close()
    means = {f"train_{k}": all_reduce_mean(v / max(n_iter, 1), task.info.device) for k, v in totals.items()}
    return {**means, "img_per_s": tput.rate()}
