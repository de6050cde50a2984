"""Plane-figure and sign families of the synthetic dataset: polygons, stars, rings, arrows, line patterns.

Each function ``(rng) -> Figure`` draws one random instance of the class of the same name (the
registry is :data:`tvt.data.synth_shapes.SHAPES`); the everyday-object families live in
:mod:`tvt.data.synth_shapes`. Both use the same primitives (:mod:`tvt.data.synth_geometry`).
"""

from __future__ import annotations

import numpy as np

from tvt.data.synth_geometry import TAU, Figure, Rng, ellipse, ngon, pts, rect, star


def star5(r: Rng) -> Figure:
    return Figure().region(star(5, 1.0, r.uniform(0.36, 0.55)))


def sparkle(r: Rng) -> Figure:
    return Figure().region(star(4, 1.0, r.uniform(0.17, 0.3)))


def triangle(r: Rng) -> Figure:
    return Figure().region(pts(r.uniform(-.2, .2), -1, -r.uniform(.8, 1.05), .8, r.uniform(.8, 1.05), .8))


def square(r: Rng) -> Figure:
    return Figure().region(rect(-.8, -.8, .8, .8) + r.normal(0, .03, (4, 2)))


def pentagon(r: Rng) -> Figure:
    return Figure().region(ngon(5))


def hexagon(r: Rng) -> Figure:
    return Figure().region(ngon(6, rot=float(r.choice([0.0, np.pi / 6]))))


def diamond(r: Rng) -> Figure:
    w = r.uniform(.5, .75)
    return Figure().region(pts(0, -1, w, 0, 0, 1, -w, 0))


def circle(r: Rng) -> Figure:
    return Figure().region(ellipse(0, 0, 1, r.uniform(.85, 1)))


def ring(r: Rng) -> Figure:
    return Figure().region(ellipse(0, 0, 1, 1)).region(ellipse(0, 0, *[r.uniform(.45, .68)] * 2), False)


def target(r: Rng) -> Figure:
    a, b = r.uniform(.62, .72), r.uniform(.3, .4)
    return Figure().region(ngon(48)).region(ngon(48, a), False).region(ngon(40, b))


def crescent(r: Rng) -> Figure:
    d, r2 = r.uniform(.35, .6), r.uniform(.85, 1.0)
    x = (1 + d * d - r2 * r2) / (2 * d)
    y = np.sqrt(max(1 - x * x, 1e-6))
    ta, tb = np.arctan2(y, x), np.arctan2(y, x - d)
    outer = ellipse(0, 0, 1, 1, ta, TAU - ta, n=40)
    inner = ellipse(d, 0, r2, r2, TAU - tb, tb, n=30)  # goes back through the inner circle's left
    return Figure().region(np.vstack([outer, inner]))


def heart(r: Rng) -> Figure:
    t = np.linspace(0, TAU, 64, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return Figure().region(np.stack([x / 17 * r.uniform(.9, 1.1), (y + 2.5) / 15], axis=1))


def cross(r: Rng) -> Figure:
    t = r.uniform(.25, .4)
    return Figure().region(pts(-t, -1, t, -1, t, -t, 1, -t, 1, t, t, t, t, 1, -t, 1, -t, t, -1, t, -1, -t, -t, -t))


def arrow(r: Rng) -> Figure:
    t, h, hx = r.uniform(.14, .24), r.uniform(.45, .65), r.uniform(.0, .35)
    return Figure().region(pts(-1, -t, hx, -t, hx, -h, 1, 0, hx, h, hx, t, -1, t))


def double_arrow(r: Rng) -> Figure:
    t, h, hx = r.uniform(.12, .2), r.uniform(.4, .55), r.uniform(.4, .6)
    return Figure().region(pts(-1, 0, -hx, -h, -hx, -t, hx, -t, hx, -h, 1, 0, hx, h, hx, t, -hx, t, -hx, h))


def spiral(r: Rng) -> Figure:
    turns = r.uniform(2.0, 2.6)
    t = np.linspace(0, turns * TAU, int(40 * turns))
    rr = .1 + .9 * t / t[-1]
    return Figure().bar(np.stack([rr * np.cos(t), rr * np.sin(t)], axis=1), .11)


def zigzag(r: Rng) -> Figure:
    k = int(r.integers(4, 7))
    x = np.linspace(-1, 1, k + 1)
    return Figure().bar(np.stack([x, np.where(np.arange(k + 1) % 2 == 0, -.45, .45)], axis=1), .12)


def wave(r: Rng) -> Figure:
    x = np.linspace(-1, 1, 40)
    return Figure().bar(np.stack([x, .45 * np.sin(np.pi * r.uniform(1.5, 2.5) * x)], axis=1), .12)
