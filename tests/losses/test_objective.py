"""The stage-B objective: term weights, centre bookkeeping, and that it can be minimised."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tvt.losses import (
    CenterAlignment, DINOCenter, dino_loss, instance_alignment, smoothed_cross_entropy,
    tvt_loss, uniformity,
)

K, C, D, N = 8, 3, 4, 6


@dataclass
class Out:
    dino_logits: torch.Tensor
    cls_logits: torch.Tensor
    f: torch.Tensor


def _batch(seed: int = 0) -> tuple[Out, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = Out(torch.randn(N, K, generator=g, requires_grad=True),
              torch.randn(N, C, generator=g, requires_grad=True),
              F.normalize(torch.randn(N, D, generator=g), dim=1).requires_grad_(True))
    return out, torch.randn(N, K, generator=g), torch.tensor([0, 1, 2, 0, 1, 1])


def _modules() -> tuple[DINOCenter, CenterAlignment]:
    ca = CenterAlignment(C, dim=D)
    # give the sketch side some centres so CA is not the constant 1
    ca(F.normalize(torch.randn(3, D, generator=torch.Generator().manual_seed(9)), dim=1),
       torch.tensor([0, 1, 2]), "skt")
    return DINOCenter(K), ca


@pytest.mark.parametrize("w_t", [0.0, 1.0, 2.0])
def test_weights_of_the_terms(w_t: float):
    out, t, y = _batch()
    dc, ca = _modules()
    ca_ref = copy.deepcopy(ca)
    kd = dino_loss([out.dino_logits], [t], torch.zeros(1, K), 0.04)
    ce = smoothed_cross_entropy(out.cls_logits, y, 0.1)
    uni = uniformity(out.f)
    ca_val = ca_ref(out.f, y, "img")
    res = tvt_loss(out, t, y, "img", dino_center=dc, ca=ca, teacher_temp=0.04, w_t=w_t)
    # w_t = 0 -> KD + CE only; w_t = λ = 2 -> KD + CE + 0.5 UNI + 2 CA
    expected = kd + ce + (w_t * 0.5 / 2.0) * uni + w_t * ca_val
    assert res["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert res["objective"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(res) == {"objective", "loss", "loss/kd", "loss/ce", "loss/uni", "loss/ca"}
    assert res["loss/kd"].item() == pytest.approx(kd.item(), rel=1e-6)
    assert res["loss/ca"].item() == pytest.approx(ca_val.item(), rel=1e-6)
    assert res["objective"].requires_grad
    assert not any(res[k].requires_grad for k in res if k != "objective")
    # CA centres move even when w_t = 0 (they are updated every sub-step)
    assert torch.allclose(ca.center_img, ca_ref.center_img)
    assert ca.center_img.abs().sum() > 0


def test_dino_centre_updated_after_the_loss():
    out, t, y = _batch()
    dc, ca = _modules()
    res = tvt_loss(out, t, y, "skt", dino_center=dc, ca=ca, teacher_temp=0.07, w_t=0.0)
    kd_zero_centre = dino_loss([out.dino_logits], [t], torch.zeros(1, K), 0.07)
    assert res["loss/kd"].item() == pytest.approx(kd_zero_centre.item(), rel=1e-6)
    assert torch.allclose(dc.center("skt"), 0.1 * t.mean(0, keepdim=True), atol=1e-7)
    assert torch.equal(dc.center("img"), torch.zeros(1, K))


def test_align_uniform_off_leaves_ca_untouched():
    out, t, y = _batch()
    dc, ca = _modules()
    before = ca.center_img.clone()
    res = tvt_loss(out, t, y, "img", dino_center=dc, ca=ca, teacher_temp=0.04, w_t=2.0,
                   use_align_uniform=False)
    assert res["loss/uni"].item() == 0.0 and res["loss/ca"].item() == 0.0
    assert res["loss"].item() == pytest.approx((res["loss/kd"] + res["loss/ce"]).item(), rel=1e-6)
    assert torch.equal(ca.center_img, before)
    with pytest.raises(ValueError):
        tvt_loss(out, t, y, "photo", dino_center=dc, ca=ca, teacher_temp=0.04, w_t=0.0)


def test_two_crops_add_instance_alignment():
    a, ta, y = _batch(0)
    b, tb, _ = _batch(1)
    dc, ca = _modules()
    ca_ref = copy.deepcopy(ca)
    both = Out(torch.cat([a.dino_logits, b.dino_logits]), torch.cat([a.cls_logits, b.cls_logits]), torch.cat([a.f, b.f]))
    res = tvt_loss(both, torch.cat([ta, tb]), y, "img", dino_center=dc, ca=ca, teacher_temp=0.04, w_t=0.0,
                   use_align_uniform=False, n_crops=2, global_crops=2)
    kd = dino_loss([a.dino_logits, b.dino_logits], [ta, tb], torch.zeros(1, K), 0.04)
    ce = (smoothed_cross_entropy(a.cls_logits, y) + smoothed_cross_entropy(b.cls_logits, y)) / 2
    inst = instance_alignment([a.f, b.f])
    # instance alignment has weight 1 even with use_align_uniform off [Q7]
    assert res["loss"].item() == pytest.approx((kd + ce + inst).item(), rel=1e-6)
    assert res["loss/inst"].item() == pytest.approx(inst.item(), rel=1e-6)
    # [Q7]: with 2 global crops CA runs whatever use_align_uniform says, so the centres move
    ca_ref(torch.cat([a.f, b.f]), y.repeat(2), "img")
    torch.testing.assert_close(ca.center_img, ca_ref.center_img)
    assert torch.allclose(dc.center("img"), 0.1 * torch.cat([ta, tb]).mean(0, keepdim=True))


class TinyStudent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(10, 16)
        self.dino = nn.Linear(16, K)
        self.cls = nn.Linear(16, C)
        self.proj = nn.Linear(16, D)

    def forward(self, x: torch.Tensor) -> Out:
        h = torch.tanh(self.trunk(x))
        return Out(self.dino(h), self.cls(h), F.normalize(self.proj(h), dim=1))


def test_adamw_steps_reduce_the_total():
    torch.manual_seed(0)
    student, teacher = TinyStudent(), nn.Linear(10, K)
    x = {"img": torch.randn(N, 10), "skt": torch.randn(N, 10)}
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    dc, ca = DINOCenter(K), CenterAlignment(C, dim=D)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)

    def step(modality: str) -> float:
        with torch.no_grad():
            t = teacher(x[modality])
        res = tvt_loss(student(x[modality]), t, y, modality, dino_center=dc, ca=ca,
                       teacher_temp=0.1, w_t=2.0)
        opt.zero_grad()
        res["objective"].backward()
        opt.step()
        return res["loss"].item()

    first = step("img") + step("skt")
    for _ in range(12):
        last = step("img") + step("skt")
    assert last < 0.6 * first
