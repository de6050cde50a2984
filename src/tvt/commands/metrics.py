"""``tvt metrics QUERIES.npz GALLERY.npz``: retrieval metrics of saved features (spec §6.2, §6.6)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "retrieval metrics (mAP@all, mAP@k, P@k, optional ITQ binary codes) of two feature files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("queries", type=Path, help="query .npz with 'features' [N, D] and integer 'labels' [N]")
    parser.add_argument("gallery", type=Path, help="gallery .npz with 'features' [M, D] and integer 'labels' [M]")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the metrics as JSON")
    parser.add_argument(
        "--map-k", type=int, nargs="+", default=[200], metavar="K", help="mAP@K cut-offs (default: 200)"
    )
    parser.add_argument(
        "--prec-k", type=int, nargs="+", default=[100, 200], metavar="K", help="P@K cut-offs (default: 100 200)"
    )
    parser.add_argument(
        "--exclude-self",
        action="store_true",
        help="intra-modal evaluation (same file twice): leave each query out of its own ranking",
    )
    parser.add_argument(
        "--binary", type=int, default=None, metavar="BITS", help="also report Hamming metrics of ITQ codes (e.g. 64)"
    )
    parser.add_argument("--chunk", type=int, default=None, metavar="N", help="queries scored at once (memory bound)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")


def load_feature_file(path: Path) -> tuple[Any, Any]:
    """``features`` [N, D] float32 and ``labels`` [N] int64 of an .npz file; DataError naming the file and key."""
    import numpy as np

    from tvt.errors import DataError
    from tvt.eval.metric_inputs import check_features, check_labels

    if not path.is_file():
        raise DataError(f"{path}: file not found; expected an .npz with 'features' and 'labels'")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty file
        raise DataError(f"{path}: not a readable .npz file ({exc})") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # a plain .npy array has no named keys
        raise DataError(f"{path}: a single array, not an .npz archive; save the features with "
                        "np.savez(path, features=..., labels=...)")
    try:
        with loaded as z:
            arrays = {key: z[key] for key in z.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from exc
    for key in ("features", "labels"):
        if key not in arrays:
            raise DataError(f"{path}: missing key '{key}' (found: {sorted(arrays) or 'nothing'})")
    feats = check_features(arrays["features"], f"{path}: key 'features'")
    zero = ~feats.any(dim=1)
    if bool(zero.any()):  # named here: the metrics code only knows "query" / "gallery"
        raise DataError(f"{path}: key 'features': {int(zero.sum())} all-zero rows (first: row "
                        f"{int(zero.nonzero()[0, 0])}); cosine similarity is undefined for them, re-extract the features")
    labels = check_labels(arrays["labels"], feats.shape[0], f"{path}: key 'labels'")
    return feats, labels


def run(args: argparse.Namespace) -> int:
    from tvt.errors import DataError
    from tvt.eval.binary import binary_retrieval_metrics
    from tvt.eval.metrics import retrieval_metrics
    from tvt.eval.report import format_table, write_results

    qf, ql = load_feature_file(args.queries)
    gf, gl = load_feature_file(args.gallery)
    if qf.shape[1] != gf.shape[1]:
        raise DataError(
            f"{args.queries}: key 'features' has dimension {qf.shape[1]} but {args.gallery} has {gf.shape[1]}; "
            "both files must come from the same model"
        )
    for flag, ks in (("--map-k", args.map_k), ("--prec-k", args.prec_k)):
        if any(k < 1 for k in ks):
            raise DataError(f"{flag}: cut-offs must be positive, got {ks}")
    kwargs = dict(ks_map=args.map_k, ks_prec=args.prec_k, exclude_self=args.exclude_self, chunk=args.chunk)
    results = retrieval_metrics(qf, ql, gf, gl, progress=args.progress, **kwargs)
    keys = [k for k in results if k not in ("n_queries", "n_gallery")]
    rows = {f"float ({qf.shape[1]}-d)": results}
    merged = dict(results)
    if args.binary is not None:
        binary = binary_retrieval_metrics(qf, ql, gf, gl, n_bits=args.binary, **kwargs)
        rows[f"binary ({args.binary} bits)"] = binary
        merged.update({f"binary/{k}": v for k, v in binary.items() if k in keys})
    print(f"{results['n_queries']} queries, {results['n_gallery']} gallery items")
    print(format_table(rows, keys))
    if args.json is not None:
        print(f"wrote {write_results(merged, args.json)}")
    return 0
