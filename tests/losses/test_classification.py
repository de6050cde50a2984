"""Label-smoothed CE against the spec formula, and not torch's built-in smoothing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tvt.losses.classification import smoothed_cross_entropy


def _log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    lse = m + math.log(sum(math.exp(x - m) for x in row))
    return [x - lse for x in row]


def test_hand_computed_three_classes():
    logits = [[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]]
    target = [0, 2]
    eps, c = 0.1, 3
    expected = 0.0
    for row, y in zip(logits, target):
        lp = _log_softmax(row)
        q = [1 - eps if k == y else eps / (c - 1) for k in range(c)]  # 0.9, 0.05, 0.05
        expected += -sum(qk * lk for qk, lk in zip(q, lp))
    expected /= 2
    got = smoothed_cross_entropy(torch.tensor(logits), torch.tensor(target), 0.1)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_differs_from_torch_label_smoothing():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
    target = torch.tensor([0, 2])
    ours = smoothed_cross_entropy(logits, target, 0.1)
    theirs = F.cross_entropy(logits, target, label_smoothing=0.1)
    assert abs(ours.item() - theirs.item()) > 1e-3


def test_no_smoothing_is_plain_cross_entropy_and_grad_flows():
    logits = torch.randn(5, 4, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 1])
    ours = smoothed_cross_entropy(logits, target, 0.0)
    assert ours.item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    ours.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        smoothed_cross_entropy(torch.randn(3, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        smoothed_cross_entropy(torch.randn(3, 1), torch.tensor([0, 0, 0]), 0.1)
