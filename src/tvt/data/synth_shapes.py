"""Parametric shape families of the synthetic dataset (geometry only, no pixels) and their registry.

Every class is a function ``(rng) -> Figure`` that draws one random instance of its family in a
unit frame (object roughly inside [-1, 1]^2, y pointing down; :class:`~tvt.data.synth_geometry.Figure`
holds its regions, bars and details). This module holds the everyday-object families and
:data:`SHAPES`, the registry of every class; the plane figures and signs (polygons, stars, arrows,
waves) are in :mod:`tvt.data.synth_glyphs`.

The families share a vocabulary of parts (rings, holes, points, counts, symmetric bodies, sticks)
so that what is learnt on training classes transfers to unseen ones.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tvt.data import synth_glyphs as glyphs
from tvt.data.synth_geometry import TAU, Figure, Rng, ellipse, mirror_x, ngon, polar, pts, rect


def _sun(r: Rng) -> Figure:
    k, rr = int(r.integers(8, 13)), r.uniform(.4, .5)
    f = Figure().region(ngon(32, rr))
    for a in r.uniform(0, TAU) + TAU * np.arange(k) / k:
        f.bar(pts((rr + .13) * np.cos(a), (rr + .13) * np.sin(a), np.cos(a), np.sin(a)), .08)
    return f


def _house(r: Rng) -> Figure:
    rh, w = r.uniform(.55, .85), r.uniform(.6, .75)
    top = -.1
    f = Figure().region(pts(-w, .9, -w, top, -w - .18, top, 0, top - rh, w + .18, top, w, top, w, .9))
    dx = r.uniform(-.35, .35)
    f.detail(rect(dx - .15, .35, dx + .15, .9)[[3, 0, 1, 2]])
    wx = -.4 if dx > 0 else .4
    f.detail(rect(wx - .15, .05, wx + .15, .33), closed=True)
    return f


def _tree(r: Rng) -> Figure:
    k = int(r.integers(5, 8))
    canopy = polar(lambda t: 1 + .1 * np.cos(k * t), sx=.8, sy=.65) + [0, -.3]
    return Figure().region(rect(-.14, .2, .14, 1)).region(canopy)


def _pine(r: Rng) -> Figure:
    f, n = Figure().region(rect(-.12, .7, .12, 1.0)), int(r.integers(2, 4))
    for i in range(n):
        y0 = -1 + i * 1.6 / n
        w = .45 + .45 * (i + 1) / n
        f.region(pts(0, y0, w, y0 + 1.6 / n + .25, -w, y0 + 1.6 / n + .25))
    return f


def _mushroom(r: Rng) -> Figure:
    ry = r.uniform(.55, .8)
    f = Figure().region(pts(-.22, -.05, .22, -.05, .3, .9, -.3, .9))
    f.region(ellipse(0, 0, 1, ry, np.pi, TAU, n=30))
    for cx in (-.5, 0.0, .5):
        f.detail(ngon(10, .11, cx=cx + r.normal(0, .05), cy=-ry * (.55 if cx else .75)), closed=True)
    return f


def _key(r: Rng) -> Figure:
    ty = r.uniform(.25, .4)
    f = Figure().region(ngon(36, .42, cx=-.55)).region(ngon(24, .18, cx=-.55), False)
    bit = pts(-.2, -.09, 1, -.09, 1, ty, .85, ty, .85, .09, .7, .09, .7, ty * .8, .55, ty * .8, .55, .09, -.2, .09)
    return f.region(bit)


def _bell(r: Rng) -> Figure:
    w = r.uniform(.75, .95)
    side = pts(.05, -.85, .35, -.75, .45, -.3, .55, .2, w, .6, w + .05, .72)
    f = Figure().region(ngon(16, .13, cy=-.9)).region(mirror_x(side))
    return f.region(ngon(16, .14, cy=.86))


def _mug(r: Rng) -> Figure:
    x1 = r.uniform(.3, .5)
    f = Figure().region(rect(-.7, -.7, x1, .9))
    return f.bar(ellipse(x1, .1, .35, .4, -np.pi / 2.2, np.pi / 2.2, n=14), .13)


def _umbrella(r: Rng) -> Figure:
    k = int(r.integers(3, 5))
    top = ellipse(0, .05, 1, r.uniform(.7, .9), np.pi, TAU, n=30)
    bottom = np.vstack([ellipse(1 - (2 * i + 1) / k, .05, 1 / k, .15, 0, -np.pi, n=8) for i in range(k)])
    f = Figure().region(np.vstack([top, bottom]))
    return f.bar(np.vstack([pts(0, 0, 0, .75), ellipse(-.18, .75, .18, .2, 0, np.pi, n=8)]), .09)


def _fish(r: Rng) -> Figure:
    ry = r.uniform(.35, .5)
    f = Figure().region(pts(.5, 0, 1, -.45, 1, .45)).region(ellipse(-.15, 0, .75, ry))
    f.detail(ngon(8, .07, cx=-.5, cy=-.12), closed=True)
    return f.detail(ellipse(-.75, 0, .45, ry * .7, -.55, .55, n=8))


def _leaf(r: Rng) -> Figure:
    w, t = r.uniform(.4, .6), np.linspace(0, 1, 24)
    bend = r.uniform(-.12, .12)
    right = np.stack([w * np.sin(np.pi * t) ** .8 + bend * np.sin(np.pi * t), -1 + 1.8 * t], axis=1)
    left = np.stack([-w * np.sin(np.pi * t) ** .8 + bend * np.sin(np.pi * t), -1 + 1.8 * t], axis=1)[::-1]
    f = Figure().region(np.vstack([right[:-1], left[:-1]])).bar(pts(0, .8, .05, 1.05), .08)
    f.detail(np.stack([bend * np.sin(np.pi * t), -1 + 1.8 * t], axis=1)[2:-1])
    for y in (-.4, .0, .4):
        f.detail(pts(-w * .6, y - .25, 0, y)).detail(pts(w * .6, y - .25, 0, y))
    return f


def _flower(r: Rng) -> Figure:
    k, f = int(r.integers(5, 8)), Figure()
    for i in range(k):
        a = TAU * i / k
        f.region(ellipse(.58 * np.cos(a), .58 * np.sin(a), .42, .22, rot=a, n=20))
    return f.region(ngon(24, r.uniform(.25, .32)))


def _cloud(r: Rng) -> Figure:
    k = int(r.integers(5, 8))
    return Figure().region(polar(lambda t: .8 + .2 * np.abs(np.sin(k * t / 2)), n=96, sx=1.0, sy=r.uniform(.55, .7)))


def _lightning(r: Rng) -> Figure:
    p = pts(-.2, -1, .45, -1, .1, -.2, .5, -.2, -.3, 1, -.05, .15, -.45, .15) + r.normal(0, .04, (7, 2))
    return Figure().region(p)


def _drop(r: Rng) -> Figure:
    t = np.linspace(0, TAU, 48, endpoint=False)
    m = r.uniform(1.0, 1.6)
    return Figure().region(np.stack([.75 * np.sin(t) * np.abs(np.sin(t / 2)) ** m, -np.cos(t)], axis=1))


def _hourglass(r: Rng) -> Figure:
    n = r.uniform(.05, .12)
    f = Figure().region(pts(-.65, -.9, .65, -.9, n, 0, .65, .9, -.65, .9, -n, 0))
    return f.region(rect(-.85, -1, .85, -.85)).region(rect(-.85, .85, .85, 1))


def _stairs(r: Rng) -> Figure:
    k = int(r.integers(3, 5))
    s = 2.0 / k
    p = [(-1.0, 1.0)]
    for i in range(k):  # one riser and one tread per step
        p += [(-1 + i * s, 1 - (i + 1) * s), (-1 + (i + 1) * s, 1 - (i + 1) * s)]
    return Figure().region(np.array(p + [(1.0, 1.0)]))


def _car(r: Rng) -> Figure:
    cx = r.uniform(-.15, .15)
    body = pts(-1, -.05, cx - .5, -.05, cx - .3, -.5, cx + .35, -.5, cx + .6, -.05, 1, -.05, 1, .45, -1, .45)
    f = Figure().region(body)
    for x in (-.55, .55):
        f.region(ngon(24, .24, cx=x, cy=.45)).region(ngon(12, .09, cx=x, cy=.45), False)
    return f.detail(pts(cx, -.45, cx, -.08))


def _boat(r: Rng) -> Figure:
    f = Figure().region(pts(-1, .45, 1, .45, .7, .85, -.7, .85)).bar(pts(0, .45, 0, -1), .07)
    f.region(pts(.1, -.95, .1, .32, r.uniform(.6, .85), .32))
    return f.region(pts(-.1, -.7, -.1, .32, -r.uniform(.4, .6), .32)) if r.random() < .5 else f


def _bottle(r: Rng) -> Figure:
    w = r.uniform(.38, .5)
    f = Figure().region(rect(-.15, -1, .15, -.85)).region(mirror_x(pts(.13, -.85, .13, -.5, w, -.15, w, 1)))
    return f.detail(rect(-w * .8, .1, w * .8, .6), closed=True)


def _candle(r: Rng) -> Figure:
    w = r.uniform(.2, .3)
    t = np.linspace(0, TAU, 24, endpoint=False)
    flame = np.stack([.17 * np.sin(t) * np.abs(np.sin(t / 2)), -.6 - .33 * np.cos(t)], axis=1)
    return Figure().region(rect(-w, -.2, w, 1)).region(flame).bar(pts(0, -.2, 0, -.3), .04)


def _hammer(r: Rng) -> Figure:
    h = r.uniform(.25, .35)
    f = Figure().region(rect(-.1, -.6, .1, 1))
    return f.region(pts(-.75, -.8, .45, -.8, .85, -.95, .7, -.8 + h, -.75, -.8 + h))


def _glasses(r: Rng) -> Figure:
    rr = r.uniform(.33, .42)
    f = Figure()
    for x in (-.55, .55):
        f.region(ngon(32, rr, cx=x)).region(ngon(32, rr - .1, cx=x), False)
    f.bar(ellipse(0, 0, .55 - rr + .05, .15, np.pi, TAU, n=8), .07)
    return f.bar(pts(-.55 - rr, 0, -1.05, -.25), .07).bar(pts(.55 + rr, 0, 1.05, -.25), .07)


def _snowman(r: Rng) -> Figure:
    f, y = Figure(), 1.0
    rs = [.5, .38, .27] if r.random() < .6 else [.55, .42]
    for i, rr in enumerate(rs):
        cy = y - rr
        f.region(ngon(32, rr, cy=cy))
        y = cy - rr * .8
        if i == 0:
            f.detail(ngon(6, .05, cy=cy - .15), closed=True).detail(ngon(6, .05, cy=cy + .1), closed=True)
    return f


def _apple(r: Rng) -> Figure:
    p = ellipse(0, .1, .8, .75, n=48)
    p[:, 1] += .3 * np.exp(-(p[:, 0] / .25) ** 2) * (p[:, 1] < 0)
    f = Figure().region(p).bar(pts(0, -.35, .1, -.9), .08)
    return f.region(ellipse(.35, -.75, .25, .1, rot=-.5, n=16)) if r.random() < .7 else f


def _butterfly(r: Rng) -> Figure:
    f, a = Figure(), r.uniform(.4, .7)
    for s in (-1, 1):
        f.region(ellipse(s * .5, -.35, .5, .38, rot=-s * a, n=24))
        f.region(ellipse(s * .38, .4, .35, .28, rot=s * a, n=20))
        f.bar(pts(0, -.6, s * .3, -1.0), .04)
    return f.region(ellipse(0, 0, .1, .7, n=16))


def _gear(r: Rng) -> Figure:
    k = int(r.integers(8, 12))
    t = np.linspace(0, TAU, 4 * k, endpoint=False)
    rr = np.where((np.arange(4 * k) // 2) % 2 == 0, 1.0, .78)
    f = Figure().region(np.stack([rr * np.cos(t), rr * np.sin(t)], axis=1))
    return f.region(ngon(24, r.uniform(.22, .35)), False)


def _dumbbell(r: Rng) -> Figure:
    h = r.uniform(.45, .6)
    return Figure().region(rect(-.7, -.1, .7, .1)).region(rect(-.9, -h, -.55, h)).region(rect(.55, -h, .9, h))


def _ladder(r: Rng) -> Figure:
    f, k = Figure().bar(pts(-.45, -1, -.45, 1), .1).bar(pts(.45, -1, .45, 1), .1), int(r.integers(3, 6))
    for y in np.linspace(-.75, .75, k):
        f.bar(pts(-.45, y, .45, y), .09)
    return f


def _crown(r: Rng) -> Figure:
    k = int(r.integers(3, 6))
    xs = np.linspace(-.9, .9, 2 * k - 1)
    top = [(x, -.85 if i % 2 == 0 else -.15) for i, x in enumerate(xs)]
    f = Figure().region(np.vstack([pts(-.9, .6), np.array(top), pts(.9, .6)]))
    return f.detail(pts(-.9, .3, .9, .3))


def _shield(r: Rng) -> Figure:
    side = np.vstack([pts(0, -.95, .45, -.8, .85, -.9), ellipse(0, -.1, .85, 1.05, 0, np.pi / 2, n=14)])
    f = Figure().region(mirror_x(side))
    return f.detail(pts(0, -.8, 0, .8)).detail(pts(-.75, -.2, .75, -.2))


def _bone(r: Rng) -> Figure:
    f = Figure().region(rect(-.65, -.14, .65, .14))
    for x in (-.72, .72):
        for y in (-.2, .2):
            f.region(ngon(20, .24, cx=x, cy=y))
    return f


def _kite(r: Rng) -> Figure:
    w = r.uniform(.5, .7)
    f = Figure().region(pts(0, -1, w, -.4, 0, .55, -w, -.4)).detail(pts(0, -1, 0, .55)).detail(pts(-w, -.4, w, -.4))
    t = np.linspace(0, 1, 16)
    return f.bar(np.stack([.15 * np.sin(3 * np.pi * t), .55 + .5 * t], axis=1), .05)


def _envelope(r: Rng) -> Figure:
    h = r.uniform(.55, .7)
    f = Figure().region(rect(-1, -h, 1, h)).detail(pts(-1, -h, 0, r.uniform(0, .2), 1, -h))
    return f.detail(pts(-1, h, -.3, -.05)).detail(pts(1, h, .3, -.05)) if r.random() < .5 else f


def _window(r: Rng) -> Figure:
    t = r.uniform(.1, .16)
    f = Figure().region(rect(-.85, -.85, .85, .85))
    for x0, x1 in ((-.85 + t, -t / 2), (t / 2, .85 - t)):
        for y0, y1 in ((-.85 + t, -t / 2), (t / 2, .85 - t)):
            f.region(rect(x0, y0, x1, y1), False)
    return f


def _lollipop(r: Rng) -> Figure:
    rr = r.uniform(.5, .62)
    t = np.linspace(0, 2.5 * TAU, 50)
    sp = np.stack([rr * .85 * t / t[-1] * np.cos(t), -1 + rr + rr * .85 * t / t[-1] * np.sin(t)], axis=1)
    return Figure().bar(pts(0, -1 + 2 * rr, 0, 1), .08).region(ngon(32, rr, cy=-1 + rr)).detail(sp)


def _rocket(r: Rng) -> Figure:
    w = r.uniform(.28, .36)
    side = np.vstack([ellipse(0, .1, w, 1.1, -np.pi / 2, 0, n=14), pts(w, .75)])
    f = Figure().region(pts(w - .05, .3, w + .3, .75, w + .3, 1, w - .05, .75))
    f.region(pts(-w + .05, .3, -w - .3, .75, -w - .3, 1, -w + .05, .75)).region(mirror_x(side))
    return f.detail(ngon(12, w * .5, cy=-.2), closed=True)


def _tshirt(r: Rng) -> Figure:
    s = r.uniform(.3, .45)
    f = Figure().region(mirror_x(pts(.25, -.85, .6, -.8, 1, -.8 + s * 1.2, .8, -.8 + s * 1.6, .6, -.45, .6, .9)))
    return f.detail(ellipse(0, -.85, .25, .2, 0, np.pi, n=10))


def _chair(r: Rng) -> Figure:
    y = r.uniform(0, .2)
    f = Figure().bar(pts(-.5, -1, -.5, 1), .12).bar(pts(-.5, y, .55, y), .12)
    return f.bar(pts(.5, y, .5, 1), .12)


def _table(r: Rng) -> Figure:
    h = r.uniform(-.5, -.2)
    return Figure().region(rect(-1, h - .15, 1, h)).bar(pts(-.75, h, -.75, .9), .12).bar(pts(.75, h, .75, .9), .12)


def _anchor(r: Rng) -> Figure:
    f = Figure().region(ngon(20, .2, cy=-.8)).region(ngon(12, .09, cy=-.8), False)
    f.bar(pts(0, -.6, 0, .95), .1).bar(pts(-.4, -.35, .4, -.35), .1)
    f.bar(ellipse(0, .3, .75, .65, 0, np.pi, n=20), .1)
    return f.region(pts(.65, .35, .95, .2, .8, .0)).region(pts(-.65, .35, -.95, .2, -.8, 0))


def _pie(r: Rng) -> Figure:
    m = r.uniform(.35, .7)
    f = Figure().region(np.vstack([pts(0, 0), ellipse(0, 0, 1, 1, m, TAU - m, n=40)]))
    return f.detail(ngon(8, .1, cx=0, cy=-.5), closed=True)


def _clock(r: Rng) -> Figure:
    f = Figure().region(ngon(48))
    for a in np.arange(4) * np.pi / 2:
        f.detail(pts(.75 * np.cos(a), .75 * np.sin(a), .9 * np.cos(a), .9 * np.sin(a)))
    a = r.uniform(0, TAU)
    return f.detail(pts(.6 * np.cos(a), .6 * np.sin(a), 0, 0, .35, -.35))


def _note(r: Rng) -> Figure:
    f = Figure().region(ellipse(-.25, .7, .35, .25, rot=-.35, n=24)).bar(pts(.06, .62, .06, -1), .09)
    return f.bar(pts(.06, -1, .4, -.7, .5, -.35, .35, -.1), .08)


def _bowtie(r: Rng) -> Figure:
    h = r.uniform(.5, .75)
    f = Figure().region(pts(-1, -h, -.1, -.15, -.1, .15, -1, h)).region(pts(1, -h, .1, -.15, .1, .15, 1, h))
    return f.region(rect(-.16, -.22, .16, .22))


# Curated order: ``generate(num_classes=N)`` uses the first N, so any prefix is varied.
SHAPES: dict[str, Callable[[np.random.Generator], Figure]] = {
    "star5": glyphs.star5, "crescent": glyphs.crescent, "house": _house, "arrow": glyphs.arrow,
    "ring": glyphs.ring, "cross": glyphs.cross, "heart": glyphs.heart, "tree": _tree, "fish": _fish,
    "umbrella": _umbrella, "key": _key, "lightning": _lightning, "mushroom": _mushroom, "car": _car,
    "glasses": _glasses, "ladder": _ladder, "gear": _gear, "flower": _flower, "snowman": _snowman,
    "anchor": _anchor, "bell": _bell, "sun": _sun, "boat": _boat, "hourglass": _hourglass, "leaf": _leaf,
    "mug": _mug, "spiral": glyphs.spiral, "kite": _kite, "crown": _crown, "envelope": _envelope,
    "triangle": glyphs.triangle, "square": glyphs.square, "pentagon": glyphs.pentagon,
    "hexagon": glyphs.hexagon, "diamond": glyphs.diamond, "sparkle": glyphs.sparkle, "circle": glyphs.circle,
    "target": glyphs.target, "double_arrow": glyphs.double_arrow, "pine": _pine, "cloud": _cloud,
    "drop": _drop, "stairs": _stairs, "bottle": _bottle, "candle": _candle, "hammer": _hammer,
    "apple": _apple, "butterfly": _butterfly, "dumbbell": _dumbbell, "shield": _shield, "bone": _bone,
    "window": _window, "lollipop": _lollipop, "rocket": _rocket, "tshirt": _tshirt, "chair": _chair,
    "table": _table, "zigzag": glyphs.zigzag, "wave": glyphs.wave, "pie": _pie, "clock": _clock,
    "note": _note, "bowtie": _bowtie,
}
CLASS_NAMES: tuple[str, ...] = tuple(SHAPES)
