"""DINO loss and centres against hand-computed values and brute-force pair enumeration."""

from __future__ import annotations

import math

import pytest
import torch

from tvt.losses.dino import DINOCenter, dino_loss


def _pair_ce(t: list[float], s: list[float], c: list[float], tt: float, ts: float) -> float:
    """-Σ_k softmax((t-c)/tt)_k log softmax(s/ts)_k for one row, in plain math."""
    zt = [(a - b) / tt for a, b in zip(t, c)]
    mt = max(zt)
    et = [math.exp(z - mt) for z in zt]
    p = [e / sum(et) for e in et]
    zs = [a / ts for a in s]
    ms = max(zs)
    lse = ms + math.log(sum(math.exp(z - ms) for z in zs))
    return -sum(pk * (z - lse) for pk, z in zip(p, zs))


def test_single_pair_hand_value():
    # teacher [1, 0], centre 0, tt = 1 -> p = [e/(e+1), 1/(e+1)];
    # student [0.2, 0] / 0.1 = [2, 0] -> log p_s = [2 - log(e^2+1), -log(e^2+1)]
    p0, p1 = math.e / (math.e + 1), 1 / (math.e + 1)
    lse = math.log(math.exp(2) + 1)
    expected = -(p0 * (2 - lse) + p1 * (-lse))
    loss = dino_loss([torch.tensor([[0.2, 0.0]])], [torch.tensor([[1.0, 0.0]])],
                     torch.zeros(1, 2), teacher_temp=1.0, student_temp=0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_centre_is_subtracted_and_batch_is_averaged():
    t = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    s = torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.4, -0.4]])
    c = torch.tensor([[0.2, -0.1, 0.3]])
    loss = dino_loss([s], [t], c, teacher_temp=0.04, student_temp=0.1)
    rows = [_pair_ce(t[i].tolist(), s[i].tolist(), c[0].tolist(), 0.04, 0.1) for i in range(2)]
    assert loss.item() == pytest.approx(sum(rows) / 2, rel=1e-5)


@pytest.mark.parametrize("n_teacher,n_student,n_pairs", [(1, 1, 1), (2, 2, 2), (2, 12, 22)])
def test_pair_counting(n_teacher: int, n_student: int, n_pairs: int):
    g = torch.Generator().manual_seed(n_student)
    teachers = [torch.randn(3, 5, generator=g) for _ in range(n_teacher)]
    students = [torch.randn(3, 5, generator=g) for _ in range(n_student)]
    center = torch.randn(1, 5, generator=g)
    pairs = [(iq, v) for iq in range(n_teacher) for v in range(n_student)
             if v != iq or (n_teacher == 1 and n_student == 1)]
    assert len(pairs) == n_pairs
    ref = 0.0
    for iq, v in pairs:
        ref += sum(_pair_ce(teachers[iq][i].tolist(), students[v][i].tolist(),
                            center[0].tolist(), 0.07, 0.1) for i in range(3)) / 3
    loss = dino_loss(students, teachers, center, teacher_temp=0.07)
    assert loss.item() == pytest.approx(ref / n_pairs, rel=1e-5)


def test_gradient_reaches_student_only():
    t = torch.randn(4, 6, requires_grad=True)
    s = torch.randn(4, 6, requires_grad=True)
    dino_loss([s], [t], torch.zeros(1, 6), 0.05).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_center_buffers_names_and_zero_init():
    m = DINOCenter(7)
    assert set(m.state_dict()) == {"center_img", "center_skt"}
    assert torch.equal(m.center("img"), torch.zeros(1, 7))
    single = DINOCenter(7, names=("center",))
    assert set(single.state_dict()) == {"center"}
    with pytest.raises(ValueError):
        m.center("photo")


def test_center_update_matches_reference():
    m = DINOCenter(3, momentum=0.9)
    a = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    b = torch.tensor([[0.0, 0.0, 6.0]])
    m.update("img", a)  # 0.1 * [2, 2, 2]
    assert torch.allclose(m.center("img"), torch.tensor([[0.2, 0.2, 0.2]]))
    m.update("img", [a, b])  # mean over 3 rows = [4/3, 4/3, 10/3]
    expected = [0.9 * 0.2 + 0.1 * 4 / 3, 0.9 * 0.2 + 0.1 * 4 / 3, 0.9 * 0.2 + 0.1 * 10 / 3]
    assert torch.allclose(m.center("img"), torch.tensor([expected]), atol=1e-7)
    assert torch.equal(m.center("skt"), torch.zeros(1, 3))  # the other centre is untouched


def test_center_update_carries_no_grad():
    m = DINOCenter(2)
    t = torch.randn(3, 2, requires_grad=True)
    m.update("skt", t * 2)
    assert not m.center("skt").requires_grad
