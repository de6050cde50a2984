"""`tvt eval` on an exported model folder gives the metrics of the checkpoint it came from."""

from __future__ import annotations

import json

from tvt.cli import main


def test_eval_folder_equals_checkpoint(synth_root, tiny_ckpt, tmp_path):
    folder = tmp_path / "model"
    assert main(["export", str(tiny_ckpt), "--out", str(folder)]) == 0
    common = ["--set", f"data.root={synth_root}", "--set", "data.dataset=synth", "--set", "data.img_size=32",
              "--set", "data.num_workers=0", "--set", "eval.grid_queries=2", "--set", "eval.grid_k=2",
              "--device", "cpu", "--no-progress"]
    results = []
    for name, ckpt in (("a", tiny_ckpt), ("b", folder)):
        out = tmp_path / name
        assert main(["eval", "--checkpoint", str(ckpt), "--out", str(out), "--json", str(out / "m.json"), *common]) == 0
        results.append(json.loads((out / "m.json").read_text())["tvt"])
    keys = [k for k in results[0] if k.startswith(("mAP", "P@"))]
    assert keys and all(results[0][k] == results[1][k] for k in keys)
