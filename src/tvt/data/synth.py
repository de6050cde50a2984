"""The built-in synthetic sketch/photo dataset (``tvt data synth``, the data of ``tvt demo``).

Each class is a parametric shape family (:mod:`tvt.data.synth_shapes`). A "photo" is a filled,
textured rendering of one random instance on a varied background, with an object colour drawn
independently of the class; a "sketch" is a hand-drawn-looking line drawing of another, independent
instance. Shape is therefore the only thing linking a sketch to a photo of its class.

Drawing happens at 4x the output size and is box-downsampled (antialiasing). Every image has its own
``numpy.random.Generator`` seeded from (version, seed, class name, modality, index), so the same
seed gives byte-identical files whatever the number of classes or images.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tvt.data.synth_geometry import Figure
from tvt.data.synth_shapes import CLASS_NAMES, SHAPES
from tvt.errors import ConfigError, DataError

GENERATOR_VERSION = 1
SUPERSAMPLE = 4
_MODALITY_ID = {"photo": 1, "sketch": 2}

Array = np.ndarray


# ----------------------------------------------------------------------------- placement
def _place(fig: Figure, rng: np.random.Generator, canvas: int, scale: tuple[float, float]) -> tuple[Figure, float]:
    """Random pose: mirror, rotation, aspect jitter, scale, then a position that keeps it inside.

    Returns the figure in pixel coordinates and the pixel length of one unit (for widths)."""
    ang = np.deg2rad(rng.uniform(-30.0, 30.0))
    asp = np.exp(rng.uniform(-0.15, 0.15))
    mir = -1.0 if rng.random() < 0.5 else 1.0
    c, s = np.cos(ang), np.sin(ang)
    m = np.array([[c, -s], [s, c]]) @ np.diag([mir * asp, 1.0 / asp])
    unit = rng.uniform(*scale) * canvas
    every = [p for p, _ in fig.regions] + [p for p, _ in fig.bars] + fig.details
    allp = np.vstack(every) @ m.T * unit
    lo, hi = allp.min(0), allp.max(0)
    fit = min(1.0, 0.94 * canvas / float((hi - lo).max()))  # shrink what would not fit
    unit, lo, hi = unit * fit, lo * fit, hi * fit
    margin = 0.03 * canvas
    off = np.array([rng.uniform(margin - lo[i], max(margin - lo[i], canvas - margin - hi[i])) for i in range(2)])

    def tf(p: Array) -> Array:
        return p @ m.T * unit + off

    out = Figure([(tf(p), solid) for p, solid in fig.regions], [(tf(p), w) for p, w in fig.bars],
                 [tf(p) for p in fig.details])
    return out, unit


def _xy(p: Array) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in p]


# ----------------------------------------------------------------------------- photos
def _random_colour(rng: np.random.Generator) -> Array:
    """A random RGB colour in [0, 1] (uniform hue, moderate-to-full saturation and value)."""
    h, s, v = rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.25, 1.0)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _box(a: Array, f: int) -> Array:
    """Box-downsample the first two axes of ``a`` by the integer factor ``f`` (antialiasing)."""
    n = a.shape[0] // f
    return a.reshape(n, f, n, f, *a.shape[2:]).mean(axis=(1, 3))


def _smooth_noise(rng: np.random.Generator, n: int, cells: int) -> Array:
    """Smooth value noise in [0, 1], shape [n, n] (random grid upsampled bicubically)."""
    small = Image.fromarray(rng.random((cells, cells)).astype(np.float32))  # mode "F"
    return np.clip(np.asarray(small.resize((n, n), Image.Resampling.BICUBIC)), 0.0, 1.0)


def _pattern(rng: np.random.Generator, n: int) -> Array:
    """A texture mix map in [0, 1], shape [n, n]: flat, gradient, stripes, dots or noise."""
    kind = rng.integers(5)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    phi = rng.uniform(0, np.pi)
    along = xx * np.cos(phi) + yy * np.sin(phi)
    if kind == 0:
        return np.zeros((n, n), np.float32)
    if kind == 1:
        return (along - along.min()) / max(along.max() - along.min(), 1e-6)
    if kind == 2:
        return (np.sin(2 * np.pi * along / rng.uniform(0.06, 0.15)) > 0).astype(np.float32)
    if kind == 3:
        p = rng.uniform(0.06, 0.12)
        d = np.hypot((xx % p) / p - 0.5, (yy % p) / p - 0.5)
        return (d < rng.uniform(0.2, 0.35)).astype(np.float32)
    return _smooth_noise(rng, n, int(rng.integers(4, 12)))


def _background(rng: np.random.Generator, n: int) -> Array:
    """Background [n, n, 3] in [0, 1]: plain, gradient, noisy or cluttered with faint blobs."""
    a, b = _random_colour(rng), _random_colour(rng)
    kind = rng.integers(4)
    if kind == 0:
        mix = np.zeros((n, n), np.float32)
    elif kind == 1:
        mix = np.linspace(0, 1, n, dtype=np.float32)[:, None] * np.ones((1, n), np.float32)
        if rng.random() < 0.5:
            mix = mix.T
    else:
        mix = _smooth_noise(rng, n, int(rng.integers(3, 8))) * (0.6 if kind == 2 else 0.3)
    bg = a[None, None] * (1 - mix[..., None]) + b[None, None] * mix[..., None]
    if kind == 3:  # faint distractor blobs, blurred so they carry no crisp shape
        blobs = Image.new("L", (n, n), 0)
        d = ImageDraw.Draw(blobs)
        for _ in range(int(rng.integers(3, 8))):
            cx, cy, rx, ry = rng.uniform(0, n, 2).tolist() + (rng.uniform(0.04, 0.15, 2) * n).tolist()
            d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=int(rng.integers(60, 110)))
        alpha = np.asarray(blobs.filter(ImageFilter.GaussianBlur(n * 0.02)), dtype=np.float32)[..., None] / 255
        bg = bg * (1 - alpha) + _random_colour(rng)[None, None] * alpha
    return bg


def _photo_masks(fig: Figure, unit: float, n: int, rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    """Object mask and detail-line mask ("L", n x n) of a placed figure."""
    mask, lines = Image.new("L", (n, n), 0), Image.new("L", (n, n), 0)
    d, dl = ImageDraw.Draw(mask), ImageDraw.Draw(lines)
    for poly, solid in fig.regions:  # in order: holes cut through what came before
        d.polygon(_xy(poly), fill=255 if solid else 0)
    for line, w in fig.bars:
        d.line(_xy(line), fill=255, width=max(1, round(w * unit)), joint="curve")
    for line in fig.details:
        dl.line(_xy(line), fill=255, width=max(1, round(rng.uniform(0.02, 0.035) * unit)), joint="curve")
    return mask, lines


def render_photo(name: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """Render one "photo" of class ``name``: textured object on a background, RGB ``size`` px.

    Shapes are drawn at 4x and colour fields at 2x; both are box-averaged down to ``size``, which
    equals compositing at full resolution wherever the colour is smooth and costs far less."""
    n, n2 = size * SUPERSAMPLE, size * 2
    fig, unit = _place(SHAPES[name](rng), rng, n, (0.28, 0.45))
    bg = _background(rng, n2)
    bg_mean = bg.mean((0, 1))
    colour = _random_colour(rng)
    for _ in range(20):  # keep the object visible against the background's mean colour
        if np.abs(colour - bg_mean).sum() > 0.45:
            break
        colour = _random_colour(rng)
    second = _random_colour(rng) if rng.random() < 0.5 else colour * rng.uniform(0.45, 0.75)
    mix = _pattern(rng, n2)[..., None] * rng.uniform(0.4, 0.9)
    obj = colour[None, None] * (1 - mix) + second[None, None] * mix
    yy, xx = np.mgrid[0:n2, 0:n2].astype(np.float32) / n2  # soft directional light
    phi = rng.uniform(0, 2 * np.pi)
    obj = obj * (1.0 + rng.uniform(0.0, 0.35) * ((xx - 0.5) * np.cos(phi) + (yy - 0.5) * np.sin(phi)))[..., None]
    mask, lines = _photo_masks(fig, unit, n, rng)
    m = np.asarray(mask.reduce(SUPERSAMPLE), dtype=np.float32)[..., None] / 255
    ink = np.asarray(lines.reduce(SUPERSAMPLE), dtype=np.float32)[..., None] / 255
    tone = colour * 0.3 if colour.mean() > 0.35 else np.minimum(colour + 0.5, 1.0)
    obj = _box(obj, 2) * (1 - ink) + tone[None, None] * ink
    img = (_box(bg, 2) * (1 - m) + obj * m) * 255 + rng.normal(0.0, rng.uniform(0.0, 4.0), (size, size, 3))
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))  # [size, size, 3] -> RGB


# ----------------------------------------------------------------------------- sketches
def _resample(p: Array, step: float) -> tuple[Array, Array]:
    """Points every ``step`` px along polyline ``p`` [K, 2]; returns (points [M, 2], arclength [M])."""
    seg = np.hypot(*np.diff(p, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    u = np.linspace(0.0, s[-1], max(2, int(s[-1] / step) + 1))
    return np.stack([np.interp(u, s, p[:, 0]), np.interp(u, s, p[:, 1])], axis=1), u


def _wobble_stroke(p: Array, closed: bool, rng: np.random.Generator, unit: float) -> list[Array]:
    """Turn an exact polyline into hand-drawn strokes: jittered vertices, smooth sideways drift,
    overshoot past the start of closed loops, over-long ends, and random gaps (dropout)."""
    step = max(1.0, 0.02 * unit)
    # Small strokes (an eye, a hub) wobble less; dense curves get no per-vertex jitter (it would
    # look like scribble), sparse polygons do.
    amp = unit * float(np.clip(np.ptp(p, axis=0).max() / unit, 0.15, 1.0))
    seg = np.hypot(*np.diff(p, axis=0).T).mean() if len(p) > 1 else 0.0
    p = p + rng.normal(0.0, 0.025 * amp * min(1.0, seg / (0.3 * amp)), p.shape)
    if closed:
        start = int(rng.integers(len(p)))
        p = np.vstack([p[start:], p[:start]])
        q, u = _resample(np.vstack([p, p[:1]]), step)
        extra = int(len(q) * rng.uniform(0.0, 0.08))  # overshoot: go on a bit past the start
        q, u = np.vstack([q, q[1:extra + 1]]), np.concatenate([u, u[-1] + u[1:extra + 1]])
    else:
        q, u = _resample(p, step)
    if len(q) < 3:
        return [q]
    tang = np.gradient(q, axis=0)
    tang /= np.maximum(np.linalg.norm(tang, axis=1, keepdims=True), 1e-9)
    normal = np.stack([-tang[:, 1], tang[:, 0]], axis=1)
    off = np.zeros(len(q))
    for _ in range(3):  # smooth sideways wobble: a few random sinusoids along the arc length
        lam = rng.uniform(0.4, 2.0) * amp
        off += rng.uniform(0.0, 0.015) * amp * np.sin(2 * np.pi * u / lam + rng.uniform(0, 2 * np.pi))
    off += rng.normal(0.0, 0.04 * amp) * u / max(u[-1], 1.0)  # drift: loops do not close exactly
    q = q + normal * off[:, None]
    if not closed and rng.random() < 0.5:  # over-long ends
        a, b = rng.uniform(0, 0.06, 2) * amp
        q = np.vstack([q[0] - tang[0] * a, q, q[-1] + tang[-1] * b])
    if rng.random() < 0.3 and len(q) > 20:  # dropout: a missing piece of the stroke
        g = int(len(q) * rng.uniform(0.05, 0.15))
        a = int(rng.integers(1, len(q) - g - 1))
        return [q[:a], q[a + g:]]
    return [q]


def render_sketch(name: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """Render one "sketch" of class ``name``: dark wobbly strokes on white, RGB ``size`` px."""
    n = size * SUPERSAMPLE
    fig, unit = _place(SHAPES[name](rng), rng, n, (0.3, 0.47))
    strokes: list[tuple[Array, bool]] = [(p, True) for p, _ in fig.regions] + [(p, False) for p, _ in fig.bars]
    strokes += [(p, False) for p in fig.details if rng.random() > 0.1]  # details are sometimes left out
    img = Image.new("L", (n, n), 255)
    d = ImageDraw.Draw(img)
    ink, width = rng.uniform(0, 70), rng.uniform(0.8, 2.0) * SUPERSAMPLE
    for p, closed in strokes:
        w = max(1, round(width * rng.uniform(0.8, 1.2)))
        tone = int(np.clip(ink + rng.normal(0, 12), 0, 110))
        for q in _wobble_stroke(p, closed, rng, unit):
            if len(q) >= 2:
                d.line(_xy(q), fill=tone, width=w, joint="curve")
    return img.reduce(SUPERSAMPLE).convert("RGB")


# ----------------------------------------------------------------------------- dataset
def _image_rng(seed: int, name: str, modality: str, index: int) -> np.random.Generator:
    key = [GENERATOR_VERSION, seed, zlib.crc32(name.encode()), _MODALITY_ID[modality], index]
    return np.random.default_rng(np.random.SeedSequence(key))


def class_names(num_classes: int) -> list[str]:
    """The first ``num_classes`` designs of the curated list; ConfigError beyond the limit."""
    if not 2 <= num_classes <= len(CLASS_NAMES):
        raise ConfigError(f"synthetic dataset: num_classes={num_classes} is out of range; the generator has "
                          f"{len(CLASS_NAMES)} class designs, choose 2..{len(CLASS_NAMES)}")
    return list(CLASS_NAMES[:num_classes])


def unseen_classes(classes: Sequence[str], num_unseen: int, seed: int) -> list[str]:
    """A seed-determined random subset of ``classes`` held out as unseen (zero-shot) classes."""
    rng = np.random.default_rng(np.random.SeedSequence([GENERATOR_VERSION, seed, 0x5EE4]))
    pick = rng.choice(len(classes), size=num_unseen, replace=False)
    return sorted(classes[i] for i in pick)


def _check_args(num_classes: int, seed: int, photos: int, sketches: int, size: int,
                num_unseen: int, dataset: str) -> None:
    if seed < 0:
        raise ConfigError(f"synthetic dataset: seed={seed} must be >= 0")
    if photos < 1 or sketches < 1:
        raise ConfigError(f"synthetic dataset: photos_per_class={photos} and sketches_per_class={sketches} "
                          "must both be >= 1")
    if not 16 <= size <= 1024:
        raise ConfigError(f"synthetic dataset: size={size} px is out of range; choose 16..1024")
    if not 1 <= num_unseen < num_classes:
        raise ConfigError(f"synthetic dataset: num_unseen={num_unseen} must be between 1 and num_classes-1 "
                          f"({num_classes - 1}) so that both training and unseen classes exist")
    if not dataset or dataset in (".", "..") or any(c in dataset for c in "/\\"):
        raise ConfigError(f"synthetic dataset: dataset name {dataset!r} must be a plain folder name")


def generate(out_root: str | Path, num_classes: int = 30, seed: int = 0, *, photos_per_class: int = 40,
             sketches_per_class: int = 40, size: int = 64, num_unseen: int | None = None,
             dataset: str = "synth", progress: bool = True) -> Path:
    """Write the synthetic dataset and return ``out_root/dataset``.

    Layout (spec §1.1): ``photo/<class>/<i>.png``, ``sketch/<class>/<i>.png``,
    ``split/all_classes.txt``, ``split/zeroshot_classes.txt`` (unseen classes, default
    ``max(2, num_classes // 4)``) and ``README.txt``. Existing files of the same names are
    overwritten; other files are left alone.
    """
    from tqdm import tqdm

    classes = class_names(num_classes)
    if num_unseen is None:  # at least two unseen classes, but always keep one for training
        num_unseen = min(max(2, num_classes // 4), num_classes - 1)
    _check_args(num_classes, seed, photos_per_class, sketches_per_class, size, num_unseen, dataset)
    unseen = unseen_classes(classes, num_unseen, seed)
    root = Path(out_root) / dataset
    try:
        (root / "split").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {root}: {exc}; choose a writable output folder") from exc
    (root / "split" / "all_classes.txt").write_text("".join(c + "\n" for c in sorted(classes)))
    (root / "split" / "zeroshot_classes.txt").write_text("".join(c + "\n" for c in unseen))
    counts = {"photo": photos_per_class, "sketch": sketches_per_class}
    render = {"photo": render_photo, "sketch": render_sketch}
    total = num_classes * (photos_per_class + sketches_per_class)
    with tqdm(total=total, desc="synth", unit="img", disable=not progress, file=sys.stderr) as bar:
        for name in classes:
            for modality, count in counts.items():
                folder = root / modality / name
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(count):
                    img = render[modality](name, _image_rng(seed, name, modality, i), size)
                    img.save(folder / f"{i:04d}.png", format="PNG")
                    bar.update(1)
    (root / "README.txt").write_text(_readme(classes, unseen, seed, photos_per_class, sketches_per_class, size))
    return root


def _readme(classes: list[str], unseen: list[str], seed: int, photos: int, sketches: int, size: int) -> str:
    return (
        "tvt synthetic sketch-based image retrieval dataset\n"
        f"generator version: {GENERATOR_VERSION}\nseed: {seed}\nimage size: {size} px (RGB PNG)\n"
        f"classes: {len(classes)} ({len(classes) - len(unseen)} training, {len(unseen)} unseen)\n"
        f"photos per class: {photos}\nsketches per class: {sketches}\n"
        f"images: {len(classes) * (photos + sketches)}\n"
        f"unseen (split/zeroshot_classes.txt): {' '.join(unseen)}\n\n"
        "Each class is a parametric shape family. Photos are filled, textured objects of random colour\n"
        "(independent of the class) on varied backgrounds; sketches are hand-drawn-looking line\n"
        "drawings of other, independent instances. Regenerate with:\n"
        f"  tvt data synth OUT --classes {len(classes)} --seed {seed} --photos-per-class {photos} "
        f"--sketches-per-class {sketches} --size {size} --unseen {len(unseen)}\n"
    )


def contact_sheet(dataset_dir: str | Path, out_png: str | Path, classes: int | Sequence[str] = 8,
                  per_class: int = 4) -> Path:
    """Save a preview grid: one row per class, ``per_class`` photos then ``per_class`` sketches.

    ``classes`` is a count (spread evenly over the sorted class list) or a list of names; unseen
    (zero-shot) classes are marked with ``*``."""
    root = Path(dataset_dir)
    names = sorted(p.name for p in (root / "photo").iterdir() if p.is_dir()) if (root / "photo").is_dir() else []
    if not names:
        raise DataError(f"{root / 'photo'}: no class folders found; run `tvt data synth` first")
    if isinstance(classes, int):
        idx = np.unique(np.linspace(0, len(names) - 1, min(classes, len(names))).round().astype(int))
        names = [names[i] for i in idx]
    else:
        missing = sorted(set(classes) - set(names))
        if missing:
            raise DataError(f"{root / 'photo'}: no folder for class(es) {', '.join(missing)}; "
                            f"available: {', '.join(names)}")
        names = list(classes)
    zs = root / "split" / "zeroshot_classes.txt"
    unseen = set(zs.read_text().splitlines()) if zs.is_file() else set()
    tile, label_w, gap = 64, 84, 8
    width = label_w + 2 * per_class * tile + gap
    # placed by hand, not torchvision make_grid: a label column and a gap between the photo and sketch blocks
    sheet = Image.new("RGB", (width, tile * len(names)), (235, 235, 235))
    d = ImageDraw.Draw(sheet)
    for row, name in enumerate(names):
        d.text((4, row * tile + tile // 2 - 5), name + (" *" if name in unseen else ""), fill=(0, 0, 0))
        for col, modality in enumerate(("photo", "sketch")):
            files = sorted((root / modality / name).glob("*.png"))[:per_class]
            for j, f in enumerate(files):
                with Image.open(f) as im:
                    x = label_w + col * (per_class * tile + gap) + j * tile
                    sheet.paste(im.convert("RGB").resize((tile, tile), Image.Resampling.BILINEAR), (x, row * tile))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG")
    return out
