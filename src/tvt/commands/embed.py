"""`tvt embed`: features of image files with any supported checkpoint, written to a .npy file.

One float32 row per image, in argument order, L2-normalised. For a TVT student the feature is
``Student.features(x, modality, return_idx)`` (spec §2.4); for a plain ViT / teacher checkpoint it
is the CLS feature and ``--return-idx`` / ``--modality`` change nothing.

``--modality`` only selects the distillation token and DINO head that ``--return-idx 1`` and
``3`` mix in. The published 2-token model has one distillation token and head for both
modalities [Q8], so its features do not depend on ``--modality`` at all; with a 3-token model,
``skt`` uses the sketch token/head for return_idx 1/3. The fusion token (return_idx 0, 2) never
depends on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "compute L2-normalised features of image files with a checkpoint and save them as .npy"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files; one output row each, in this order")
    p.add_argument("--checkpoint", required=True,
                   help="TVT, stage-A, DINO (backbone or full) or timm ViT checkpoint, or a model folder "
                        "(`tvt export`, timm/Hugging Face)")
    p.add_argument("--out", required=True, help="output .npy file (float32 [N, D])")
    p.add_argument("--return-idx", type=int, default=0, choices=[0, 1, 2, 3],
                   help="TVT feature (spec §2.4): 0 fusion token (default), 1 fusion+distillation mean, "
                        "2 fusion-head embedding, 3 mean of head embeddings")
    p.add_argument("--modality", choices=["skt", "img"], default="skt",
                   help="skt (sketches, default) or img (photos); changes return-idx 1/3 of 3-token models only")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--img-size", type=int, help="input side in pixels (default: the model's native size)")
    p.add_argument("--alpha-background", choices=["white", "none"], default="white",
                   help="transparent pixels: composite on white (default) or plain RGB conversion as the official code")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


def _check_files(images: list[str]) -> list[Path]:
    from tvt.errors import InputError

    paths = [Path(p) for p in images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"image file(s) not found: {', '.join(missing[:5])}"
                         + (f" and {len(missing) - 5} more" if len(missing) > 5 else "") + "; nothing written")
    return paths


def embed_paths(encoder, paths: list[Path], modality: str, img_size: int, batch_size: int,
                alpha_background: str = "white", progress: bool = True):
    """Features [N, D] (float32 numpy, L2-normalised) of ``paths`` in order, through the package's
    one embedding loop (:func:`tvt.search.embed.embed_files`); DataError naming the first file that
    cannot be read."""
    import functools

    import numpy as np

    from tvt.data.images import load_rgb
    from tvt.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
    from tvt.errors import DataError
    from tvt.search.embed import embed_files

    # the backbone's own normalisation (CLIP's and SigLIP's are not ImageNet's)
    tf = eval_transform(img_size, mean=getattr(encoder, "mean", IMAGENET_MEAN),
                        std=getattr(encoder, "std", IMAGENET_STD))
    results = embed_files(Path(), [str(p) for p in paths], {}, encoder, tf, batch_size=batch_size, progress=progress,
                          modality=modality, load=functools.partial(load_rgb, alpha_background=alpha_background))
    bad = [(rel, reason) for rel, emb, reason in results if emb is None]
    if bad:
        raise DataError(f"{bad[0][1]} ({bad[0][0]}); nothing written"
                        + (f" ({len(bad) - 1} more unreadable file(s))" if len(bad) > 1 else ""))
    return np.stack([emb for _, emb, _ in results]).astype(np.float32, copy=False)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from tvt.distributed import pick_device
    from tvt.errors import InputError
    from tvt.files import atomic_write
    from tvt.models.encoder import load_encoder

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.img_size is not None and args.img_size < 1:
        raise InputError(f"--img-size must be a positive number of pixels, got {args.img_size}")
    paths = _check_files(args.images)
    encoder = load_encoder(args.checkpoint, return_idx=args.return_idx, device=pick_device(args.device))
    img_size = args.img_size or encoder.img_size
    if img_size < encoder.patch_size:
        raise InputError(f"--img-size {img_size} is smaller than the model's {encoder.patch_size}-px patch")
    feats = embed_paths(encoder, paths, args.modality, img_size, args.batch_size, args.alpha_background,
                        progress=not args.no_progress)
    out = atomic_write(args.out, lambda fh: np.save(fh, feats))
    print(f"wrote {feats.shape[0]} x {feats.shape[1]} {encoder.kind} features to {out}")
    return 0
