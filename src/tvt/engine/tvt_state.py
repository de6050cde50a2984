"""Stage-B checkpoints: what is saved, how it is restored, where it is written.

A checkpoint holds everything a bit-exact CPU resume needs: student, optimizer, scaler, both
loss modules' buffers, RNG states and the position ``(epoch, step)``; a mid-epoch checkpoint
(``step > 0``, written on a signal or every ``train.checkpoint_every_steps``) also holds the
epoch's running loss sums so the epoch log line comes out the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tvt import config as config_mod
from tvt.engine import checkpoint as ckpt
from tvt.engine.checkpoint import Position
from tvt.errors import ConfigError

if TYPE_CHECKING:
    from tvt.engine.train_tvt import Run


def state_dict(run: Run, epoch: int, step: int = 0, totals: dict[str, float] | None = None) -> dict[str, Any]:
    """The checkpoint at position ``(epoch, step)``: ``epoch`` epochs done plus ``step`` steps."""
    bare = run.bare_student
    return {
        "format": "tvt", "version": 1, "stage": "tvt",
        "student": bare.state_dict(),
        "arch": {"token_num": run.cfg.model.token_num, "pos_resample": run.cfg.model.pos_resample,
                 "num_heads": bare.backbone.blocks[0].attn.num_heads},
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler else {},
        "dino_loss": run.dino_center.state_dict(),
        "ca_loss": run.ca.state_dict(),
        "epoch": epoch, "step": step, "steps_per_epoch": run.n_iter,
        "epoch_totals": dict(totals or {}),
        "world_size": run.dist.world_size * run.virtual,
        "config": config_mod.as_plain(run.cfg),
        "train_classes": list(run.split.train_classes),
        "test_classes": list(run.split.test_classes),
        "dataset": run.cfg.data.dataset, "split": run.cfg.data.split,
        "teachers": {"image": str(run.cfg.train.image_teacher), "sketch": str(run.cfg.train.sketch_teacher)},
        "rng": ckpt.rng_state(),
    }


def load_state(run: Run, state: dict[str, Any]) -> Position:
    """Restore a checkpoint into ``run``; returns where to continue."""
    if state.get("stage") != "tvt" or state.get("train_classes") != list(run.split.train_classes):
        raise ConfigError("the checkpoint in the output directory belongs to a different run (stage or training classes "
                          f"differ); use another train.output_dir or delete {run.out_dir / ckpt.LATEST}")
    if state.get("step") and state.get("steps_per_epoch", run.n_iter) != run.n_iter:
        raise ConfigError(f"the mid-epoch checkpoint in {run.out_dir} was written with {state['steps_per_epoch']} steps "
                          f"per epoch, this run has {run.n_iter} (batch size, world size or data changed); resume "
                          "with the same settings or delete the checkpoint")
    run.bare_student.load_state_dict(state["student"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.scaler and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.dino_center.load_state_dict(state["dino_loss"])
    run.ca.load_state_dict(state["ca_loss"])
    return ckpt.position(state)


def save(run: Run, epoch: int, step: int = 0, totals: dict[str, float] | None = None) -> Path | None:
    """Write ``checkpoint.pth`` (previous one kept as ``checkpoint-prev.pth``) on rank 0; at an
    epoch boundary also ``checkpoint-XXXX.pth`` every ``train.save_every`` epochs."""
    if not run.dist.is_main:
        return None
    return ckpt.save_run_files(state_dict(run, epoch, step, totals), run.out_dir, epoch, step, run.cfg.train.save_every)
