"""Schedules against the worked values of spec §4.2, §4.7, §4.8 and §5."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tvt.engine.schedules import align_uniform_schedule, cosine_scheduler, teacher_temp_schedule
from tvt.errors import ConfigError


def test_lr_warmup_inclusive_then_cosine():
    base, final, n = 1e-3, 1e-6, 10
    s = cosine_scheduler(base, final, 50, n, warmup_epochs=5)
    assert s.shape == (500,)
    assert s[0] == 0.0  # iteration 0 has LR 0
    assert s[49] == pytest.approx(base)  # the linspace includes its end point
    assert s[1] == pytest.approx(base / 49)
    length = 450
    assert s[50] == pytest.approx(base)  # cosine starts at the peak
    assert s[50 + length // 2] == pytest.approx(final + 0.5 * (base - final))
    last = final + 0.5 * (base - final) * (1 + math.cos(math.pi * (length - 1) / length))
    assert s[-1] == pytest.approx(last) and s[-1] > final  # never exactly final


def test_wd_cosine_rises_without_warmup():
    s = cosine_scheduler(0.04, 0.4, 3, 4)
    expected = [0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi * j / 12)) for j in range(12)]
    assert np.allclose(s, expected)
    assert s[0] == pytest.approx(0.04) and s[-1] < 0.4


def test_early_schedule_finishes_then_holds_final():
    s = cosine_scheduler(1.0, 0.0, 10, 2, warmup_epochs=1, early_schedule_epochs=4)
    assert s.shape == (20,)
    assert np.allclose(s[:2], [0.0, 1.0])
    cos = [0.5 * (1 + math.cos(math.pi * j / 6)) for j in range(6)]
    assert np.allclose(s[2:8], cos)
    assert np.all(s[8:] == 0.0)


def test_warmup_over_the_whole_run():
    s = cosine_scheduler(1.0, 0.0, 1, 3, warmup_epochs=1)  # e.g. a one-epoch smoke run
    assert s.tolist() == [0.0, 0.5, 1.0]


def test_stage_a_momentum_schedule():
    m = cosine_scheduler(0.996, 1.0, 4, 5)
    assert m[0] == pytest.approx(0.996)
    assert np.all(np.diff(m) > 0) and m[-1] < 1.0


@pytest.mark.parametrize("kwargs", [
    dict(epochs=5, niter_per_ep=0),
    dict(epochs=0, niter_per_ep=3),
    dict(epochs=5, niter_per_ep=3, warmup_epochs=6),
    dict(epochs=5, niter_per_ep=3, warmup_epochs=-1),
    dict(epochs=5, niter_per_ep=3, early_schedule_epochs=6),
    dict(epochs=5, niter_per_ep=3, warmup_epochs=3, early_schedule_epochs=2),
])
def test_cosine_bad_arguments_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        cosine_scheduler(1.0, 0.0, **kwargs)


def test_align_uniform_schedule_table():
    lam, n, epochs, au = 2.0, 4, 30, 20
    w = align_uniform_schedule(lam, epochs, n, au)
    assert w.shape == (epochs * n,)
    assert np.all(w[:n] == 0.0)  # epoch 0 held at 0
    length = (au - 1) * n
    for j in (0, 1, length // 2, length - 1):
        assert w[n + j] == pytest.approx(lam / 2 * (1 - math.cos(math.pi * j / length)))
    assert w[n + length // 2] == pytest.approx(1.0)
    assert w[au * n - 1] < lam  # just below λ at the end of the ramp
    assert np.all(w[au * n:] == lam)


def test_align_uniform_edge_cases():
    w0 = align_uniform_schedule(2.0, 5, 3, 0)  # ramp over every epoch after the first
    length = 4 * 3
    assert np.all(w0[:3] == 0.0)
    assert np.allclose(w0[3:], [1 - math.cos(math.pi * j / length) for j in range(length)])
    w1 = align_uniform_schedule(2.0, 3, 2, 1)  # no ramp
    assert w1.tolist() == [0.0, 0.0, 2.0, 2.0, 2.0, 2.0]
    w_long = align_uniform_schedule(2.0, 3, 2, 20)  # longer than the run: truncated
    assert w_long.shape == (6,) and w_long[-1] < 0.1
    assert align_uniform_schedule(2.0, 1, 5, 20).tolist() == [0.0] * 5
    with pytest.raises(ConfigError):
        align_uniform_schedule(2.0, 3, 0, 20)
    with pytest.raises(ConfigError):
        align_uniform_schedule(2.0, 3, 2, -1)


def test_teacher_temperature_per_epoch():
    t = teacher_temp_schedule(0.04, 0.07, 5, 8)
    assert np.allclose(t, [0.04, 0.0475, 0.055, 0.0625, 0.07, 0.07, 0.07, 0.07])
    assert np.allclose(teacher_temp_schedule(0.04, 0.07, 5, 3), [0.04, 0.0475, 0.055])
    assert np.allclose(teacher_temp_schedule(0.04, 0.07, 0, 2), [0.07, 0.07])
    with pytest.raises(ConfigError):
        teacher_temp_schedule(0.04, 0.07, 5, 0)
