"""The retrieval grid: each query sketch with its top-k photos, framed green (the query's class),
red (another class) or grey (the query), composed with PIL and captioned with matplotlib."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tvt.errors import DataError
from tvt.eval.report import new_figure, save_figure

GREEN = (0, 170, 0)
RED = (210, 0, 0)
GREY = (128, 128, 128)
GRID_PAD, GRID_BORDER, GRID_GAP = 4, 3, 12

def grid_cell_box(row: int, col: int, thumb: int = 64, caption_h: int = 0) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1), x1/y1 exclusive, of the framed cell at ``row``, ``col`` of a retrieval grid.

    Column 0 is the query; columns 1..k are the ranked results. The frame is ``GRID_BORDER`` px;
    ``caption_h`` px under every row are left free for captions.
    """
    cell = thumb + 2 * GRID_BORDER
    x0 = GRID_PAD + col * (cell + GRID_PAD) + (GRID_GAP if col > 0 else 0)
    y0 = GRID_PAD + row * (cell + GRID_PAD + caption_h)
    return x0, y0, x0 + cell, y0 + cell


def retrieval_grid(
    query_paths: Sequence[str | Path],
    ranked_paths: Sequence[Sequence[str | Path]],
    correct: Any,
    path: str | Path,
    k: int = 8,
    thumb: int = 64,
    query_names: Sequence[str] | None = None,
    result_names: Sequence[Sequence[str]] | None = None,
    title: str = "",
) -> Path:
    """PNG with one row per query: the query (grey frame), then its top-k results framed green
    when ``correct[i][j]`` (same class) and red otherwise. ``correct``: bool [n_queries, >= k].

    With ``query_names`` (class of each query) and ``result_names`` (class of each result) the
    figure also gets a title, a colour legend and a caption under every image: the query's class,
    and each result's rank and class.
    """
    from PIL import Image

    ok = np.asarray(correct, dtype=bool)
    if len(ranked_paths) != len(query_paths) or ok.ndim != 2 or ok.shape[0] != len(query_paths):
        raise DataError("retrieval_grid: query_paths, ranked_paths and correct must have one row per query")
    labelled = query_names is not None and result_names is not None
    cap = 14 if labelled else 0
    k = min(k, min((len(r) for r in ranked_paths), default=0), ok.shape[1])
    # placed by hand, not torchvision make_grid: every tile has its own frame colour (right / wrong class)
    canvas = Image.new("RGB", grid_size_hint(len(query_paths), k, thumb, cap), (255, 255, 255))
    for i, qpath in enumerate(query_paths):
        _paste_framed(canvas, _thumbnail(qpath, thumb), grid_cell_box(i, 0, thumb, cap), GREY)
        for j in range(k):
            frame = GREEN if ok[i, j] else RED
            _paste_framed(canvas, _thumbnail(ranked_paths[i][j], thumb), grid_cell_box(i, j + 1, thumb, cap), frame)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not labelled:
        canvas.save(out)
        return out
    return _labelled_grid(canvas, ok[:, :k], list(query_names), [list(r[:k]) for r in result_names], out, thumb, cap,
                          title)


def _labelled_grid(canvas: Any, ok: np.ndarray, query_names: list[str], result_names: list[list[str]], out: Path,
                   thumb: int, cap: int, title: str) -> Path:
    """The framed grid drawn by matplotlib with captions, a title and a colour legend."""
    from matplotlib.patches import Patch

    w, h = canvas.size
    dpi = 100
    fig = new_figure(figsize=(w / dpi * 1.25, h / dpi * 1.25 + 0.9), dpi=dpi)
    ax = fig.add_axes((0.0, 0.0, 1.0, h * 1.25 / (h * 1.25 + 90)))
    ax.imshow(np.asarray(canvas), interpolation="nearest")
    ax.set_axis_off()
    n, k = ok.shape
    for i in range(n):
        x0, _, x1, y1 = grid_cell_box(i, 0, thumb, cap)
        ax.text((x0 + x1) / 2, y1 + 1, f"query: {query_names[i]}", ha="center", va="top", fontsize=7,
                fontweight="bold")
        for j in range(k):
            x0, _, x1, y1 = grid_cell_box(i, j + 1, thumb, cap)
            ax.text((x0 + x1) / 2, y1 + 1, f"#{j + 1} {result_names[i][j]}", ha="center", va="top", fontsize=6.5,
                    color="green" if ok[i, j] else "firebrick")
    fig.suptitle(title or f"Top-{k} photos for one sketch query per class", fontsize=10, y=0.995, va="top")
    legend = [Patch(facecolor=np.array(GREY) / 255, label="query sketch (left column)"),
              Patch(facecolor=np.array(GREEN) / 255, label="result of the query's class"),
              Patch(facecolor=np.array(RED) / 255, label="result of another class")]
    fig.legend(handles=legend, loc="upper center", ncol=3, fontsize=6.5, frameon=False, handlelength=1.2,
               columnspacing=1.0,
               bbox_to_anchor=(0.5, 1 - 0.32 / (h * 1.25 / dpi + 0.9)))
    return save_figure(fig, out)


def _thumbnail(path: str | Path, size: int):
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            img = im.convert("RGBA")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the image for the retrieval grid ({exc})") from exc
    scale = size / max(img.size)
    if scale > 1:  # small images (the demo's 32 px) are enlarged to fill the cell
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
    img.thumbnail((size, size))  # not ImageOps.pad: a small image is not enlarged, and alpha goes over white
    tile = Image.new("RGB", (size, size), (255, 255, 255))
    tile.paste(img, ((size - img.width) // 2, (size - img.height) // 2), img)  # alpha over white
    return tile


def _paste_framed(canvas: Any, tile: Any, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
    from PIL import ImageDraw

    ImageDraw.Draw(canvas).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=colour)
    canvas.paste(tile, (box[0] + GRID_BORDER, box[1] + GRID_BORDER))


def grid_size_hint(n_rows: int, k: int, thumb: int = 64, caption_h: int = 0) -> tuple[int, int]:
    """(width, height) of an unlabelled retrieval grid with ``n_rows`` queries and ``k`` results each."""
    x1, y1 = grid_cell_box(max(n_rows - 1, 0), k, thumb, caption_h)[2:]
    return x1 + GRID_PAD, y1 + GRID_PAD + caption_h

