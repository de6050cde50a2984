"""Projection heads (spec §2.3): the DINO head and TVT's fusion (classification) head.

State-dict keys follow the DINO code so official files load as they are: ``mlp.0``, ``mlp.2``,
``mlp.4`` (``mlp`` itself when nlayers = 1) and ``last_layer.weight_g`` (out, 1) /
``last_layer.weight_v`` (out, in), the legacy weight-norm names.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def build_mlp(in_dim: int, hidden_dim: int, bottleneck_dim: int, nlayers: int) -> nn.Module:
    """DINO's head MLP: Linear(+GELU) x (nlayers - 1), then Linear to the bottleneck.

    For nlayers = 1 it is a bare Linear (keys ``mlp.weight``), as in DINO.
    """
    if nlayers < 1:
        raise ValueError(f"nlayers must be >= 1, got {nlayers}")
    if nlayers == 1:
        return nn.Linear(in_dim, bottleneck_dim)
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
    for _ in range(nlayers - 2):
        layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
    layers.append(nn.Linear(hidden_dim, bottleneck_dim))
    return nn.Sequential(*layers)


def init_linear(module: nn.Module) -> None:
    """Trunc-normal (std 0.02) weights and zero biases for every Linear in ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class WeightNormLinear(nn.Module):
    """Bias-free Linear with weight ``g * v / ||v||`` per output row (``nn.utils.weight_norm``).

    Parameters keep the legacy names ``weight_g`` [out, 1] and ``weight_v`` [out, in], so DINO and
    TVT checkpoints load without renaming. ``g`` starts at 1 as in DINO.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        # DINO builds last_layer after its trunc-normal pass, so v keeps nn.Linear's default init.
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))

    @property
    def weight(self) -> Tensor:
        """[out, in] effective weight."""
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))

    def forward(self, x: Tensor) -> Tensor:
        """[N, in] -> [N, out]."""
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias=False"


class DINOHead(nn.Module):
    """DINO projection head: MLP -> L2-normalise -> weight-normalised Linear (spec §2.3).

    ``forward(x [N, in_dim]) -> [N, out_dim]`` logits, or with ``return_fea=True`` the
    L2-normalised bottleneck [N, bottleneck_dim]. With ``norm_last_layer`` the row norms
    ``last_layer.weight_g`` are frozen (``requires_grad=False``) [Q17].
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        self.mlp = build_mlp(in_dim, hidden_dim, bottleneck_dim, nlayers)
        init_linear(self.mlp)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        self.last_layer.weight_g.requires_grad_(not norm_last_layer)

    def bottleneck(self, x: Tensor) -> Tensor:
        """[N, in_dim] -> [N, bottleneck_dim], L2-normalised (eps 1e-12)."""
        return F.normalize(self.mlp(x), dim=-1, p=2, eps=1e-12)

    def forward(self, x: Tensor, return_fea: bool = False) -> Tensor:
        """[N, in_dim] -> logits [N, out_dim] (or the normalised bottleneck with ``return_fea``)."""
        z = self.bottleneck(x)
        return z if return_fea else self.last_layer(z)


class FusionHead(nn.Module):
    """TVT fusion head: MLP -> L2-normalise -> ``fc`` Linear with bias (spec §2.3).

    ``forward(x [N, in_dim]) -> (logits [N, num_classes], f [N, bottleneck_dim])`` with ``f`` the
    L2-normalised embedding. Every Linear, ``fc`` included, starts trunc-normal 0.02 / zero bias.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
    ) -> None:
        super().__init__()
        self.mlp = build_mlp(in_dim, hidden_dim, bottleneck_dim, nlayers)
        self.fc = nn.Linear(bottleneck_dim, num_classes)
        init_linear(self)

    def embed(self, x: Tensor) -> Tensor:
        """[N, in_dim] -> f [N, bottleneck_dim], L2-normalised (eps 1e-12)."""
        return F.normalize(self.mlp(x), dim=-1, p=2, eps=1e-12)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """[N, in_dim] -> (logits [N, C], f [N, bottleneck_dim])."""
        f = self.embed(x)
        return self.fc(f), f
