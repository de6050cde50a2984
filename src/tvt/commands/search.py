"""`tvt search`: find the photos of an index that best match a sketch."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "search an index with a sketch image or a QuickDraw stroke file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("query", metavar="SKETCH", help="sketch image (png, jpg, ...) or stroke file (.ndjson / .json)")
    p.add_argument("--index", required=True, metavar="INDEX_DIR", help="index made by `tvt index`")
    p.add_argument("-k", type=int, default=20, help="number of results (default 20)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--sheet", metavar="OUT_PNG", help="also write a contact sheet of the sketch and its results")
    p.add_argument("--crop", action=argparse.BooleanOptionalAction, default=None,
                   help="crop the sketch to its strokes before searching (default: on, as on the web page "
                        "and in Python; --no-crop searches the whole frame)")
    p.add_argument("--drawing", type=int, default=0, help="which drawing of a stroke file (default 0, the first)")
    p.add_argument("--backend", default="auto", help="auto (exact below 50k photos, compact-exact above), exact, "
                   "compact-exact, faiss-flat, faiss-sq8, faiss-ivf or faiss-hnsw")
    p.add_argument("--checkpoint", help="the index's checkpoint, model folder or backbone weights at a new location "
                                        "(checked by sha256)")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")


def run(args: argparse.Namespace) -> int:
    import json

    from tvt.commands.index import resolve_device
    from tvt.errors import InputError
    from tvt.search.index import display_name
    from tvt.search.retriever import DEFAULT_CROP, Retriever, contact_sheet, crop_to_ink, load_query_image

    if args.k < 1:
        raise InputError(f"-k must be at least 1, got {args.k}")
    crop = DEFAULT_CROP if args.crop is None else args.crop
    sheet = check_sheet_path(args.sheet) if args.sheet else None
    retriever = Retriever.from_index(args.index, checkpoint=args.checkpoint, backend=args.backend,
                                     device=resolve_device(args.device), quiet=args.json)
    if len(retriever) == 0:
        raise InputError(f"index {args.index} holds no photos (its folder had no readable images when it was "
                         "indexed); add photos and re-run `tvt index`")
    image = load_query_image(args.query, drawing_index=args.drawing)
    results = retriever.search(image, args.k, crop=crop)
    if args.json:
        print(json.dumps({"query": display_name(str(args.query)), "backend": retriever.backend.name, "crop": crop,
                          "results": [r.to_dict() for r in results]}, indent=1))
    else:
        width = len(str(len(results)))
        for r in results:
            print(f"{r.rank:>{width}}  {r.score:.4f}  {display_name(str(r.path))}")
    if sheet is not None:
        save_sheet(contact_sheet(crop_to_ink(image) if crop else image, results), sheet)
    return 0


SHEET_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def check_sheet_path(name: str) -> Path:
    """The --sheet path, checked before any work: a known image suffix and an existing folder."""
    from tvt.errors import InputError

    path = Path(name).expanduser()
    if path.is_dir():
        raise InputError(f"--sheet {name} is a folder; give a file name such as {path / 'sheet.png'}")
    if path.suffix.lower() not in SHEET_FORMATS:
        raise InputError(f"--sheet {name}: the contact sheet is written as an image; give a name ending in "
                         f"{', '.join(SHEET_FORMATS)}")
    if not path.parent.is_dir():
        raise InputError(f"--sheet {name}: folder {path.parent} does not exist; create it first")
    return path


def save_sheet(img: Any, path: Path) -> None:
    from tvt.errors import InputError
    from tvt.files import atomic_write

    try:
        atomic_write(path, lambda fh: img.save(fh, SHEET_FORMATS[path.suffix.lower()]))
    except OSError as exc:
        raise InputError(f"cannot write the contact sheet {path}: {exc.strerror or exc}") from exc
