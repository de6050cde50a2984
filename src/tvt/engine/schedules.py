"""Per-iteration and per-epoch schedules: LR, WD, EMA momentum, w_t, teacher temperature.

Spec §4.2, §4.7, §4.8 and §5. Every schedule is a plain numpy array indexed by the global
iteration ``it = epoch * niter_per_ep + step`` (or by epoch for the teacher temperature).
"""

from __future__ import annotations

import numpy as np

from tvt.errors import ConfigError


def _check_counts(epochs: int, niter_per_ep: int, what: str) -> None:
    if epochs < 1:
        raise ConfigError(f"{what}: epochs must be >= 1, got {epochs}; set a positive epoch count")
    if niter_per_ep < 1:
        raise ConfigError(
            f"{what}: {niter_per_ep} iterations per epoch; the training set yields no full batch. "
            "Use a smaller batch size (or fewer accumulation steps) or more training images"
        )


def _cosine(base: float, final: float, length: int) -> np.ndarray:
    # v_j = final + 0.5 (base - final)(1 + cos(pi j / L)), j = 0..L-1: the last value is never
    # exactly `final` (spec §4.8).
    j = np.arange(length)
    return final + 0.5 * (base - final) * (1.0 + np.cos(np.pi * j / max(length, 1)))


def cosine_scheduler(
    base: float,
    final: float,
    epochs: int,
    niter_per_ep: int,
    warmup_epochs: int = 0,
    start_warmup_value: float = 0.0,
    early_schedule_epochs: int = 0,
) -> np.ndarray:
    """Linear warm-up then cosine from ``base`` to ``final``; shape [epochs * niter_per_ep].

    The warm-up is ``linspace(start_warmup_value, base, warmup_epochs * niter_per_ep)`` with
    both ends included, so iteration 0 has ``start_warmup_value``; with ``warmup_epochs ==
    epochs`` the whole schedule is the warm-up. With
    ``early_schedule_epochs > 0`` the cosine ends at that epoch and ``final`` is held after it.
    Stage-A EMA momentum: ``cosine_scheduler(0.996, 1, epochs, niter)``.
    """
    _check_counts(epochs, niter_per_ep, "cosine schedule")
    end_epochs = early_schedule_epochs if early_schedule_epochs > 0 else epochs
    if early_schedule_epochs < 0 or end_epochs > epochs:
        raise ConfigError(
            f"early_schedule_epochs={early_schedule_epochs} must lie in [0, epochs={epochs}]"
        )
    # warmup_epochs == epochs is allowed (a pure warm-up, as DINO's code gives): short smoke
    # runs such as `--set train.epochs=1` with warmup_epochs=1 rely on it.
    if warmup_epochs < 0 or warmup_epochs > end_epochs:
        raise ConfigError(
            f"warmup_epochs={warmup_epochs} must lie in [0, "
            f"{'early_schedule_epochs' if early_schedule_epochs > 0 else 'epochs'}={end_epochs}]; "
            "lower warmup_epochs or train for more epochs"
        )
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base, warmup_iters)
    cosine = _cosine(base, final, end_epochs * niter_per_ep - warmup_iters)
    hold = np.full((epochs - end_epochs) * niter_per_ep, float(final))
    return np.concatenate([warmup, cosine, hold]).astype(np.float64)


def align_uniform_schedule(
    weight: float, epochs: int, niter_per_ep: int, au_epochs: int
) -> np.ndarray:
    """``w_t`` per iteration, shape [epochs * niter_per_ep] (spec §4.7).

    0 for epoch 0; then ``λ/2 (1 - cos(pi j / L))`` for ``j = 0..L-1`` with
    ``L = (au_epochs - 1) * niter_per_ep`` (``(epochs - 1) * niter_per_ep`` when
    ``au_epochs == 0``); then ``λ`` from epoch ``au_epochs`` on. Truncated to the run length
    when ``au_epochs > epochs``.
    """
    _check_counts(epochs, niter_per_ep, "align/uniform schedule")
    if au_epochs < 0:
        raise ConfigError(f"align_uniform_epochs must be >= 0, got {au_epochs}")
    ramp_epochs = (au_epochs if au_epochs > 0 else epochs) - 1
    ramp_len = max(ramp_epochs, 0) * niter_per_ep
    zeros = np.zeros(niter_per_ep)
    # A cosine from 0 up to λ is the generic cosine with base 0 and final λ.
    ramp = _cosine(0.0, weight, ramp_len)
    total = epochs * niter_per_ep
    rest = np.full(max(total - niter_per_ep - ramp_len, 0), float(weight))
    return np.concatenate([zeros, ramp, rest])[:total].astype(np.float64)


def teacher_temp_schedule(
    warmup_temp: float, temp: float, warmup_epochs: int, epochs: int
) -> np.ndarray:
    """Teacher temperature per epoch, shape [epochs] (spec §4.2).

    ``linspace(warmup_temp, temp, warmup_epochs)`` (end point included) then ``temp``: 0.04 ->
    0.07 over 5 epochs gives [0.04, 0.0475, 0.055, 0.0625, 0.07, 0.07, ...]. Truncated to
    ``epochs`` when the warm-up is longer than the run.
    """
    if epochs < 1:
        raise ConfigError(f"teacher temperature schedule: epochs must be >= 1, got {epochs}")
    if warmup_epochs < 0:
        raise ConfigError(f"warmup_teacher_temp_epochs must be >= 0, got {warmup_epochs}")
    warm = np.linspace(warmup_temp, temp, warmup_epochs)
    rest = np.full(max(epochs - warmup_epochs, 0), float(temp))
    return np.concatenate([warm, rest])[:epochs].astype(np.float64)


def accumulation_slices(batch_size: int, accum_steps: int) -> list[slice]:
    """Sub-batch rows of one optimizer step, as the official loops cut them.

    ``b = batch_size // accum_steps`` rows each; when ``batch_size % accum_steps != 0`` there are
    ``G' = accum_steps + ceil(remainder / b)`` sub-batches and the last is shorter. Each sub-batch
    loss is divided by ``G'`` (stage A); stage B divides by ``G' + G'/skt_factor``.
    """
    if batch_size < 1 or accum_steps < 1 or accum_steps > batch_size:
        raise ConfigError(f"accum_steps ({accum_steps}) must be between 1 and the batch size ({batch_size})")
    b = batch_size // accum_steps
    steps = accum_steps + -(-(batch_size % accum_steps) // b)
    return [slice(i * b, min((i + 1) * b, batch_size)) for i in range(steps)]
