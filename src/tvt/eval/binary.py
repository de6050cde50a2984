"""64-bit binary codes by PCA + ITQ (spec §6.6, [Q34]) and Hamming-distance retrieval.

Protocol (the official helper's, which nothing in the official code calls): fit on the gallery
photo features, PCA to the top ``n_bits`` eigenvectors of their covariance, then ``n_iter``
rounds of iterative quantisation (Gong & Lazebnik, CVPR 2011) that alternate

* ``B = sign(V R)`` with 0 mapped to +1, and
* the rotation that minimises ``||B - V R||_F`` over orthogonal R (orthogonal Procrustes): with
  the SVD ``V^T B = U S W^T``, ``R = U W^T``.

The official helper computes the SVD of ``B^T V = U' S W'^T`` and then uses the factor numpy
returns as ``W'^T`` where ``W'`` belongs: ``R = W'^T U'^T`` instead of ``W' U'^T``. Its quantisation
loss does not go down. ``compat=True`` reproduces that update [Q34]; the default is the correct
one. Codes are ``(x_c W R) > 0`` where ``x_c`` is each set centred by its own mean (official,
``center="own"``) or by the training mean (``center="train"``, right for single queries).

Features are L2-normalised before PCA by default (spec §6.6 leaves it open; the float pipeline
normalises too). The official helper seeds numpy's global RNG with ``n_iter`` (50) before drawing
its starting rotation; pass ``seed=50`` for the same starting draw. This module never touches the
global RNG.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tvt.errors import DataError
from tvt.eval.metric_inputs import check_codes, check_features
from tvt.eval.metrics import retrieval_metrics
from tvt.vectors import l2_normalize as unit_rows  # here `l2_normalize` is the name of a flag

_FORMAT = "tvt-itq-v1"


@dataclass
class ITQ:
    """A fitted PCA + ITQ model. ``mean`` [D], ``components`` [D, bits], ``rotation`` [bits, bits]."""

    mean: np.ndarray
    components: np.ndarray
    rotation: np.ndarray
    l2_normalize: bool = True
    compat: bool = False
    quantization_loss_history: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def n_bits(self) -> int:
        return int(self.rotation.shape[0])

    def project(self, x: Any, center: str = "own") -> np.ndarray:
        """Rotated PCA projection ``(x - mean) W R`` [N, bits] float64 of features ``x`` [N, D]."""
        xs = _prepare_features(x, "features", self.l2_normalize)
        if xs.shape[1] != self.mean.shape[0]:
            raise DataError(f"features have dimension {xs.shape[1]}, the ITQ model was fitted on {self.mean.shape[0]}")
        if center == "own":
            mu = xs.mean(0)
        elif center == "train":
            mu = self.mean
        else:
            raise ValueError(f"center must be 'own' (official) or 'train', got {center!r}")
        return (xs - mu) @ self.components @ self.rotation

    def encode(self, x: Any, center: str = "own") -> np.ndarray:
        """Binary codes [N, bits] bool: the rotated projection > 0 (spec §6.6).

        ``center="own"`` (official) centres ``x`` by its own mean, which needs a whole set; encode a
        single query with ``center="train"``.
        """
        return self.project(x, center) > 0

    def save(self, path: str | Path) -> None:
        """Write the model to an ``.npz`` file."""
        np.savez(
            Path(path),
            format=np.array(_FORMAT),
            mean=self.mean,
            components=self.components,
            rotation=self.rotation,
            l2_normalize=np.array(self.l2_normalize),
            compat=np.array(self.compat),
            quantization_loss_history=self.quantization_loss_history,
        )

    @classmethod
    def load(cls, path: str | Path) -> ITQ:
        """Read a model written by :meth:`save`; DataError if the file is not one."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                if "format" not in z.files or str(z["format"]) != _FORMAT:
                    raise DataError(f"{path}: not a tvt ITQ model file (no format={_FORMAT!r} entry)")
                return cls(
                    mean=z["mean"],
                    components=z["components"],
                    rotation=z["rotation"],
                    l2_normalize=bool(z["l2_normalize"]),
                    compat=bool(z["compat"]),
                    quantization_loss_history=z["quantization_loss_history"],
                )
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{path}: cannot read the ITQ model ({exc})") from exc


def _prepare_features(x: Any, name: str, l2_normalize: bool) -> np.ndarray:
    xs = check_features(x, name).double()
    return (unit_rows(xs, name=name) if l2_normalize else xs).numpy()


def random_rotation(n: int, seed: int) -> np.ndarray:
    """Random orthogonal [n, n]: left singular vectors of a Gaussian matrix drawn by ``RandomState(seed)``."""
    u, _, _ = np.linalg.svd(np.random.RandomState(seed).randn(n, n))
    return u


def sign_codes(z: np.ndarray) -> np.ndarray:
    """``sign(z)`` with 0 mapped to +1, float64 ±1."""
    return np.where(z >= 0, 1.0, -1.0)


def procrustes_rotation(v: np.ndarray, b: np.ndarray, compat: bool = False) -> np.ndarray:
    """Rotation update of one ITQ round for projected data ``v`` [N, bits] and codes ``b`` [N, bits].

    Correct: the orthogonal R minimising ``||b - v R||_F``, i.e. ``U W^T`` from ``v^T b = U S W^T``.
    ``compat``: the official update, ``svd(b^T v) = U' S W'^T`` then ``R = W'^T U'^T`` [Q34].
    """
    if compat:
        u_b, _, w_t = np.linalg.svd(b.T @ v)
        return w_t @ u_b.T
    u, _, w_t = np.linalg.svd(v.T @ b)
    return u @ w_t


def fit_itq(
    train: Any,
    n_bits: int = 64,
    n_iter: int = 50,
    seed: int = 0,
    compat: bool = False,
    l2_normalize: bool = True,
) -> ITQ:
    """Fit PCA + ITQ on ``train`` [N, D] (the gallery photo features by the SAKE convention).

    ``quantization_loss_history`` [n_iter + 1] holds ``||B - V R||_F^2 / N`` for the starting
    rotation and after every update; with the correct update it never increases.
    """
    x = _prepare_features(train, "ITQ training features", l2_normalize)
    n, d = x.shape
    if not 1 <= n_bits <= d:
        raise DataError(f"n_bits={n_bits} must be between 1 and the feature dimension {d}")
    if n < 2:
        raise DataError(f"ITQ needs at least 2 training vectors to estimate a covariance, got {n}")
    mean = x.mean(0)
    xc = x - mean
    evals, evecs = np.linalg.eigh(xc.T @ xc / (n - 1))
    components = evecs[:, np.argsort(evals)[::-1][:n_bits]]  # top n_bits principal directions
    v = xc @ components
    rotation = random_rotation(n_bits, seed)
    history = [_quantization_loss(v, rotation)]
    for _ in range(n_iter):
        b = sign_codes(v @ rotation)
        rotation = procrustes_rotation(v, b, compat)
        history.append(_quantization_loss(v, rotation))
    return ITQ(mean, components, rotation, l2_normalize, compat, np.asarray(history))


def _quantization_loss(v: np.ndarray, rotation: np.ndarray) -> float:
    z = v @ rotation
    return float(((sign_codes(z) - z) ** 2).sum() / len(v))


def hamming_scores(q_codes: Any, g_codes: Any) -> np.ndarray:
    """Negative Hamming distances [Q, G] int32 between binary codes [Q, bits] and [G, bits] (bool or 0/1)."""
    q = check_codes(q_codes, "query codes")
    g = check_codes(g_codes, "gallery codes")
    if q.shape[1] != g.shape[1]:
        raise DataError(f"codes have different lengths ({q.shape[1]} vs {g.shape[1]} bits)")
    # ±1 codes: q . g = bits - 2 * Hamming, exact in float32 up to 2**24 bits
    dot = q @ g.T
    return ((dot - q.shape[1]) / 2).round().to(torch.int32).numpy()


def binary_retrieval_metrics(
    q: Any,
    q_labels: Any,
    g: Any,
    g_labels: Any,
    *,
    n_bits: int = 64,
    n_iter: int = 50,
    seed: int = 0,
    compat: bool = False,
    l2_normalize: bool = True,
    center: str = "own",
    **metric_kwargs: Any,
) -> dict[str, Any]:
    """ITQ fitted on the gallery features, then Hamming-ranked metrics (spec §6.6).

    The one place binary codes are scored (``tvt eval --binary``, ``tvt metrics --binary``).
    ``q`` [Q, D], ``g`` [G, D] real features with labels [Q] / [G]. Returns
    :func:`~tvt.eval.metrics.retrieval_metrics`' dict; ``metric_kwargs`` go to it.
    """
    model = fit_itq(g, n_bits=n_bits, n_iter=n_iter, seed=seed, compat=compat, l2_normalize=l2_normalize)
    return retrieval_metrics(
        model.encode(q, center), q_labels, model.encode(g, center), g_labels, scores="hamming", **metric_kwargs
    )
