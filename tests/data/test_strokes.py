"""QuickDraw stroke parsing and rendering (tvt.data.strokes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tvt.data.strokes import count_drawings, load_stroke_file, render_stroke_file, render_strokes
from tvt.errors import DataError, InputError


def _black(img: Image.Image) -> set[tuple[int, int]]:
    a = np.asarray(img)
    assert a.shape[2] == 3 and (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    rows, cols = np.nonzero(a[..., 0] < 128)
    return set(zip(rows.tolist(), cols.tolist()))


def test_horizontal_line_hits_expected_pixels() -> None:
    # (0,0)-(10,0), size 33, padding 2: x spans pixel centres 2..30; the zero height is centred
    # on row 2 + (33 - 1 - 4) / 2 = 16.
    img = render_strokes([[[0, 10], [0, 0]]], size=33, line_width=1, padding=2)
    assert img.mode == "RGB" and img.size == (33, 33)
    assert _black(img) == {(16, c) for c in range(2, 31)}
    assert set(np.unique(np.asarray(img)).tolist()) == {0, 255}  # no antialiasing by default
    # width 3: rows within 1.5 of row 16; round caps add one column at each end (distance 1,
    # and sqrt(2) < 1.5 for the diagonal neighbours), but not two (distance 2)
    img3 = render_strokes([[[0, 10], [0, 0]]], size=33, line_width=3, padding=2)
    assert _black(img3) == {(r, c) for r in (15, 16, 17) for c in range(1, 32)}


def test_vertical_line_is_centred_and_scale_free() -> None:
    img = render_strokes([[[5, 5], [0, 100]]], size=21, line_width=1, padding=3)
    assert _black(img) == {(r, 10) for r in range(3, 18)}
    # raw coordinates of any range and offset give the same picture
    drawing = [[[0, 40, 40, 10], [0, 0, 25, 30]], [[20], [10]]]
    moved = [[[7 * x + 1000 for x in s[0]], [7 * y - 50 for y in s[1]]] for s in drawing]
    a = np.asarray(render_strokes(drawing, size=48, line_width=2, padding=4))
    assert np.array_equal(a, np.asarray(render_strokes(moved, size=48, line_width=2, padding=4)))


def _seg_dist(px: float, py: float, a: tuple[float, float], b: tuple[float, float]) -> float:
    """Point-segment distance by cases (an independent formulation of the renderer's geometry)."""
    ax, ay = a
    bx, by = b
    ux, uy, vx, vy = bx - ax, by - ay, px - ax, py - ay
    along = ux * vx + uy * vy
    length2 = ux * ux + uy * uy
    if length2 == 0 or along <= 0:
        return math.dist((px, py), a)
    if along >= length2:
        return math.dist((px, py), b)
    return abs(ux * vy - uy * vx) / math.sqrt(length2)


def test_random_drawing_matches_brute_force_reference() -> None:
    rng = np.random.default_rng(0)
    drawing = [[rng.uniform(0, 255, n).tolist(), rng.uniform(0, 255, n).tolist()] for n in (5, 3, 1)]
    size, padding, width = 40, 3, 2.5
    got = _black(render_strokes(drawing, size=size, line_width=width, padding=padding))
    # independent mapping: bounding box -> [padding, size-1-padding] along the longer side, centred
    xs = np.concatenate([s[0] for s in drawing])
    ys = np.concatenate([s[1] for s in drawing])
    span = size - 1 - 2 * padding
    s = span / max(np.ptp(xs), np.ptp(ys))
    ox = padding + (span - np.ptp(xs) * s) / 2
    oy = padding + (span - np.ptp(ys) * s) / 2
    segments = []
    for sx, sy in drawing:
        pts = [(ox + (x - xs.min()) * s, oy + (y - ys.min()) * s) for x, y in zip(sx, sy)]
        pts = pts if len(pts) > 1 else pts * 2
        segments += list(zip(pts[:-1], pts[1:]))
    expected, borderline = set(), set()
    for r in range(size):
        for c in range(size):
            d = min(_seg_dist(c, r, a, b) for a, b in segments)
            if abs(d - width / 2) < 1e-6:
                borderline.add((r, c))
            elif d < width / 2:
                expected.add((r, c))
    assert len(expected) > 100
    assert expected <= got and got - expected <= borderline


def test_single_point_and_antialias() -> None:
    # a single point lands on the centre pixel (5, 5); width 4 inks centres within distance 2
    dot = _black(render_strokes([[[3], [4]]], size=11, line_width=4, padding=2))
    assert dot == {(r, c) for r in range(3, 8) for c in range(3, 8) if (r - 5) ** 2 + (c - 5) ** 2 <= 4}
    assert len(dot) == 13
    a = np.asarray(render_strokes([[[0, 10], [0, 3]]], size=32, line_width=2, padding=2, antialias=True))
    assert ((a > 0) & (a < 255)).any()
    with pytest.raises(InputError, match="padding"):
        render_strokes([[[0, 1], [0, 1]]], size=16, padding=8)
    with pytest.raises(InputError):
        render_strokes([[[0, 1], [0, 1]]], line_width=0)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_stroke_file_formats(tmp_path: Path) -> None:
    stroke = [[0, 5, 9], [1, 1, 4]]
    timed = [[0, 5], [1, 1], [0, 17]]
    nd = _write(tmp_path / "cat.ndjson", [
        json.dumps({"word": "cat", "key_id": "111", "drawing": [stroke]}),
        "",
        json.dumps({"word": "cat", "key_id": "222", "drawing": [timed, stroke]}),
    ])
    drawings = load_stroke_file(nd)
    assert len(drawings) == 2 and drawings[0] == [([0.0, 5.0, 9.0], [1.0, 1.0, 4.0])]
    assert drawings[1][0] == ([0.0, 5.0], [1.0, 1.0])  # timings dropped
    obj = tmp_path / "one.json"
    obj.write_text(json.dumps({"drawing": [stroke]}))
    strokes_only = tmp_path / "strokes.json"
    strokes_only.write_text(json.dumps([stroke, timed]))
    many = tmp_path / "many.json"
    many.write_text(json.dumps([[stroke], [timed]]))
    assert load_stroke_file(obj) == [drawings[0][:1]]
    assert len(load_stroke_file(strokes_only)) == 1 and len(load_stroke_file(strokes_only)[0]) == 2
    assert len(load_stroke_file(many)) == 2
    assert count_drawings(nd) == 2 and count_drawings(nd, 1) == 1


@pytest.mark.parametrize("bad, message", [
    ("{not json", "line 3: not valid JSON"),
    (json.dumps({"word": "cat"}), 'line 3: expected a JSON object with a "drawing"'),
    (json.dumps({"drawing": [[[0, 1, 2], [0, 1]]]}), "line 3: stroke 0 needs equally long"),
    (json.dumps({"drawing": [[[0, "x"], [0, 1]]]}), "line 3: stroke 0 has a coordinate"),
    (json.dumps({"drawing": []}), "line 3: a drawing must be a non-empty"),
])
def test_bad_ndjson_line_names_file_and_line(tmp_path: Path, bad: str, message: str) -> None:
    good = json.dumps({"drawing": [[[0, 1], [0, 1]]]})
    path = _write(tmp_path / "bad.ndjson", [good, good, bad, good])
    with pytest.raises(DataError, match=message) as info:
        load_stroke_file(path)
    assert str(path) in str(info.value)


def test_missing_or_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_stroke_file(tmp_path / "nope.ndjson")
    empty = tmp_path / "empty.ndjson"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no drawings"):
        load_stroke_file(empty)


def test_render_stroke_file_names_and_limit(tmp_path: Path) -> None:
    lines = [json.dumps({"key_id": k, "drawing": [[[0, 10], [0, 10]]]}) for k in ("5", "7", "5")]
    lines.append(json.dumps({"drawing": [[[0, 10], [10, 0]]]}))
    nd = _write(tmp_path / "x.ndjson", lines)
    out = render_stroke_file(nd, tmp_path / "out", size=24, line_width=2, padding=2)
    assert [p.name for p in out] == ["5.png", "7.png", "5-line3.png", "line4.png"]
    expected = np.asarray(render_strokes([[[0, 10], [10, 0]]], size=24, line_width=2, padding=2))
    assert np.array_equal(np.asarray(Image.open(out[3]).convert("RGB")), expected)
    limited = render_stroke_file(nd, tmp_path / "lim", size=24, max_drawings=2, padding=2)
    assert [p.name for p in limited] == ["5.png", "7.png"]


def test_tiny_stroke_file_renders_expected_png(tmp_path: Path) -> None:
    nd = _write(tmp_path / "line.ndjson", [json.dumps({"key_id": "1", "drawing": [[[0, 10], [0, 0]]]})])
    (png,) = render_stroke_file(nd, tmp_path / "out", size=33, line_width=1, padding=2)
    assert _black(Image.open(png).convert("RGB")) == {(16, c) for c in range(2, 31)}
