"""Bookkeeping of a `tvt demo` folder: what it was made with, and one progress line over all stages.

``demo.json`` records the arguments that decide the results (dataset seed and class count, the
stand-in settings, the resolved config with paths relative to the folder). A folder made with other
arguments is refused, so ``--seed 1`` into a ``--seed 0`` folder never silently reuses the old
run; a folder made with the same arguments resumes stage by stage.

:class:`Overall` draws one line (elapsed time, ETA) over every stage, above the per-epoch bars. The
training loops are not touched: while a stage runs, a thread reads the iteration counter from the
stage's ``log.jsonl`` (what the loops write anyway).
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tvt import config as config_mod
from tvt.config import Config
from tvt.errors import ConfigError
from tvt.files import write_json

MANIFEST = "demo.json"
# Path-valued keys: stored relative to the demo folder, so a moved folder still resumes.
_PATH_KEYS = (("data", "root"), ("train", "output_dir"), ("train", "image_teacher"), ("train", "sketch_teacher"),
              ("sketch", "output_dir"), ("sketch", "init"), ("eval", "checkpoint"), ("eval", "output_dir"))


def manifest(cfg: Config, out: Path, **args: Any) -> dict[str, Any]:
    """The arguments that decide a demo's results: ``args`` plus the config (paths relative to ``out``)."""
    tree = config_mod.as_plain(cfg)
    for section, key in _PATH_KEYS:
        value = tree[section][key]
        if value and Path(value).is_relative_to(out):
            tree[section][key] = str(Path(value).relative_to(out))
    return {"version": 1, **args, "config": tree}


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} there, {b!r} now")
    return diffs


def claim_folder(out: Path, record: dict[str, Any]) -> bool:
    """Refuse ``out`` when it holds another demo or other files; write ``demo.json``. True = resuming."""
    path = out / MANIFEST
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} is unreadable ({exc}); delete the folder {out} or choose another --out") from exc
        diffs = _differences(old, record)
        if diffs:
            shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
            raise ConfigError(f"{out} holds a demo made with other arguments ({shown}). Its models would not match "
                              f"this run: choose another --out, or delete {out} to start again")
        return True
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not a demo folder (no {MANIFEST}); choose another --out or an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    return False


def last_iteration(log_path: Path) -> int:
    """The largest ``it`` of the step records in a training ``log.jsonl`` (-1 when none yet)."""
    best = -1
    try:
        with log_path.open() as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:  # a line being written right now
                    continue
                if rec.get("type") == "step":
                    best = max(best, int(rec.get("it", -1)))
    except OSError:
        return -1
    return best


class Overall:
    """One progress line over the stages of the demo: percent of the planned work, elapsed, ETA.

    ``weights``: stage name -> share of the demo's time (measured on 2 CPU cores; the ETA is the
    elapsed time scaled by the work left, so it corrects itself as stages finish).
    """

    def __init__(self, weights: dict[str, float], enabled: bool) -> None:
        from tqdm import tqdm

        self.weights, self.done = weights, 0.0
        total = sum(weights.values())
        self.bar = tqdm(total=round(total, 3), desc="demo", position=0, leave=True, disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True, bar_format="{desc}: {percentage:3.0f}% |{bar}| elapsed {elapsed}, "
                                                       "about {remaining} left{postfix}")

    def _set(self, value: float) -> None:
        self.bar.n = round(min(value, self.bar.total), 3)
        self.bar.refresh()

    @contextmanager
    def stage(self, name: str, label: str, log: Path | None = None, steps: int = 0) -> Iterator[None]:
        """Run one stage; with ``log`` and ``steps``, follow its iteration counter meanwhile."""
        self.bar.set_postfix_str(label, refresh=True)
        stop = threading.Event()
        weight = self.weights[name]

        def follow() -> None:
            while not stop.wait(1.0):
                it = last_iteration(log) if log is not None else -1
                self._set(self.done + weight * min(1.0, (it + 1) / steps))

        thread = threading.Thread(target=follow, daemon=True) if (log is not None and steps > 0) else None
        if thread:
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread:
                thread.join()
        self.done += weight
        self._set(self.done)

    def close(self) -> None:
        self.bar.close()
