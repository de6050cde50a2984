"""Images/s of ClassFolder iteration: decoding every image vs a warm decoded-image cache.

Data are generated in a temporary folder with tvt's synthetic shapes: photos saved as JPEG
(quality 90, with added sensor-like noise so the files are photo-sized rather than flat) and
sketches as PNG, both at ``--source-size`` pixels (256 = Sketchy's size). Rows: decoding alone
(no transform), the stage-B training transform (``tvt_train_transform``, one global crop) at each
``--crop`` size, and the evaluation resize at the first ``--crop`` size. Both paths run in one
process with ``--threads`` torch threads (1 = what a DataLoader worker uses), with the same seeds,
alternating repeat by repeat; the figure is the median. Source and cache files are in the OS page
cache in both columns, so this measures CPU work, not the disk.

    python benchmarks/loader.py                     # 300 photos + 300 sketches, 256 px
    python benchmarks/loader.py --quick
    python benchmarks/loader.py --source-size 1111  # TU-Berlin-sized sketches
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tvt.data.folder import ClassFolder
from tvt.data.synth import class_names, render_photo, render_sketch
from tvt.data.transforms import eval_transform, tvt_train_transform

CLASSES = 6
UNIQUE_PHOTOS = 24  # photo rendering is slow; files differ anyway by their own noise


def generate(root: Path, n: int, size: int) -> None:
    """``root/{photo,sketch}/<class>/<i>.{jpg,png}``: ``n`` images per modality."""
    rng = np.random.default_rng(0)
    names = class_names(CLASSES)
    base = [np.asarray(render_photo(names[i % CLASSES], rng, min(size, 256)).convert("RGB").resize((size, size)),
                       dtype=np.float32) for i in range(min(n, UNIQUE_PHOTOS))]
    for i in range(n):
        cls = names[i % CLASSES]
        for modality in ("photo", "sketch"):
            (root / modality / cls).mkdir(parents=True, exist_ok=True)
        noisy = np.clip(base[i % len(base)] + rng.normal(0.0, 6.0, base[0].shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(root / "photo" / cls / f"{i:04d}.jpg", quality=90)
        render_sketch(cls, rng, size).save(root / "sketch" / cls / f"{i:04d}.png")


def images_per_s(folder: ClassFolder) -> float:
    torch.manual_seed(0)
    random.seed(0)  # blur and solarize draw from Python's random
    t0 = time.perf_counter()
    for i in range(len(folder)):
        folder[i]
    return len(folder) / (time.perf_counter() - t0)


def folder_bytes(path: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in path.rglob(pattern))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=300, help="images per modality")
    p.add_argument("--source-size", type=int, default=256)
    p.add_argument("--crop", type=int, nargs="+", default=[224, 64], help="stage-B crop sizes")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="60 images per modality, 3 repeats")
    args = p.parse_args()
    if args.quick:
        args.images, args.repeats = 60, 3
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="tvt-loader-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        generate(root / "data", args.images, args.source_size)
        print(f"generated {2 * args.images} images in {time.perf_counter() - t0:.1f} s")
        classes = class_names(CLASSES)
        transforms = [("decode only", None)] + [
            (f"stage B train, {c} px", tvt_train_transform(size=c, scale=(0.14, 1.0))) for c in args.crop] + [
            (f"eval resize, {args.crop[0]} px", eval_transform(args.crop[0]))]
        rows = []
        for modality, ext in (("photo", "JPEG"), ("sketch", "PNG")):
            cache_dir = root / "cache" / modality
            for name, tf in transforms:
                plain = ClassFolder(root / "data" / modality, classes, tf)
                cached = ClassFolder(root / "data" / modality, classes, tf, cache_dir=cache_dir)
                images_per_s(plain)  # warm-up: the page cache
                images_per_s(cached)  # warm-up: fills the decoded-image cache
                cached.cache.hits = cached.cache.misses = 0
                times: dict[str, list[float]] = {"plain": [], "cached": []}
                for _ in range(args.repeats):
                    times["plain"].append(images_per_s(plain))
                    times["cached"].append(images_per_s(cached))
                assert cached.cache.misses == 0, "the cache should be warm"
                if tf is None:
                    same = all(np.array_equal(np.asarray(plain[i][0]), np.asarray(cached[i][0]))
                               for i in range(len(plain)))
                    assert same, "cached images differ from decoded ones"
                a, b = statistics.median(times["plain"]), statistics.median(times["cached"])
                rows.append((f"{modality} ({ext})", name, a, b))
            src = folder_bytes(root / "data" / modality, "*.*")
            npy = folder_bytes(cache_dir, "*.npy")
            print(f"{modality}: {src / args.images / 1024:.1f} KiB per source file, "
                  f"{npy / args.images / 1024:.1f} KiB per cache file")
    print(f"ClassFolder iteration, {args.images} images per modality at {args.source_size}x{args.source_size}, "
          f"one process, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}")
    print(f"| images | transform | decode every time, images/s (median of {args.repeats}) | warm cache, images/s | speed-up |")
    print("|---|---|---|---|---|")
    for data, name, a, b in rows:
        print(f"| {data} | {name} | {a:.0f} | {b:.0f} | {b / a:.2f}x |")


if __name__ == "__main__":
    main()
