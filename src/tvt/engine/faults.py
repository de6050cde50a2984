"""Graceful stop on SIGTERM / SIGINT: finish the optimizer step, save, exit.

The training loops run inside :class:`StopOnSignal`. The first SIGTERM or SIGINT only sets a
flag; after every optimizer step the loop asks :meth:`StopOnSignal.agreed` (an all-reduce under
``torchrun``, so every rank stops after the same step), writes a checkpoint that records the
position inside the epoch, and raises :class:`TrainingInterrupted`. A second signal stops at once
(SIGINT: ``KeyboardInterrupt``; SIGTERM: the default action), the last complete checkpoint is
still on disk.

Exit status: ``TrainingInterrupted`` is a ``KeyboardInterrupt``, so ``tvt train`` prints
``tvt: interrupted`` and exits with 130; its ``exit_code`` attribute is ``128 + signal`` (143 for
SIGTERM) for callers that want the shell convention. Under ``torchrun`` the agent forwards
SIGTERM to the workers and kills them 30 s later (its default), which is the time a step plus a
save may take. ``kill -9`` cannot be caught: it loses the work since the last checkpoint, i.e.
the current epoch, or less with ``train.checkpoint_every_steps`` / ``sketch.checkpoint_every_steps``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from tvt.distributed import all_reduce_max

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after writing ``checkpoint``; rerun the command to resume."""

    def __init__(self, signum: int, checkpoint: Path | None, epoch: int, step: int) -> None:
        self.signum, self.checkpoint, self.epoch, self.step = signum, checkpoint, epoch, step
        self.exit_code = 128 + int(signum)
        name = signal.Signals(signum).name
        where = f"checkpoint {checkpoint}" if checkpoint else "the checkpoint of rank 0"
        super().__init__(f"stopped on {name} at epoch {epoch}, step {step}; saved {where}; run the same command "
                         "again to resume")


class StopOnSignal:
    """Context manager: SIGTERM/SIGINT set :attr:`signum` instead of killing the process.

    Handlers are installed only in the main thread (Python's rule) and the previous handlers are
    restored on exit. ``enabled=False`` makes it inert.
    """

    def __init__(self, enabled: bool = True, signals: tuple[int, ...] = SIGNALS, announce: bool = True) -> None:
        self.enabled, self.signals, self.announce = enabled, signals, announce
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # second signal: the user means it
            self.__exit__()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        if self.announce:  # rank 0 only under torchrun
            print(f"\ntvt: received {signal.Signals(signum).name}: finishing the current step, then saving a checkpoint "
                  "(send it again to stop at once)", file=sys.stderr, flush=True)

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Ask for a stop as a signal would (tests, callers embedding the loop)."""
        self.signum = signum

    def agreed(self, device: torch.device) -> int | None:
        """The signal every rank must stop for (any rank's), or None; a collective under torchrun."""
        return all_reduce_max(self.signum or 0, device) or None

    def interrupted(self, signum: int, checkpoint: Path | None, epoch: int, step: int) -> TrainingInterrupted:
        """The exception to raise after the stop checkpoint was written (announced on stderr)."""
        exc = TrainingInterrupted(signum, checkpoint, epoch, step)
        if self.announce:
            print(f"tvt: {exc}", file=sys.stderr, flush=True)
        return exc
