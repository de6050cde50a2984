"""QuickDraw stroke files: parsing and rendering to PNG sketches.

Accepted inputs (:func:`load_stroke_file`):

* ``.ndjson``: one JSON object per line with a ``"drawing"`` key (the Quick, Draw! release files,
  raw or simplified; ``"key_id"``, ``"word"`` and ``"recognized"`` are read when present);
* any other file: one JSON document, either an object with ``"drawing"``, a list of strokes (one
  drawing) or a list of drawings.

A stroke is ``[[x0, x1, ...], [y0, y1, ...]]`` or, in the raw files, ``[[x...], [y...], [t...]]``;
timings are ignored. Coordinates may be of any range (simplified files use 0-255, raw files screen
pixels); y grows downwards, as in an image.

Rendering (:func:`render_strokes`) is a pure function of the drawing and the options: the drawing's
bounding box is scaled (aspect ratio kept) so that its longer side spans pixel centres ``padding``
to ``size - 1 - padding``, and centred. A pixel is inked black when its centre lies within
``line_width / 2`` of a stroke segment (round caps and joints), so lines are crisp with no
antialiasing by default; ``antialias=True`` shades the one-pixel rim by coverage instead.
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tvt.errors import DataError, InputError

Stroke = tuple[list[float], list[float]]  # (xs, ys), same length >= 1
Drawing = list[Stroke]

_EPS = 1e-9  # keeps pixels exactly at distance line_width/2 inked despite float rounding
MAX_COORD = 1e9  # larger coordinates are refused: the drawing's extent would overflow to inf


class DrawingTooComplex(InputError):
    """A query drawing whose rasterisation would exceed the work budget (see :func:`simplify_for_render`)."""


@dataclass(frozen=True)
class StrokeRecord:
    """One drawing of a stroke file and where it came from (``line`` is 1-based)."""

    line: int
    drawing: Drawing
    key_id: str | None = None
    word: str | None = None
    recognized: bool | None = None


def _is_number(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def parse_drawing(obj: object, where: str) -> Drawing:
    """Validate a JSON drawing (list of strokes) and return it as ``[(xs, ys), ...]``.

    Raises DataError naming ``where`` (file and line) and the offending stroke.
    """
    if not isinstance(obj, list) or not obj:
        raise DataError(f"{where}: a drawing must be a non-empty list of strokes")
    drawing: Drawing = []
    for k, stroke in enumerate(obj):
        if not isinstance(stroke, list) or len(stroke) not in (2, 3):
            raise DataError(
                f"{where}: stroke {k} must be [[x...], [y...]] or [[x...], [y...], [t...]]"
            )
        xs, ys = stroke[0], stroke[1]
        if not isinstance(xs, list) or not isinstance(ys, list) or not xs or len(xs) != len(ys):
            raise DataError(f"{where}: stroke {k} needs equally long, non-empty x and y lists")
        if not all(_is_number(v) for v in xs) or not all(_is_number(v) for v in ys):
            raise DataError(f"{where}: stroke {k} has a coordinate that is not a finite number")
        if any(abs(v) > MAX_COORD for v in xs) or any(abs(v) > MAX_COORD for v in ys):
            raise DataError(f"{where}: stroke {k} has a coordinate beyond ±{MAX_COORD:g}")
        drawing.append(([float(v) for v in xs], [float(v) for v in ys]))
    return drawing


def _record(obj: object, line: int, where: str) -> StrokeRecord:
    if not isinstance(obj, dict) or "drawing" not in obj:
        raise DataError(f'{where}: expected a JSON object with a "drawing" key')
    key_id = obj.get("key_id")
    recognized = obj.get("recognized")
    return StrokeRecord(
        line=line,
        drawing=parse_drawing(obj["drawing"], where),
        key_id=None if key_id is None else str(key_id),
        word=obj.get("word") if isinstance(obj.get("word"), str) else None,
        recognized=recognized if isinstance(recognized, bool) else None,
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"stroke file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"stroke file {path} cannot be read as UTF-8 text: {exc}") from exc


def _iter_ndjson(path: Path, text: str) -> Iterator[StrokeRecord]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); each line of an "
                'ndjson file must be one JSON object with a "drawing" key'
            ) from exc
        yield _record(obj, number, where)


def iter_stroke_records(path: str | Path) -> Iterator[StrokeRecord]:
    """Yield the drawings of a stroke file in file order (see the module docstring for formats)."""
    path = Path(path)
    text = _read_text(path)
    if path.suffix.lower() == ".ndjson":
        yield from _iter_ndjson(path, text)
        return
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        # not a single JSON document: maybe ndjson without the extension
        yield from _iter_ndjson(path, text)
        return
    where = f"{path}, line 1"
    if isinstance(obj, dict):
        yield _record(obj, 1, where)
    elif isinstance(obj, list) and obj and _looks_like_drawing_list(obj):
        for k, drawing in enumerate(obj):
            yield StrokeRecord(line=1, drawing=parse_drawing(drawing, f"{path}, drawing {k}"))
    else:
        yield StrokeRecord(line=1, drawing=parse_drawing(obj, where))


def _looks_like_drawing_list(obj: list) -> bool:
    """True when ``obj[0]`` is a drawing (list of strokes), not a stroke (list of coordinate lists)."""
    first = obj[0]
    return (
        isinstance(first, list) and bool(first) and isinstance(first[0], list) and bool(first[0])
        and isinstance(first[0][0], list)
    )


def load_stroke_file(path: str | Path) -> list[Drawing]:
    """All drawings of a stroke file; DataError (naming file and line) when any is malformed."""
    drawings = [rec.drawing for rec in iter_stroke_records(path)]
    if not drawings:
        raise DataError(f"stroke file {path} contains no drawings")
    return drawings


def _layout(drawing: Drawing, size: int, padding: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Map stroke coordinates to pixel coordinates (pixel centres at integers), fit and centred."""
    xs = np.concatenate([np.asarray(s[0], dtype=np.float64) for s in drawing])
    ys = np.concatenate([np.asarray(s[1], dtype=np.float64) for s in drawing])
    x0, y0 = xs.min(), ys.min()
    w, h = xs.max() - x0, ys.max() - y0
    span = size - 1 - 2 * padding
    scale = span / max(w, h) if max(w, h) > 0 else 0.0
    off_x = padding + (span - w * scale) / 2.0
    off_y = padding + (span - h * scale) / 2.0
    return [
        (off_x + (np.asarray(sx) - x0) * scale, off_y + (np.asarray(sy) - y0) * scale)
        for sx, sy in drawing
    ]


def _ink_segment(ink: np.ndarray, p: tuple[float, float], q: tuple[float, float], radius: float,
                 antialias: bool) -> None:
    """Max-composite the ink of segment p-q (a capsule of ``radius``) into ``ink`` [H, W]."""
    size_y, size_x = ink.shape
    reach = radius + 1.0
    c0 = max(int(math.floor(min(p[0], q[0]) - reach)), 0)
    c1 = min(int(math.ceil(max(p[0], q[0]) + reach)), size_x - 1)
    r0 = max(int(math.floor(min(p[1], q[1]) - reach)), 0)
    r1 = min(int(math.ceil(max(p[1], q[1]) + reach)), size_y - 1)
    if c0 > c1 or r0 > r1:
        return
    cx = np.arange(c0, c1 + 1, dtype=np.float64)[None, :]
    cy = np.arange(r0, r1 + 1, dtype=np.float64)[:, None]
    dx, dy = q[0] - p[0], q[1] - p[1]
    length2 = dx * dx + dy * dy
    if length2 > 0:
        t = np.clip(((cx - p[0]) * dx + (cy - p[1]) * dy) / length2, 0.0, 1.0)
    else:
        t = np.zeros((1, 1))
    dist = np.hypot(cx - (p[0] + t * dx), cy - (p[1] + t * dy))
    if antialias:
        cover = np.clip(radius + 0.5 - dist, 0.0, 1.0)
    else:
        cover = (dist <= radius + _EPS).astype(np.float64)
    window = ink[r0 : r1 + 1, c0 : c1 + 1]
    np.maximum(window, cover, out=window)


def simplify_for_render(drawing: Drawing, size: int, line_width: float, padding: int, *,
                        min_step: float = 1.0, max_work: int | None = None,
                        max_segments: int | None = None) -> Drawing:
    """``drawing`` without the points that lie within ``min_step`` output pixels of the previous kept
    point of their stroke (the last point of a stroke is always kept), refused with
    :class:`DrawingTooComplex` when rasterising it would still touch more than ``max_work`` pixels
    or draw more than ``max_segments`` segments.

    Rasterising costs a fixed overhead per segment plus one pass over the segment's bounding box
    (widened by the line), so both many short segments and a few long criss-crossing ones are slow
    even under a point limit; both are counted in O(points) before any pixel is drawn. Dense
    hand-drawn input loses nothing visible: ``line_width`` is several pixels.
    """
    out: Drawing = []
    work = segments = 0
    reach = 2 * (line_width / 2.0 + 1.0) + 1
    for (sx, sy), (px, py) in zip(drawing, _layout(drawing, int(size), int(padding))):
        keep = [0]
        for i in range(1, len(sx)):
            j = keep[-1]
            if math.hypot(px[i] - px[j], py[i] - py[j]) >= min_step or i == len(sx) - 1:
                keep.append(i)
        for a, b in zip(keep[:-1], keep[1:]):
            work += int((abs(px[b] - px[a]) + reach) * (abs(py[b] - py[a]) + reach))
        segments += max(1, len(keep) - 1)
        out.append(([sx[i] for i in keep], [sy[i] for i in keep]))
    if max_segments is not None and segments > max_segments:
        raise DrawingTooComplex(f"the drawing is too complex to rasterise: {segments} segments after merging points "
                                f"closer than {min_step:g} px, the limit is {max_segments}")
    if max_work is not None and work > max_work:
        raise DrawingTooComplex(f"the drawing is too complex to rasterise: its segments cover {work} pixels of "
                                f"bounding boxes, the limit is {max_work} (use fewer long criss-crossing strokes)")
    return out


def check_render_options(size: int, line_width: float, padding: int) -> None:
    """InputError unless size >= 1, line_width > 0 and 0 <= padding <= (size - 1) / 2."""
    if int(size) < 1 or not line_width > 0 or padding < 0 or size - 1 - 2 * padding < 0:
        raise InputError(
            f"cannot render strokes with size={size}, line_width={line_width}, padding={padding}: "
            "need size >= 1, line_width > 0 and 0 <= padding <= (size - 1) / 2"
        )


def render_strokes(
    drawing: Sequence[Sequence[Sequence[float]]],
    size: int = 256,
    line_width: float = 3,
    padding: int = 16,
    antialias: bool = False,
) -> Image.Image:
    """Render one drawing as an RGB image: black strokes on white, ``size`` x ``size``.

    ``drawing`` is a list of strokes ``[xs, ys]`` (a third timing list is ignored). The bounding
    box is scaled to span pixel centres ``padding .. size-1-padding`` along its longer side,
    keeping the aspect ratio, and centred; a single point lands in the centre. A pixel is black
    when its centre is within ``line_width / 2`` of a segment (no antialiasing unless asked).
    Deterministic: the same drawing and options always give the same pixels.
    """
    check_render_options(size, line_width, padding)
    strokes = parse_drawing([[list(s[0]), list(s[1])] for s in drawing], "drawing")
    ink = np.zeros((int(size), int(size)), dtype=np.float64)
    radius = float(line_width) / 2.0
    for sx, sy in _layout(strokes, int(size), int(padding)):
        points = list(zip(sx.tolist(), sy.tolist()))
        if len(points) == 1:
            points = points * 2  # a dot: a zero-length segment is a disc
        for p, q in zip(points[:-1], points[1:]):
            _ink_segment(ink, p, q, radius, antialias)
    grey = np.round(255.0 * (1.0 - ink)).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def render_stroke_file(
    path: str | Path,
    out_dir: str | Path,
    *,
    size: int = 256,
    line_width: float = 3,
    padding: int = 16,
    max_drawings: int | None = None,
    antialias: bool = False,
) -> list[Path]:
    """Render the drawings of one stroke file to ``out_dir/<key_id>.png``; return the paths.

    Files are named by ``key_id`` when the record has one (QuickDraw-Extended names its sketches
    the same way), else ``line<N>.png``; a repeated name gets ``-line<N>`` appended. At most
    ``max_drawings`` drawings are rendered, in file order; the file is streamed, so lines after
    that limit are not read. A bad line raises DataError naming the file and line (drawings before
    it are already written: validate with :func:`count_drawings` first when that matters).
    """
    records = iter_stroke_records(path)
    if max_drawings is not None:
        records = itertools.islice(records, max_drawings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    used: set[str] = set()
    for rec in records:
        stem = rec.key_id if rec.key_id and _safe_stem(rec.key_id) else f"line{rec.line}"
        if stem in used:
            stem = f"{stem}-line{rec.line}"
        used.add(stem)
        target = out / f"{stem}.png"
        render_strokes(rec.drawing, size, line_width, padding, antialias).save(target)
        written.append(target)
    if not written and max_drawings != 0:
        raise DataError(f"stroke file {path} contains no drawings")
    return written


def count_drawings(path: str | Path, max_drawings: int | None = None) -> int:
    """Validate a stroke file (up to ``max_drawings`` drawings) and return how many it holds."""
    records = iter_stroke_records(path)
    if max_drawings is not None:
        records = itertools.islice(records, max_drawings)
    return sum(1 for _ in records)


def _safe_stem(text: str) -> bool:
    """A key id usable as a file name (QuickDraw key ids are digits)."""
    return all(ch.isalnum() or ch in "-_" for ch in text) and len(text) <= 64
