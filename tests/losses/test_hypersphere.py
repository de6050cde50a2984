"""Uniformity, instance alignment and class-centre alignment against loop references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tvt import distributed as _dist
from tvt.losses.hypersphere import CenterAlignment, instance_alignment, uniformity


def test_uniformity_two_orthogonal_points_is_minus_four():
    # ||[1,0] - [0,1]||^2 = 2 -> log(exp(-2 * 2)) = -4
    assert uniformity(torch.tensor([[1.0, 0.0], [0.0, 1.0]])).item() == pytest.approx(-4.0)


def test_uniformity_matches_double_loop():
    f = F.normalize(torch.randn(6, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    rows = f.tolist()
    terms = []
    for i in range(6):
        for j in range(i + 1, 6):
            sq = sum((a - b) ** 2 for a, b in zip(rows[i], rows[j]))
            terms.append(math.exp(-2.0 * sq))
    expected = math.log(sum(terms) / len(terms))
    assert uniformity(f).item() == pytest.approx(expected, rel=1e-5)
    via_pdist = torch.pdist(f).pow(2).mul(-2).exp().mean().log()
    assert uniformity(f).item() == pytest.approx(via_pdist.item(), rel=1e-5)


def test_uniformity_gradient_finite_with_duplicate_rows():
    f = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    uniformity(f).backward()
    assert torch.isfinite(f.grad).all()
    with pytest.raises(ValueError):
        uniformity(torch.randn(1, 4))


def test_instance_alignment_hand_value():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # pairs: (a,b): mean(2, 0) = 1; (a,c): mean(0, 2) = 1; (b,c): mean(2, 2) = 2 -> mean 4/3
    assert instance_alignment([a, b, c]).item() == pytest.approx(4 / 3)
    with pytest.raises(ValueError):
        instance_alignment([a])


# ---------------------------------------------------------------------------------------------
# Per-sample Python-loop reference of the official description (spec §4.5, [Q12]).

def _ca_reference(state: dict[str, torch.Tensor], f: torch.Tensor, y: torch.Tensor,
                  modality: str, mu: float = 0.9, world: int = 1) -> torch.Tensor:
    other_mod = "skt" if modality == "img" else "img"
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    for i in range(len(y)):  # accumulate sample by sample
        k = int(y[i])
        sums[k] = f[i] if k not in sums else sums[k] + f[i]
        counts[k] = counts.get(k, 0) + 1
    own, other = state[modality], state[other_mod]
    new_own = own.clone()
    terms = []
    for k in sorted(sums):
        c = mu * own[k].detach() + (1 - mu) * sums[k] / counts[k]
        c = c / torch.clamp(c.norm(), min=1e-12)
        new_own[k] = c.detach()
        terms.append(((c - other[k]) ** 2).sum())
    state[modality] = new_own
    return world * sum(terms) / len(terms)


def test_center_alignment_vectorised_equals_loop():
    gen = torch.Generator().manual_seed(1)
    num_classes, dim = 5, 8
    ca = CenterAlignment(num_classes, dim=dim)
    state = {"img": torch.zeros(num_classes, dim), "skt": torch.zeros(num_classes, dim)}
    # alternating modalities; repeated classes; class 4 never seen, class 3 only in sketches
    calls = [("img", [0, 1, 1, 2]), ("skt", [1, 1, 3, 0]), ("img", [2, 2, 2, 0]),
             ("skt", [0, 2, 1, 3]), ("img", [1, 0, 0, 1]), ("skt", [2, 2, 0, 0])]
    for modality, labels in calls:
        raw = torch.randn(len(labels), dim, generator=gen)
        f1 = F.normalize(raw, dim=1).requires_grad_(True)
        f2 = f1.detach().clone().requires_grad_(True)
        y = torch.tensor(labels)
        got = ca(f1, y, modality)
        ref = _ca_reference(state, f2, y, modality)
        assert got.item() == pytest.approx(ref.item(), abs=1e-6)
        got.backward()
        ref.backward()
        assert torch.allclose(f1.grad, f2.grad, atol=1e-6)
        assert torch.allclose(ca.center_img, state["img"], atol=1e-6)
        assert torch.allclose(ca.center_skt, state["skt"], atol=1e-6)
    # seen classes hold unit vectors, the unseen class stays zero
    assert torch.allclose(ca.center_img[:3].norm(dim=1), torch.ones(3), atol=1e-6)
    assert torch.allclose(ca.center_skt[:4].norm(dim=1), torch.ones(4), atol=1e-6)
    assert torch.equal(ca.center_img[3:], torch.zeros(2, dim))
    assert torch.equal(ca.center_skt[4], torch.zeros(dim))


def test_other_centre_zero_adds_exactly_one_and_no_gradient():
    ca = CenterAlignment(3, dim=4)
    f = F.normalize(torch.randn(4, 4, generator=torch.Generator().manual_seed(2)), dim=1)
    f.requires_grad_(True)
    loss = ca(f, torch.tensor([0, 0, 2, 2]), "img")
    assert loss.item() == pytest.approx(1.0, abs=1e-6)
    loss.backward()
    assert f.grad.abs().max().item() < 1e-6


def test_gradient_only_through_current_modality():
    ca = CenterAlignment(2, dim=4)
    gen = torch.Generator().manual_seed(3)
    ca(F.normalize(torch.randn(2, 4, generator=gen), dim=1), torch.tensor([0, 1]), "img")
    img_before = ca.center_img.clone()
    f = F.normalize(torch.randn(2, 4, generator=gen), dim=1).requires_grad_(True)
    loss = ca(f, torch.tensor([0, 1]), "skt")
    loss.backward()
    assert f.grad.abs().sum() > 0
    assert torch.equal(ca.center_img, img_before)  # other modality's centres untouched
    assert not ca.center_img.requires_grad and not ca.center_skt.requires_grad


def test_gathered_rows_are_constants_and_world_size_scales(monkeypatch):
    """Simulate a second rank: its rows enter the means but receive no gradient."""
    remote_f = F.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(4)), dim=1)
    remote_f.requires_grad_(True)
    remote_y = torch.tensor([0, 1, 1])

    def fake_gather(t: torch.Tensor) -> torch.Tensor:
        other = remote_y if t.dtype == torch.long else remote_f.detach()
        return torch.cat([t, other])

    monkeypatch.setattr(_dist, "all_gather_with_grad_local", fake_gather)
    monkeypatch.setattr(_dist, "world_size", lambda: 2)
    ca = CenterAlignment(2, dim=4)
    state = {"img": torch.zeros(2, 4), "skt": torch.zeros(2, 4)}
    for modality, local_y in [("img", [0, 1, 0]), ("skt", [1, 1, 0])]:
        f = F.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(5)), dim=1)
        f1 = f.clone().requires_grad_(True)
        f2 = f.clone().requires_grad_(True)
        y = torch.tensor(local_y)
        got = ca(f1, y, modality)
        ref_in = torch.cat([f2, remote_f.detach()])
        ref = _ca_reference(state, ref_in, torch.cat([y, remote_y]), modality, world=2)
        assert got.item() == pytest.approx(ref.item(), abs=1e-6)
        got.backward()
        ref.backward()
        assert torch.allclose(f1.grad, f2.grad, atol=1e-6)
    assert remote_f.grad is None


def test_bad_inputs_raise():
    ca = CenterAlignment(2, dim=4)
    with pytest.raises(ValueError):
        ca(torch.randn(2, 4), torch.tensor([0, 2]), "img")  # label out of range
    with pytest.raises(ValueError):
        ca(torch.randn(2, 3), torch.tensor([0, 1]), "img")  # wrong dim
    with pytest.raises(ValueError):
        ca(torch.randn(2, 4), torch.tensor([0, 1]), "photo")


def test_uniformity_gradient_matches_pdist_reference():
    f0 = F.normalize(torch.randn(40, 16, generator=torch.Generator().manual_seed(1)), dim=1).double()
    f = f0.clone().requires_grad_(True)
    uniformity(f).backward()
    ref = f0.clone().requires_grad_(True)
    torch.pdist(ref).pow(2).mul(-2).exp().mean().log().backward()
    assert torch.allclose(f.grad.double(), ref.grad, rtol=1e-4, atol=1e-6)


def test_uniformity_gradient_is_bit_identical_at_two_threads():
    # The demo's batch (192 rows x 256 dims) is large enough for a gather's CPU backward to add
    # with parallel atomics; the loss must give the same gradient bits on every call.
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        f0 = F.normalize(torch.randn(192, 256, generator=torch.Generator().manual_seed(2)), dim=1)
        grads = set()
        for _ in range(6):
            f = f0.clone().requires_grad_(True)
            uniformity(f).backward()
            grads.add(f.grad.numpy().tobytes())
        assert len(grads) == 1
    finally:
        torch.set_num_threads(before)
