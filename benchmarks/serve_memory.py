"""Peak memory of `tvt serve` under concurrent worst-case uploads (not a test).

Builds a small random-weight model and an index of a few synthetic photos in a temporary folder,
starts ``python -m tvt.cli serve`` as a child process, and sends ``--clients`` simultaneous
uploads of a worst-case sketch (``--rounds`` times): a 16-bit greyscale PNG of
``--side`` x ``--side`` pixels, mostly white with a few black lines, so it compresses to a few
tens of kB yet passes the pixel limit. The server's resident memory is sampled from
``/proc/PID/status`` every 10 ms; the peak (VmHWM), the level before and the level a few seconds
after the burst are printed as one table row.

    python benchmarks/serve_memory.py                    # 8 clients x 3 rounds, 4000 x 4000 px
    python benchmarks/serve_memory.py --clients 8 --side 4000 --rounds 3 --kind rgba
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def tiny_checkpoint(path: Path) -> Path:
    """A random-weight 2-block, 192-wide TVT student at 224 px (memory, not accuracy, matters here)."""
    from tvt.models.heads import DINOHead
    from tvt.models.vit import ViTArch, build_vit
    from tvt.models.weights import arch_hints, init_student_from_teacher

    torch.manual_seed(0)
    arch = ViTArch(img_size=224, patch_size=16, embed_dim=192, depth=2, num_heads=3)
    vit, head = build_vit(arch), DINOHead(192, out_dim=256, hidden_dim=128, bottleneck_dim=64)
    state = {**{f"backbone.{k}": v for k, v in vit.state_dict().items()},
             **{f"head.{k}": v for k, v in head.state_dict().items()}}
    student = init_student_from_teacher(state, num_classes=4)
    torch.save({"format": "tvt", "version": 1, "stage": "tvt", "student": student.state_dict(),
                "arch": arch_hints(student)}, path)
    return path


def worst_case_png(side: int, kind: str = "grey16") -> bytes:
    """White with a few dark lines: tiny on the wire, large once decoded. ``grey16``: 16-bit
    greyscale (2 bytes a pixel in PIL, 8 once converted to float); ``rgba``: 8-bit RGBA (4 bytes)."""
    arr = np.full((side, side), 65535, np.uint16)
    for k in range(1, 8):
        arr[k * side // 8, :] = 0
        arr[:, k * side // 8] = 0
    img = Image.fromarray(arr)
    if kind == "rgba":
        img = Image.fromarray((arr >> 8).astype(np.uint8)).convert("RGBA")
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: bytes, statuses: list[int]) -> None:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "image/png"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            resp.read()
            statuses.append(resp.status)
    except urllib.error.HTTPError as exc:
        statuses.append(exc.code)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--side", type=int, default=4000)
    ap.add_argument("--kind", choices=["grey16", "rgba"], default="grey16", help="the worst-case upload")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds to wait before reading the level after")
    args = ap.parse_args()
    from tvt.cli import main as tvt_main

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        photos = base / "photos"
        photos.mkdir()
        rng = np.random.default_rng(0)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(photos / f"{i}.png")
        ckpt = tiny_checkpoint(base / "ckpt.pth")
        assert tvt_main(["index", str(photos), "--checkpoint", str(ckpt), "--out", str(base / "idx"),
                         "--no-progress", "--device", "cpu"]) == 0
        port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        server = subprocess.Popen([sys.executable, "-m", "tvt.cli", "serve", "--index", str(base / "idx"),
                                   "--port", str(port), "--device", "cpu"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(600):
                try:
                    urllib.request.urlopen(url + "/api/health", timeout=2).read()
                    break
                except OSError:
                    time.sleep(0.1)
            body = worst_case_png(args.side, args.kind)
            post(url + "/api/search?k=4", worst_case_png(64), [])  # warm up the model once
            time.sleep(1.0)
            before = rss_kib(server.pid)
            peak, statuses, t0 = before, [], time.perf_counter()
            for _ in range(args.rounds):
                threads = [threading.Thread(target=post, args=(url + "/api/search?k=4", body, statuses))
                           for _ in range(args.clients)]
                for t in threads:
                    t.start()
                while any(t.is_alive() for t in threads):
                    peak = max(peak, rss_kib(server.pid))
                    time.sleep(0.01)
            took = time.perf_counter() - t0
            hwm = rss_kib(server.pid, "VmHWM")
            time.sleep(args.settle)
            after = rss_kib(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(json.dumps({"kind": args.kind, "upload_bytes": len(body), "side": args.side, "clients": args.clients,
                      "rounds": args.rounds, "statuses": sorted(set(statuses)),
                      "rss_before_mib": round(before / 1024), "rss_peak_mib": round(max(peak, hwm) / 1024),
                      "rss_after_mib": round(after / 1024), "seconds": round(took, 1)}))


if __name__ == "__main__":
    main()
