"""What an export costs: wall time (split into freeze+ONNX, parity gate, per file) and bundle
size per width, for the digits model and for the paper's ResNet-34 (OATS, random weights).

Weights do not change either figure (graph size and op count do), so the models have random
weights with settled BN/FiLM state; ResNet-34's parity images are seeded uniform noise (no
CIFAR files ship here). Each model is exported once with every width and ``--bake`` modes;
per-width time is the sum of that width's files (paths and baked paths), per-width size the
bytes of its ONNX files plus its share of film.npz (its table and generator weights).

    python scripts/export_cost.py                 # digits + resnet34
    python scripts/export_cost.py --models digits # quick
    python scripts/export_cost.py --repeat 3      # median of 3 exports per model

Writes benchmarks/results/export_cost.{json,md}. Timings on shared VMs vary a lot: the JSON
keeps every repetition, the markdown the median.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "out" / "export_cost"  # checkpoints and bundles this script builds (git-ignored)

MODELS = {
    # name: (arch, arch kwargs, dataset record, input shape)
    "digits": ("resnet_tiny", {}, {"name": "digits", "num_classes": 10, "input_shape": [1, 8, 8]}, (1, 8, 8)),
    "resnet34": ("resnet34", {}, {"name": "cifar10", "num_classes": 10, "input_shape": [3, 32, 32]}, (3, 32, 32)),
}
HOT_MODES = (0.0, 0.1, 0.2, 0.3, 0.4, 1.0)


def make_checkpoint(name: str, path: Path) -> Path:
    import numpy as np
    import torch

    from oat_edge.checkpoint import save_checkpoint
    from oat_edge.models import create_model

    arch, kw, dataset, shape = MODELS[name]
    torch.manual_seed(0)
    model = create_model(arch, **kw)
    rng = np.random.default_rng(0)
    model.train()
    with torch.no_grad():  # settle BN running stats like a trained model (values matter, not timing)
        for w in model.widths:
            model.set_width(w)
            model(torch.rand(16, *shape), rng.choice(model.train_lambdas, 16))
    model.eval()
    payload = {"arch": arch, "arch_kwargs": {**kw, "widths": list(model.widths), "train_lambdas": list(model.train_lambdas)},
               "model": model.state_dict(), "method": "oats", "dataset": dataset, "epoch": 0}
    return save_checkpoint(path, payload)


def film_share(film_npz: Path, width_key: str) -> int:
    with zipfile.ZipFile(film_npz) as z:
        return sum(i.file_size for i in z.infolist()
                   if i.filename.startswith((f"table_w{width_key}.", f"sites_w{width_key}."))
                   or f"_w{width_key}_s" in i.filename)


def one_export(ckpt: Path, out: Path, bake, parity_images: int) -> dict:
    from oat_edge.export import export_bundle, load_manifest
    from oat_edge.mode import fmt_width

    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    export_bundle(ckpt, out, bake=bake, tensorrt="off", progress=False, parity_images=parity_images)
    wall = time.perf_counter() - t0
    m = load_manifest(out)
    per_file = m["export"]["seconds_per_file"]
    widths = {}
    for w in m["model"]["widths"]:
        key = fmt_width(w)
        entries = [e for e in m["paths"] + m["baked"] if e["width"] == w]
        widths[key] = {
            "seconds": round(sum(per_file[e["id"]] for e in entries), 3),
            "path_bytes": sum(e["bytes"] for e in m["paths"] if e["width"] == w),
            "baked_bytes": sum(e["bytes"] for e in m["baked"] if e["width"] == w),
            "film_bytes": film_share(out / "film.npz", key),
            "film_size": next(e["film_size"] for e in m["paths"] if e["width"] == w),
            "macs_per_image": next(e["flops"] for e in m["paths"] if e["width"] == w),
            "params": next(e["params"] for e in m["paths"] if e["width"] == w),
            "parity_max_abs_diff": max(e["parity"]["max_abs_diff"] for e in entries),
        }
        widths[key]["bundle_bytes"] = widths[key]["path_bytes"] + widths[key]["baked_bytes"] + widths[key]["film_bytes"]
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"wall_seconds": round(wall, 3), "phases": m["export"]["seconds"], "bundle_bytes": total,
            "n_paths": len(m["paths"]), "n_baked": len(m["baked"]), "parity_inputs": m["parity_inputs"]["source"],
            "widths": widths}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--repeat", type=int, default=1, help="exports per model (median reported)")
    ap.add_argument("--bake", type=float, nargs="*", default=list(HOT_MODES), help="baked λ (default: S1)")
    ap.add_argument("--parity-images", type=int, default=64)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--render", type=Path, metavar="JSON", help="only rewrite the markdown of an earlier run")
    args = ap.parse_args(argv)
    if args.render:
        report = json.loads(args.render.read_text())
        (args.out / "export_cost.md").write_text(markdown(report))
        return 0

    import onnxruntime
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    report = {
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "python": sys.version.split()[0], "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                    "torch_threads": torch.get_num_threads()},
        "settings": {"bake": args.bake, "parity_images": args.parity_images, "repeat": args.repeat},
        "models": {},
    }
    for name in args.models:
        ckpt = make_checkpoint(name, WORK / f"export_cost_{name}.pt")
        runs = []
        for r in range(args.repeat):
            print(f"[{name}] export {r + 1}/{args.repeat} ...", flush=True)
            runs.append(one_export(ckpt, WORK / f"export_cost_{name}_bundle", args.bake, args.parity_images))
            print(f"[{name}] {runs[-1]['wall_seconds']:.1f} s, {runs[-1]['bundle_bytes'] / 2**20:.2f} MiB", flush=True)
        report["models"][name] = {"arch": MODELS[name][0], "input_shape": list(MODELS[name][3]), "runs": runs,
                                  "median_wall_seconds": statistics.median(r["wall_seconds"] for r in runs)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "export_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "export_cost.md").write_text(markdown(report))
    print((args.out / "export_cost.md").read_text())
    return 0


def markdown(report: dict) -> str:
    mib = 2 ** 20
    lines = ["# Export cost", "",
             f"{report['created']} · {report['machine']['processor']} · torch {report['machine']['torch']} "
             f"({report['machine']['torch_threads']} threads) · onnxruntime {report['machine']['onnxruntime']} · "
             f"baked λ {report['settings']['bake']} · parity on {report['settings']['parity_images']} images · "
             f"median of {report['settings']['repeat']} export(s)", ""]
    for name, m in report["models"].items():
        runs = m["runs"]
        med = min(runs, key=lambda r: abs(r["wall_seconds"] - m["median_wall_seconds"]))
        ph = med["phases"]
        lines += [f"## {name} ({m['arch']}, input {m['input_shape']})", "",
                  f"{med['n_paths']} paths + {med['n_baked']} baked paths; whole export **{med['wall_seconds']:.1f} s** "
                  f"(freeze+ONNX+simplify {ph['freeze_export']:.1f} s, parity gate {ph['parity']:.1f} s); "
                  f"bundle **{med['bundle_bytes'] / mib:.2f} MiB**; parity inputs: {med['parity_inputs']}.", "",
                  "| width | export s (paths + baked) | paths MiB (c+a) | baked MiB | film.npz share MiB | bundle MiB | MMACs/img | params | FiLM size | parity max|Δ| |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for w, d in med["widths"].items():
            lines.append(f"| {w} | {d['seconds']:.1f} | {d['path_bytes'] / mib:.2f} | {d['baked_bytes'] / mib:.2f} | "
                         f"{d['film_bytes'] / mib:.2f} | {d['bundle_bytes'] / mib:.2f} | {d['macs_per_image'] / 1e6:.1f} | "
                         f"{d['params']:,} | {d['film_size']} | {d['parity_max_abs_diff']:.1e} |")
        lines.append("")
    lines += ["Per-width sizes: a BN_c and a BN_a path are separate files with the same slimmed weights (BN folded "
              "differently), so the paths column is ~2× one network at that width; each baked mode is one more copy. "
              "`params` counts what a path uses, FiLM generators included (they dominate film.npz).", "",
              "The parity column is the export's own gate on these random-weight models, whose logits are small "
              "(~1e-2): it shows the gate ran, not export quality — the tests check parity on models with "
              "settled BN/FiLM state and O(10) logits.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
