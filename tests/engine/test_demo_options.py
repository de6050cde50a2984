"""The training options the demo and its ablation add: KD weights, the classifier's LR, the stand-in head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tvt.engine.common import param_groups
from tvt.engine.standin import class_scores
from tvt.engine.train_tvt import _groups
from tvt.losses import CenterAlignment, DINOCenter, dino_loss, tvt_loss
from tvt.models.weights import load_student


class _Out:
    def __init__(self, g: torch.Generator) -> None:
        self.dino_logits = torch.randn(6, 8, generator=g)
        self.cls_logits = torch.randn(6, 3, generator=g)
        self.f = F.normalize(torch.randn(6, 4, generator=g), dim=1)


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_kd_weight_scales_only_the_distillation_term(weight: float):
    out, t = _Out(torch.Generator().manual_seed(0)), torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    kw = dict(teacher_temp=0.04, w_t=1.0)
    full = tvt_loss(out, t, y, "img", dino_center=DINOCenter(8), ca=CenterAlignment(3, dim=4), **kw)
    part = tvt_loss(out, t, y, "img", dino_center=DINOCenter(8), ca=CenterAlignment(3, dim=4), kd_weight=weight, **kw)
    kd = dino_loss([out.dino_logits], [t], torch.zeros(1, 8), 0.04)
    assert part["loss/kd"].item() == pytest.approx(kd.item(), rel=1e-6)  # still logged
    assert (full["loss"] - part["loss"]).item() == pytest.approx((1 - weight) * kd.item(), rel=1e-5)


def test_fc_lr_mult_moves_only_the_classifier_into_its_own_groups(tiny_ckpt):
    student = load_student(tiny_ckpt)
    base = param_groups(student, 0.1)
    assert _groups(student, 0.1, 1.0) == base  # the paper's four groups, untouched
    groups = _groups(student, 0.1, 20.0)
    seen = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in student.parameters() if p.requires_grad]
    assert sorted(seen) == sorted(trainable) and len(seen) == len(set(seen))
    fc = {id(student.head_fusion.fc.weight): True, id(student.head_fusion.fc.bias): False}
    for g in groups:
        for p in g["params"]:
            if id(p) in fc:
                assert g["lr_mult"] == 20.0 and g["regularised"] == fc[id(p)]
            else:
                assert g["lr_mult"] in (0.1, 1.0)


def test_class_scores_is_logsumexp_over_each_class_prototypes():
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    got = class_scores(logits, 3, temp=0.5)  # 10 outputs, 3 classes: the 10th prototype is unused
    want = torch.stack([torch.logsumexp(logits[:, [k for k in range(9) if k % 3 == c]] / 0.5, dim=1)
                        for c in range(3)], dim=1)
    torch.testing.assert_close(got, want)
