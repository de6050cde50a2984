"""Sketch -> photo search over an index: the Python API behind ``tvt search`` and ``tvt serve``.

>>> from tvt.search import Retriever
>>> r = Retriever.from_index("my_index")
>>> for hit in r.search("cat_sketch.png", k=5):
...     print(hit.rank, f"{hit.score:.3f}", hit.path)

A query is an image file, a QuickDraw stroke file (``.ndjson`` / ``.json``), a PIL image, a
uint8 array [H, W] or [H, W, 3], or one drawing (a list of strokes ``[[x...], [y...]]``). It is
converted to RGB on white (EXIF orientation applied), cropped to its ink (``crop=True``, the
default everywhere: Python, ``tvt search`` and the web page; ``crop=False`` / ``--no-crop`` keeps
the whole frame), resized with the evaluation transform and embedded with modality ``skt``;
photos were embedded with modality ``img``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

from tvt.errors import CheckpointError, InputError
from tvt.search.backends import SearchBackend, choose_backend, make_backend
from tvt.search.embed import embed_batch
from tvt.search.index import CACHE_DIR, INDEX_FILE, PhotoIndex, display_name, index_transform, log

Query = Union[str, Path, Image.Image, np.ndarray, Sequence]
STROKE_SUFFIXES = (".ndjson", ".json")
QUERY_MAX_PIXELS = 40_000_000  # a query image (file or array) larger than this is refused before decoding
# Crop a sketch to its ink before searching, by default, in every entry point: a drawing in a corner
# of a canvas is then searched as the drawing, and one sketch ranks the same everywhere.
DEFAULT_CROP = True
# Rasterising a query drawing is bounded (~0.5 s on one core): at most 64 canvases of segment bounding
# boxes (~13 ns a pixel) and 10,000 segments once points closer than 1 px are merged (~45 us each).
RENDER_WORK_PER_PIXEL = 64
MAX_RENDER_SEGMENTS = 10_000


@dataclass(frozen=True)
class SearchResult:
    """One hit: ``rank`` from 1, cosine ``score``, photo ``id`` (row of the index)."""

    rank: int
    path: Path
    relpath: str
    score: float
    id: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; a file name that is not valid UTF-8 is shown with ``\\xNN`` escapes."""
        d = asdict(self)
        d["path"], d["relpath"] = display_name(str(self.path)), display_name(self.relpath)
        return d


def render_drawing(drawing: Sequence, size: int = 256, line_width: float = 4, padding: int = 16) -> Image.Image:
    """One QuickDraw drawing (list of ``[xs, ys(, ts)]`` strokes) -> RGB sketch image."""
    from tvt.data.strokes import parse_drawing, render_strokes, simplify_for_render

    if not isinstance(drawing, (list, tuple)) or not drawing:
        raise InputError("a drawing must be a non-empty list of strokes [[x0, x1, ...], [y0, y1, ...]]")
    try:
        strokes = parse_drawing([list(s)[:2] for s in drawing], "query drawing")
        strokes = simplify_for_render(strokes, size, line_width, padding, max_work=RENDER_WORK_PER_PIXEL * size * size,
                                      max_segments=MAX_RENDER_SEGMENTS)
    except (TypeError, ValueError) as exc:
        raise InputError(f"malformed drawing ({exc}); expected a list of strokes [[x...], [y...]]") from exc
    except InputError:
        raise
    except Exception as exc:  # the parser's DataError speaks of files; re-raise as a query error
        raise InputError(str(exc)) from exc
    return render_strokes(strokes, size=size, line_width=line_width, padding=padding)


def load_query_image(query: Query, *, drawing_index: int = 0,
                     max_pixels: int | None = QUERY_MAX_PIXELS) -> Image.Image:
    """Any supported query -> RGB PIL image on a white background."""
    from tvt.data.images import exif_orientation, load_rgb, orient, to_rgb

    if isinstance(query, Image.Image):
        return orient(to_rgb(query, "white"), exif_orientation(query))
    if isinstance(query, np.ndarray):
        if query.dtype != np.uint8 or query.ndim not in (2, 3):
            raise InputError(f"an array query must be uint8 [H, W] or [H, W, 3], got {query.dtype} {query.shape}")
        return Image.fromarray(query).convert("RGB")
    if isinstance(query, (str, Path)):
        path = Path(query).expanduser()
        if not path.is_file():
            raise InputError(f"query file {path} does not exist")
        if path.suffix.lower() in STROKE_SUFFIXES:
            from tvt.data.strokes import load_stroke_file

            drawings = load_stroke_file(path)
            if not 0 <= drawing_index < len(drawings):
                raise InputError(f"stroke file {path} holds {len(drawings)} drawings; "
                                 f"--drawing {drawing_index} is out of range")
            return render_drawing(drawings[drawing_index])
        return load_rgb(path, "white", max_pixels=max_pixels, exif_transpose=True)
    if isinstance(query, (list, tuple)):
        return render_drawing(query)
    raise InputError(f"unsupported query type {type(query).__name__}: give a path, a PIL image, an array or a drawing")


def crop_to_ink(img: Image.Image, threshold: int = 245, margin: float = 0.08) -> Image.Image:
    """Crop a sketch to the bounding box of its ink (pixels darker than ``threshold``), padded
    to a white square with ``margin`` of the side on each edge. A blank image is returned as is.

    A person drawing in a corner of a large canvas gets results for the drawing, not for the
    empty canvas around it; training sketches fill their frame.
    """
    grey = np.asarray(img.convert("L"))
    ys, xs = np.nonzero(grey < threshold)
    if len(xs) == 0:
        return img
    box = img.crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    side = max(box.size)
    pad = max(1, int(round(side * margin)))
    canvas = Image.new("RGB", (side + 2 * pad, side + 2 * pad), (255, 255, 255))
    canvas.paste(box, (pad + (side - box.width) // 2, pad + (side - box.height) // 2))
    return canvas


class Retriever:
    """Search an index of photos with sketches. Thread-safe: queries are embedded one batch at a time.

    ``Retriever.from_index(index_dir)`` loads an index made by ``tvt index`` and its model;
    ``search(query, k) -> [SearchResult]`` (``rank``, ``score``, ``path``, ``id``), best first.
    A query is an image file, a stroke file, a PIL image, an array or one drawing (see the module).
    """

    def __init__(self, index: PhotoIndex, encoder: Callable[[torch.Tensor, str], torch.Tensor],
                 backend: SearchBackend | None = None,
                 transform: Callable[[Image.Image], torch.Tensor] | None = None) -> None:
        dim = getattr(encoder, "dim", index.model.dim)
        if dim != index.model.dim:
            raise CheckpointError(f"the encoder gives {dim}-d features but index {index.index_dir} "
                                  f"holds {index.model.dim}-d")
        self.index = index
        self.encoder = encoder
        self.backend = backend if backend is not None else make_backend("exact", index.embeddings)
        self.transform = transform or index_transform(index.model)
        self._lock = threading.Lock()

    @classmethod
    def from_index(cls, index_dir: str | Path, *, checkpoint: str | Path | None = None, backend: str = "auto",
                   device: str = "cpu", encoder: Any = None, verify: bool = True, quiet: bool = False) -> Retriever:
        """Load ``index_dir`` and the model that built it (or ``checkpoint``, which must be the
        same file by sha256), and set up ``backend`` (see :data:`tvt.search.backends.BACKEND_NAMES`)."""
        index_dir = Path(index_dir).expanduser()
        index = PhotoIndex.load(index_dir, verify=verify, mmap=_reads_rows_lazily(index_dir, backend))
        if encoder is None:
            encoder = load_index_encoder(index, checkpoint, device)
        say = None if quiet else log
        search = make_backend(backend, index.embeddings, cache_dir=Path(index_dir) / CACHE_DIR,
                              cache_key=index.checksum, log=say)
        return cls(index, encoder, search)

    def __len__(self) -> int:
        return len(self.index)

    def embed(self, queries: Sequence[Query] | Query, *, crop: bool = DEFAULT_CROP) -> np.ndarray:
        """L2-normalised sketch embeddings [Q, D] of one query or a list of queries."""
        items = list(queries) if _is_many(queries) else [queries]
        if not items:
            raise InputError("no query given")
        images = [load_query_image(q) for q in items]
        x = torch.stack([self.transform(crop_to_ink(im) if crop else im) for im in images])
        with self._lock:
            return embed_batch(self.encoder, x, "skt")

    def search(self, query: Query, k: int = 20, *, crop: bool = DEFAULT_CROP) -> list[SearchResult]:
        """The ``k`` best photos for one sketch query, best first."""
        return self.search_embeddings(self.embed(query, crop=crop), k)[0]

    def search_many(self, queries: Sequence[Query], k: int = 20, *, crop: bool = DEFAULT_CROP) -> list[list[SearchResult]]:
        """:meth:`search` for several queries, embedded and searched as one batch."""
        return self.search_embeddings(self.embed(list(queries), crop=crop), k)

    def search_embeddings(self, emb: np.ndarray, k: int = 20) -> list[list[SearchResult]]:
        """Ranked results for query embeddings [Q, D] (already L2-normalised)."""
        if int(k) < 1:
            raise InputError(f"k must be at least 1, got {k}")
        scores, ids = self.backend.search(emb, int(k))
        out = []
        for srow, irow in zip(scores, ids):
            hits = [(float(s), int(i)) for s, i in zip(srow, irow) if i >= 0]
            out.append([SearchResult(r, self.index.abspath(i), self.index.paths[i], s, i)
                        for r, (s, i) in enumerate(hits, start=1)])
        return out


def _reads_rows_lazily(index_dir: str | Path, backend: str) -> bool:
    """True when ``backend`` over this index is the compact one, which needs only some float32 rows
    in memory: the embeddings then stay memory-mapped (1.5 GB per million 384-d photos)."""
    if backend == "auto":
        try:
            backend = choose_backend(int(json.loads((Path(index_dir) / INDEX_FILE).read_text())["count"]))
        except (OSError, ValueError, KeyError, TypeError):
            return False  # PhotoIndex.load reports what is wrong with the index
    return backend == "compact-exact"


def _is_many(queries: Any) -> bool:
    """A list of queries (not one drawing, which is also a list)."""
    if not isinstance(queries, (list, tuple)) or not queries:
        return isinstance(queries, (list, tuple))
    first = queries[0]
    return isinstance(first, (str, Path, Image.Image, np.ndarray)) or (
        isinstance(first, (list, tuple)) and bool(first) and isinstance(first[0], (list, tuple))
        and bool(first[0]) and isinstance(first[0][0], (list, tuple))
    )


def load_index_encoder(index: PhotoIndex, checkpoint: str | Path | None, device: str = "cpu") -> Any:
    """The encoder that built ``index``: its checkpoint, model folder or pretrained backbone's
    weights (or ``checkpoint``, the same at a new location), checked by sha256."""
    from tvt.models.resolve import open_encoder
    from tvt.search.identity import model_sha256

    path = Path(checkpoint).expanduser() if checkpoint is not None else Path(str(index.model.checkpoint))
    if index.model.checkpoint is None and checkpoint is None:
        raise CheckpointError(f"index {index.index_dir} records no checkpoint; pass --checkpoint")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} (used to build index {index.index_dir}) is not there; "
                              "pass --checkpoint with its new location")
    digest = model_sha256(path)
    if index.model.sha256 and digest != index.model.sha256:
        raise CheckpointError(f"checkpoint {path} (sha256 {digest[:12]}) is not the one that built index "
                              f"{index.index_dir} (sha256 {index.model.sha256[:12]}); pass that checkpoint, "
                              "or re-index with `tvt index --rebuild`")
    backbone = index.model.extra.get("pretrained_backbone")
    if backbone:
        encoder = open_encoder(backbone=backbone, weights=path, img_size=index.model.img_size, device=device)
    else:
        encoder = open_encoder(path, return_idx=index.model.return_idx, device=device)
    if encoder.img_size != index.model.img_size:
        raise CheckpointError(f"checkpoint {path} expects {encoder.img_size}px inputs, "
                              f"the index {index.model.img_size}px")
    return encoder


def contact_sheet(query: Image.Image, results: Sequence[SearchResult], *, thumb: int = 128,
                  cols: int = 5) -> Image.Image:
    """A PNG-ready sheet: the query (left) and the results in a grid, each with rank and score."""
    from tvt.data.images import exif_orientation, orient

    rows = max(1, -(-len(results) // cols))
    cell, text_h, gap = thumb, 14, 6
    width = (cols + 1) * (cell + gap) + gap
    height = rows * (cell + text_h + gap) + gap
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    sheet.paste(ImageOps.pad(query.convert("RGB"), (cell, cell), color=(255, 255, 255)), (gap, gap))
    draw.text((gap, gap + cell + 1), "query", fill=(0, 0, 0))
    for n, hit in enumerate(results):
        r, c = divmod(n, cols)
        x, y = gap + (c + 1) * (cell + gap), gap + r * (cell + text_h + gap)
        try:
            with Image.open(hit.path) as im:
                orientation = exif_orientation(im)
                im.draft("RGB", (cell, cell))
                tile = ImageOps.pad(orient(im.convert("RGB"), orientation), (cell, cell), color=(240, 240, 240))
        except (OSError, ValueError):
            tile = Image.new("RGB", (cell, cell), (200, 200, 200))
        sheet.paste(tile, (x, y))
        draw.text((x, y + cell + 1), f"{hit.rank}  {hit.score:.3f}", fill=(0, 0, 0))
    return sheet
