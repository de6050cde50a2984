"""`tvt demo --ablation`: what each term of the TVT objective adds, on the demo's data and teachers.

Stage B is trained again from the same start, with the same teachers and budget, with one term
switched off in turn (``train.kd_img_weight=0``, ``train.kd_skt_weight=0``,
``train.use_align_uniform=false``) and with all three off ("CE only"), each over several stage-B
seeds (``train.seed``: classifier init, batch order, augmentation). The ``tvt`` run of the demo
itself is reused as seed 0 of the full method. Writes ``ablation.json``, ``ablation.md`` (the
README's table) and ``ablation.png`` (unseen-class mAP@all and P@100 with the spread over seeds).

Beside the unseen classes every run is also scored on the *training* classes (sketch -> photo
mAP@all over their sketches and photos, evaluation transform): how well stage B fits what it was
taught tells an underfit student (every extra term costs fit) from one that fits and fails to
transfer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tvt.engine.demo import DemoOptions, demo_config, encoders, score, start_model, unseen_sets
from tvt.engine.demo_run import Overall
from tvt.errors import ConfigError
from tvt.eval import evaluate as ev
from tvt.eval.report import chance_levels
from tvt.files import write_json, write_text

KD_OFF = ["train.kd_img_weight=0", "train.kd_skt_weight=0"]
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "tvt": ("all terms (the method)", []),
    "no_kd_image": ("without KD from the image teacher", ["train.kd_img_weight=0"]),
    "no_kd_sketch": ("without KD from the sketch teacher", ["train.kd_skt_weight=0"]),
    "no_align_uniform": ("without uniformity and centre alignment", ["train.use_align_uniform=false"]),
    "no_kd": ("without either KD term (CE, uniformity, centre alignment)", KD_OFF),
    "ce_only": ("CE only: no KD, no uniformity/alignment", [*KD_OFF, "train.use_align_uniform=false"]),
}
SHOWN = ("mAP@all", "P@100")  # unseen classes: the table's and the chart's columns
SEEN = "seen mAP@all"  # sketch -> photo mAP@all on the training classes


def _teachers(out: Path) -> tuple[str, str]:
    """The teacher checkpoints the demo's stage B used (from its saved config)."""
    path = out / "tvt" / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} is missing: run `tvt demo --out {out}` to the end before the ablation")
    t = yaml.safe_load(path.read_text())["train"]
    return t["image_teacher"], t["sketch_teacher"]


def _train_variant(out: Path, opts: DemoOptions, name: str, seed: int, device: str, progress: bool) -> Path:
    from tvt.engine.checkpoint import LATEST
    from tvt.engine.train_tvt import train

    base = demo_config(out, list(opts.overrides))
    if name == "tvt" and seed == base.train.seed:
        return out / "tvt" / LATEST
    cfg = demo_config(out, [*opts.overrides, *VARIANTS[name][1], f"train.seed={seed}"])
    cfg.train.output_dir = str(out / "ablation" / name / f"seed{seed}")
    cfg.train.image_teacher, cfg.train.sketch_teacher = _teachers(out)
    return train(cfg, resume=True, device=device, progress=progress)


def run_ablation(out: str | Path, opts: DemoOptions, *, seeds: int = 2, device: str = "auto",
                 progress: bool = True) -> dict[str, Any]:
    """Train and score every variant over ``seeds`` stage-B seeds; write the table and the chart."""
    from tvt.data.layout import load_split
    from tvt.distributed import pick_device

    if seeds < 1:
        raise ConfigError(f"--ablation-seeds must be >= 1, got {seeds}")
    out = Path(out).resolve()
    cfg = demo_config(out, list(opts.overrides))
    dev = pick_device(device)
    sets = unseen_sets(cfg)
    seen_sets = ev.build_sets(cfg, list(load_split(cfg.data.root, cfg.data.dataset, cfg.data.split).train_classes),
                              cfg.data.img_size)
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["start"][SEEN], metrics["chance"][SEEN] = _seen_start(cfg, Path(_teachers(out)[0]), seen_sets, dev)
    runs = [(name, s) for name in VARIANTS for s in range(seeds)]
    # the demo's own tvt run is reused and costs nothing: weight 0 keeps the ETA from starting at 0 s
    overall = Overall({f"{n}/{s}": 0.0 if (n, s) == ("tvt", cfg.train.seed) else 1.0 for n, s in runs}, progress)
    table: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    try:
        for name, s in runs:
            log = out / ("tvt" if name == "tvt" and s == cfg.train.seed else f"ablation/{name}/seed{s}") / "log.jsonl"
            with overall.stage(f"{name}/{s}", f"ablation {name}, seed {s}", log, _steps(cfg)):
                ckpt = _train_variant(out, opts, name, s, device, progress)
            enc_img, enc_skt, _ = encoders(cfg, Path(_teachers(out)[0]), ckpt, dev)["tvt"]
            m = score(cfg, sets, enc_img, enc_skt, dev)[1]
            seen = score(cfg, seen_sets, enc_img, enc_skt, dev)[1]["mAP@all"]
            table[name].append({"seed": s, **{k: float(m[k]) for k in SHOWN}, SEEN: float(seen)})
            result = _write(out, table, metrics, seeds)  # after every run: a long ablation shows progress
    finally:
        overall.close()
    print("\n" + ablation_markdown(result))
    print(f"wrote {out / 'ablation.md'}, {out / 'ablation.json'} and {out / 'ablation.png'}", file=sys.stderr)
    return result


def _seen_start(cfg: Any, image_vit: Path, seen_sets: ev.EvalSets, dev: Any) -> tuple[float, float]:
    """Training-class sketch -> photo mAP@all of the start (the fusion ViT before stage B) and its chance level."""
    from tvt.models.weights import load_teacher

    enc_img, enc_skt, _ = start_model(cfg, load_teacher(image_vit).to(dev).eval(), dev)
    feats, m = score(cfg, seen_sets, enc_img, enc_skt, dev)
    return float(m["mAP@all"]), chance_levels(feats["q_labels"], feats["g_labels"])["mAP@all"]


def _write(out: Path, table: dict[str, list[dict[str, float]]], metrics: dict[str, Any], seeds: int) -> dict[str, Any]:
    """ablation.json/.md/.png from the runs done so far (variants without runs are left out)."""
    result = {"variants": {n: {"terms": VARIANTS[n][0], "runs": r, **_spread(r)} for n, r in table.items() if r},
              "start": {k: metrics["start"][k] for k in (*SHOWN, SEEN)},
              "chance": {k: metrics["chance"][k] for k in (*SHOWN, SEEN)},
              "dataset": metrics["run"]["dataset"], "seeds": seeds}
    write_json(out / "ablation.json", result)
    write_text(out / "ablation.md", ablation_markdown(result))
    ablation_chart(result, out / "ablation.png")
    return result


def _steps(cfg: Any) -> int:
    from tvt.data.layout import load_split
    from tvt.engine.demo import planned_steps

    return planned_steps(cfg, load_split(cfg.data.root, cfg.data.dataset, cfg.data.split).train_classes)[1]


def _spread(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for k in (*SHOWN, SEEN):
        v = np.array([r[k] for r in runs])
        out[k] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                  "min": float(v.min()), "max": float(v.max())}
    return out


def ablation_markdown(result: dict[str, Any]) -> str:
    """The ablation as a markdown table: mean ± std (min–max) over the seeds."""
    n = result["seeds"]
    head = [f"| variant | unseen mAP@all, mean ± std (min–max) over {n} stage-B seeds | unseen P@100 | "
            "training classes: mAP@all (fit) |", "|---|---|---|---|"]
    rows = []
    for name, v in result["variants"].items():
        cells = [f"{v[k]['mean']:.4f} ± {v[k]['std']:.4f} ({v[k]['min']:.4f}–{v[k]['max']:.4f})" for k in SHOWN]
        done = "" if len(v["runs"]) == n else f" ({len(v['runs'])} of {n} seeds so far)"
        rows.append(f"| **{name}**: {v['terms']}{done} | {cells[0]} | {cells[1]} | {v[SEEN]['mean']:.4f} ± "
                    f"{v[SEEN]['std']:.4f} |")
    start, chance = result["start"], result["chance"]
    rows.append(f"| start (before stage B) | {start['mAP@all']:.4f} | {start['P@100']:.4f} | {start[SEEN]:.4f} |")
    rows.append(f"| chance (random ranking) | {chance['mAP@all']:.4f} | {chance['P@100']:.4f} | {chance[SEEN]:.4f} |")
    return "\n".join(head + rows) + "\n"


def ablation_chart(result: dict[str, Any], path: Path) -> Path:
    """Bars: mean per variant; black ticks: min–max over seeds; dots: each seed; dashed: start, chance.
    Panels: unseen mAP@all, unseen P@100, and the training-class mAP@all (how well stage B fits)."""
    from matplotlib.figure import Figure  # object-oriented: no pyplot, no global backend switch

    names = list(result["variants"])
    fig = Figure(figsize=(14.0, 4.4))
    axes = fig.subplots(1, len(SHOWN) + 1)
    for ax, k in zip(axes, (*SHOWN, SEEN)):
        v = [result["variants"][n][k] for n in names]
        means = np.array([x["mean"] for x in v])
        err = np.array([[m - x["min"] for m, x in zip(means, v)], [x["max"] - m for m, x in zip(means, v)]])
        ax.bar(range(len(names)), means, color=["tab:green"] + ["tab:blue"] * (len(names) - 2) + ["tab:grey"],
               yerr=err, capsize=4)
        for i, n in enumerate(names):
            ys = [r[k] for r in result["variants"][n]["runs"]]
            ax.scatter([i] * len(ys), ys, color="k", s=10, zorder=3)
        ax.axhline(result["start"][k], color="tab:orange", linestyle="--", label=f"start (before stage B) "
                                                                                   f"{result['start'][k]:.3f}")
        ax.axhline(result["chance"][k], color="k", linestyle=":", label=f"chance {result['chance'][k]:.3f}")
        ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
        ax.set_xlabel("stage-B variant (same start, teachers and budget)")
        label = "training-class mAP@all (fit)" if k == SEEN else f"unseen-class {k}"
        ax.set_ylabel(label)
        top = max(float(np.max(means + err[1])), result["start"][k])
        ax.set_ylim(min(result["chance"][k], float(means.min())) * 0.8, top * 1.08)
        ax.legend(fontsize=7, loc="lower left")
        ax.set_title(f"{label}: bar = mean,\nwhiskers = min–max, dots = seeds", fontsize=9)
    fig.suptitle(f"What each term of TVT adds (sketch→photo, {result['seeds']} stage-B seeds) on {result['dataset']}",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
