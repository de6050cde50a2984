"""Geometry of the synthetic dataset's shapes (no pixels): the :class:`Figure` and its primitives.

A shape family (:mod:`tvt.data.synth_shapes`) draws one random instance as a :class:`Figure` in a
unit frame (object roughly inside [-1, 1]^2, y pointing down). A :class:`Figure` holds three kinds
of parts so that a filled "photo" and a line "sketch" can be rendered from the same geometry:

* regions: closed polygons, painted in order (solid parts, then holes cut through them);
* bars: thin solid parts along a polyline (a stick, a ray, a rail), a single stroke in a sketch;
* details: interior lines (a door, a vein, a seam), darker lines in a photo.

The primitives below (ellipse arcs, rectangles, regular polygons, stars, mirrored outlines, polar
curves) return float ``[K, 2]`` point arrays; the families build every part from them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Array = np.ndarray
Rng = np.random.Generator
TAU = 2.0 * np.pi


@dataclass
class Figure:
    """One shape instance. Arrays are float ``[K, 2]`` points (x, y) in the unit frame."""

    regions: list[tuple[Array, bool]] = field(default_factory=list)  # (polygon, solid?)
    bars: list[tuple[Array, float]] = field(default_factory=list)  # (polyline, width)
    details: list[Array] = field(default_factory=list)  # open polylines (closed ones repeat p0)

    def region(self, poly: Array, solid: bool = True) -> Figure:
        self.regions.append((np.asarray(poly, dtype=float), solid))
        return self

    def bar(self, line: Array, width: float) -> Figure:
        self.bars.append((np.asarray(line, dtype=float), float(width)))
        return self

    def detail(self, line: Array, closed: bool = False) -> Figure:
        line = np.asarray(line, dtype=float)
        self.details.append(np.vstack([line, line[:1]]) if closed else line)
        return self


# ----------------------------------------------------------------------------- primitives
def ellipse(cx: float, cy: float, rx: float, ry: float, a0: float = 0.0, a1: float = TAU,
            n: int = 40, rot: float = 0.0) -> Array:
    """Points on an ellipse arc from angle a0 to a1 (a full turn: no repeated end point)."""
    full = abs(a1 - a0 - TAU) < 1e-9
    t = np.linspace(a0, a1, n, endpoint=not full)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = np.cos(rot), np.sin(rot)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def rect(x0: float, y0: float, x1: float, y1: float) -> Array:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def ngon(n: int, r: float = 1.0, rot: float = -np.pi / 2, cx: float = 0.0, cy: float = 0.0) -> Array:
    return ellipse(cx, cy, r, r, rot, rot + TAU, n=n)


def star(n: int, r_out: float, r_in: float, rot: float = -np.pi / 2) -> Array:
    t = rot + np.arange(2 * n) * np.pi / n
    r = np.where(np.arange(2 * n) % 2 == 0, r_out, r_in)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def mirror_x(half: Array) -> Array:
    """Close a left-right symmetric outline given its right half listed top to bottom."""
    return np.vstack([half, half[::-1] * [-1.0, 1.0]])


def pts(*xy: float) -> Array:
    return np.asarray(xy, dtype=float).reshape(-1, 2)


def polar(r: Callable[[Array], Array], n: int = 72, sx: float = 1.0, sy: float = 1.0) -> Array:
    t = np.linspace(0.0, TAU, n, endpoint=False)
    rr = r(t)
    return np.stack([sx * rr * np.cos(t), sy * rr * np.sin(t)], axis=1)
