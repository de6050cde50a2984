"""DINO and fusion heads (spec §2.3, §2.5)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from tvt.models.heads import DINOHead, FusionHead
from tvt.models.vit import ViTArch, build_vit, count_parameters
from tvt.models.wrappers import Teacher


def test_dino_head_keys_shapes_and_frozen_g():
    head = DINOHead(32, out_dim=64, hidden_dim=32, bottleneck_dim=16, nlayers=3)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == {
        "mlp.0.weight": (32, 32), "mlp.0.bias": (32,), "mlp.2.weight": (32, 32), "mlp.2.bias": (32,),
        "mlp.4.weight": (16, 32), "mlp.4.bias": (16,),
        "last_layer.weight_g": (64, 1), "last_layer.weight_v": (64, 16),
    }
    assert torch.equal(head.last_layer.weight_g, torch.ones(64, 1))
    assert not head.last_layer.weight_g.requires_grad
    assert DINOHead(32, 64, 32, 16, norm_last_layer=False).last_layer.weight_g.requires_grad
    assert all(torch.equal(head.mlp[i].bias, torch.zeros_like(head.mlp[i].bias)) for i in (0, 2, 4))
    assert set(DINOHead(32, 64, 32, 16, nlayers=1).state_dict()) == {
        "mlp.weight", "mlp.bias", "last_layer.weight_g", "last_layer.weight_v"}
    assert [k for k in DINOHead(32, 64, 32, 16, nlayers=2).state_dict() if k.startswith("mlp")] == [
        "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]


def test_dino_head_matches_torch_weight_norm(tools):
    head = tools.randomize_(DINOHead(32, out_dim=64, hidden_dim=32, bottleneck_dim=16), 0)
    ref_last = weight_norm(torch.nn.Linear(16, 64, bias=False), dim=0)
    with torch.no_grad():
        ref_last.parametrizations.weight.original0.copy_(head.last_layer.weight_g)
        ref_last.parametrizations.weight.original1.copy_(head.last_layer.weight_v)
    x = torch.randn(5, 32)
    h = x
    for i, layer in enumerate(head.mlp):
        h = layer(h)
        if i < 4:
            assert isinstance(layer, torch.nn.Linear if i % 2 == 0 else torch.nn.GELU)
    z = h / h.norm(dim=1, keepdim=True)
    assert torch.allclose(head(x), ref_last(z), atol=1e-5)
    fea = head(x, return_fea=True)
    assert fea.shape == (5, 16) and torch.allclose(fea, z, atol=1e-6)
    assert torch.allclose(fea.norm(dim=1), torch.ones(5), atol=1e-6)


def test_fusion_head_outputs_and_init():
    torch.manual_seed(0)
    head = FusionHead(64, num_classes=500, hidden_dim=256, bottleneck_dim=128)
    assert set(head.state_dict()) == {f"mlp.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")} | {
        "fc.weight", "fc.bias"}
    for m in (head.mlp[0], head.mlp[2], head.mlp[4], head.fc):
        assert torch.equal(m.bias, torch.zeros_like(m.bias))
        assert m.weight.std().item() == pytest.approx(0.02, rel=0.1)
    x = torch.randn(6, 64)
    logits, f = head(x)
    ref_f = F.normalize(head.mlp(x), dim=-1)
    assert torch.allclose(f, ref_f, atol=1e-6) and torch.allclose(f.norm(dim=1), torch.ones(6), atol=1e-6)
    assert torch.allclose(logits, f @ head.fc.weight.T + head.fc.bias, atol=1e-6)
    assert logits.shape == (6, 500)


def test_parameter_counts_spec_2_5():
    with torch.device("meta"):
        dino = DINOHead(384)
        fusion = {c: FusionHead(384, c) for c in (104, 100, 220, 80)}
        teacher = Teacher(build_vit(ViTArch()), DINOHead(384))
    assert count_parameters(dino) == 22_352_128
    assert count_parameters(dino.mlp) == 5_509_376
    assert {c: count_parameters(h) for c, h in fusion.items()} == {
        104: 5_536_104, 100: 5_535_076, 220: 5_565_916, 80: 5_529_936}
    assert count_parameters(teacher) == 44_022_400
