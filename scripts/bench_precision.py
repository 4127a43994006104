"""Precision as a third knob: latency, top-1 agreement and calibration per precision,
for the digits model and ResNet-34, on onnxruntime's CPU provider.

    python scripts/bench_precision.py --digits-ckpt demo_out/ckpt.pt
    python scripts/bench_precision.py --models resnet34_trained --resnet34-ckpt r34.pt

Per model it exports one bundle with ``--precision fp32 fp16 int8`` (symmetric int8, the format
TensorRT also reads) and one with ``--int8-activations u8`` (asymmetric uint8 activations,
onnxruntime's faster x86 kernels), runs ``oat-edge bench`` on each (interleaved rounds, medians),
and measures top-1 agreement of every reduced-precision mode with fp32:
- digits: on the whole test split (360 images), per (λ, width); the digits bundle is exported
  with ``--calibrate``, so SA and strong RA (fp32 attacks transferred and a white-box attack
  through the fake-quantized twin, worst of both) per precision come from the manifest;
- ResNet-34 (``resnet34``): random weights (no CIFAR-10 here), so only latency is meaningful; its
  agreement on random images is reported but says little (random-weight logits are near ties);
- a trained ResNet-34 (``resnet34_trained``, ``--resnet34-ckpt``; e.g. OATS on the digits
  upscaled to 3×32×32 as an ``npz:`` dataset, docs/benchmarking.md): agreement and accuracy on
  its held-out split, at its trained widths.
``--models`` picks which to measure; the others' figures already in precision.json are kept.

Writes benchmarks/results/precision.{json,md} and precision_<model>_<s8|u8>/ (bench reports).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path
from statistics import median

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

DIGITS_QUANT = ["--quant-images", "1024"]  # digits' train split has 1,437 images; 1024 keeps near ties stable
# The default attack ensemble (pgd7, apgd-ce, apgd-dlr, square): Square is query-based, so it needs no
# gradient of the quantized graph's twin and is the check that int8 does not mask gradients.
DIGITS_CALIB = ["--calibrate", "--calib-lambdas", "0", "0.4", "1", "--calib-max-images", "128"]


def export(ckpt: Path, out: Path, widths, activations: str, extra=(), batch="1:8:64") -> Path:
    from oat_edge.cli import main

    if (out / "manifest.json").is_file():
        print(f"reusing {out}", flush=True)
        return out
    argv = ["export", str(ckpt), "-o", str(out), "--widths", *map(str, widths), "--precision", "fp32", "fp16", "int8",
            "--int8-activations", activations, "--batch-profile", batch, "--no-progress", *extra]
    print("oat-edge " + shlex.join(argv), flush=True)
    if main(argv) != 0:
        raise SystemExit(f"export failed: {out}")
    return out


def bench(bundle: Path, report: Path, threads: int, batches, modes, rounds: int, duration: float) -> dict:
    from oat_edge.bench.run import run_benchmark, write_outputs

    res = run_benchmark(bundle, backend="onnxruntime", batches=batches, modes=modes, warmup_s=0.2,
                        duration_s=duration, rounds=rounds, threads=threads, naive=False, progress=True)
    write_outputs(res, report_dir=report, write_profile=True)
    return res


def latency_ratios(res: dict) -> list:
    """int8 (and fp16) p50 ÷ fp32 p50 per (width, batch), median over λ."""
    rows = res["latency"]
    out = []
    for prec in ("fp16", "int8"):
        for w in sorted({r["width"] for r in rows}):
            for b in sorted({r["batch"] for r in rows}):
                ratios = []
                for r in rows:
                    if r["width"] == w and r["batch"] == b and (r.get("precision") or "fp32") == prec:
                        ref = next((q for q in rows if q["width"] == w and q["batch"] == b and q["lam"] == r["lam"]
                                    and (q.get("precision") or "fp32") == "fp32"), None)
                        if ref:
                            ratios.append(r["p50_ms"] / ref["p50_ms"])
                if ratios:
                    fp32 = median(q["p50_ms"] for q in rows if q["width"] == w and q["batch"] == b
                                  and (q.get("precision") or "fp32") == "fp32")
                    out.append({"precision": prec, "width": w, "batch": b, "ratio_to_fp32": round(median(ratios), 3),
                                "fp32_p50_ms": fp32, "n_lambdas": len(ratios)})
    return out


def agreement(bundle: Path, images: np.ndarray, labels, lams) -> list:
    """Top-1 agreement with fp32 (and accuracy when labels are given) per (λ, width, precision)."""
    from oat_edge.runtime import Runtime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rt = Runtime(bundle, backend="onnxruntime")
    out = []
    for w in rt.widths:
        for lam in lams:
            rt.set_mode(lam, w, "fp32")
            ref = _infer_all(rt, images)
            for prec in rt.precisions:
                if prec == "fp32":
                    continue
                rt.set_mode(lam, w, prec)
                got = _infer_all(rt, images)
                row = {"lam": lam, "width": w, "precision": prec, "n": int(len(images)),
                       "top1_agreement": float(np.mean(got.argmax(1) == ref.argmax(1))),
                       "max_abs_diff_rel": float(np.abs(got - ref).max() / max(1e-12, np.abs(ref).max()))}
                if labels is not None:
                    row["acc_fp32"] = float(np.mean(ref.argmax(1) == labels))
                    row["acc"] = float(np.mean(got.argmax(1) == labels))
                out.append(row)
    rt.close()
    return out


def _infer_all(rt, x: np.ndarray) -> np.ndarray:
    step = rt.io.batch_max
    return np.concatenate([rt.infer(x[i:i + step]) for i in range(0, len(x), step)])


def held_out(ckpt: Path):
    """(images, labels) of the split a trained checkpoint was not trained on: 'test' where its
    dataset has one, else 'val' (own npz:/folder: datasets)."""
    from oat_edge.checkpoint import load_checkpoint
    from oat_edge.training.datasets import load_dataset

    ds = load_checkpoint(ckpt)["dataset"]
    name = ds["name"]
    split = "val" if ":" in str(name) else "test"
    data = load_dataset(name, split, options=ds.get("options"))
    return data.tensors[0].numpy().astype(np.float32), data.tensors[1].numpy()


def calibration_rows(manifest: dict) -> list:
    recs = (manifest.get("calibration") or {}).get("records") or []
    by = {(r["lam"], r["width"], r.get("precision", "fp32")): r for r in recs}
    out = []
    for (lam, w, prec), r in sorted(by.items()):
        if prec == "fp32":
            continue
        f = by.get((lam, w, "fp32"))
        if f is None:
            continue
        ra, ra32 = r.get("ra") or {}, f.get("ra") or {}
        out.append({"lam": lam, "width": w, "precision": prec, "sa": r.get("sa"), "ra": ra.get("worst_case"),
                    "sa_fp32": f.get("sa"), "ra_fp32": ra32.get("worst_case"), "ra_transfer": ra.get("transfer"),
                    "ra_whitebox_twin": ra.get("whitebox_twin"), "ra_square_onnx": ra.get("square_onnx"),
                    "twin_agreement": r.get("twin_agreement")})
    return out


def main(argv=None) -> int:
    import bench_suite as suite
    from oat_edge.fileio import atomic_write_json, atomic_write_text

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--digits-ckpt", type=Path, default=None, help="a trained digits checkpoint (./demo.sh writes demo_out/ckpt.pt)")
    p.add_argument("--work-dir", type=Path, default=ROOT / "out" / "bench_precision")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--resnet34-ckpt", type=Path, default=None,
                   help="a trained ResNet-34 checkpoint: measured as model 'resnet34_trained' (agreement and accuracy "
                        "on its dataset's held-out split, its trained widths)")
    p.add_argument("--models", nargs="+", default=["digits", "resnet34"],
                   choices=["digits", "resnet34", "resnet34_trained"],
                   help="which models to measure (default digits resnet34: random-weight ResNet-34, latency only); "
                        "the figures of the others already in --out-dir/precision.json are kept")
    p.add_argument("--skip-resnet34", action="store_true", help="same as --models digits")
    p.add_argument("--note", default=None)
    args = p.parse_args(argv)
    if args.skip_resnet34:
        args.models = ["digits"]
    if "digits" in args.models and args.digits_ckpt is None:
        p.error("--digits-ckpt is required to measure digits")
    if "resnet34_trained" in args.models and args.resnet34_ckpt is None:
        p.error("--resnet34-ckpt is required to measure resnet34_trained")
    command = "python scripts/bench_precision.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    res = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command, "note": args.note,
           "models": {}}
    previous = args.out_dir / "precision.json"
    if previous.is_file():  # keep the other models' figures (with the command and date of their run)
        old = json.loads(previous.read_text())
        kept_from = old.get("kept") or {}
        res["models"] = {k: v for k, v in old.get("models", {}).items() if k not in args.models}
        res["kept"] = {k: kept_from.get(k) or {"created": old.get("created"), "command": old.get("command"),
                                              "note": old.get("note")} for k in res["models"]}

    models = []
    if "digits" in args.models:
        models.append(("digits", args.digits_ckpt, [0.5, 0.75, 1.0], 1, [1, 8, 32], None))
    if "resnet34" in args.models:
        r34 = args.work_dir / "resnet34.pt"
        if not r34.is_file():
            suite.save_random_checkpoint(r34, "resnet34", {}, [3, 32, 32], [0.5, 1.0], "cifar10")
        models.append(("resnet34", r34, [0.5, 1.0], 2, [1, 32], ["0:0.5", "1:0.5", "0:1", "1:1"]))
    if "resnet34_trained" in args.models:
        from oat_edge.checkpoint import load_checkpoint

        widths = [float(w) for w in load_checkpoint(args.resnet34_ckpt)["arch_kwargs"].get("widths", [1.0])]
        models.append(("resnet34_trained", args.resnet34_ckpt, widths, 2, [1, 32],
                       [f"{lam}:{w:g}" for w in widths for lam in (0, 1)]))
    for name, ckpt, widths, threads, batches, modes in models:
        entry = {}
        for act in ("s8", "u8"):
            extra = (DIGITS_QUANT + (DIGITS_CALIB if act == "s8" else [])) if name == "digits" else []
            bundle = export(ckpt, args.work_dir / f"{name}_{act}", widths, act, extra,
                            batch="1:8:64" if name == "digits" else "1:8:32")
            if modes is not None:
                modes_all = [f"{m}:{prec}" if prec != "fp32" else m for m in modes for prec in ("fp32", "fp16", "int8")]
            else:
                modes_all = None
            b = bench(bundle, args.out_dir / f"precision_{name}_{act}", threads, batches, modes_all,
                      rounds=5 if name == "digits" else 3, duration=0.3 if name == "digits" else 0.6)
            manifest = json.loads((bundle / "manifest.json").read_text())
            if name != "resnet34":  # a trained model: its held-out split, with labels
                x_val, y_val = held_out(ckpt)
                lams = [0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0] if name == "digits" else [0.0, 0.2, 0.4, 1.0]
                agree = agreement(bundle, x_val, y_val, lams)
            else:
                x_rand = np.random.default_rng(0).random((256, 3, 32, 32), dtype=np.float32)
                agree = agreement(bundle, x_rand, None, [0.0, 1.0])
            entry[act] = {"bundle": str(bundle), "device_key": b["device_key"], "latency_ratio": latency_ratios(b),
                          "agreement": agree, "calibration": calibration_rows(manifest),
                          "quantization": {k: v for k, v in (manifest.get("precisions") or {}).items()},
                          "parity": [{k: e.get(k) for k in ("id", "precision", "parity")} for e in manifest["paths"]
                                     if e.get("precision", "fp32") != "fp32"]}
        entry["checkpoint"] = {"path": str(ckpt), "trained": name != "resnet34"}
        res["models"][name] = entry
        atomic_write_json(args.out_dir / "precision.json", res)
    atomic_write_text(args.out_dir / "precision.md", render(res))
    print(render(res))
    return 0


def render(res: dict) -> str:
    lines = ["# Precision: fp32 / fp16 / int8 on onnxruntime (CPU)", "",
             f"Created {res['created']}. Command: `{res['command']}`.", ""]
    for name, k in (res.get("kept") or {}).items():
        lines += [f"{name}: figures kept from the run of {k['created']} (`{k['command']}`).", ""]
        if k.get("note"):
            lines += [f"> {k['note']}", ""]
    if res.get("note"):
        lines += [f"> {res['note']}", ""]
    for name, entry in res["models"].items():
        lines += [f"## {name}", ""]
        ck = entry.get("checkpoint")
        if ck:
            lines += [f"Checkpoint `{ck['path']}` ({'trained' if ck['trained'] else 'random weights: latency only'}).", ""]
        for act, e in entry.items():
            if act not in ("s8", "u8"):
                continue
            lines += [f"### int8 activations {act} (`{e['bundle']}`, {e['device_key']})", "",
                      "Latency p50 ÷ fp32 p50 (median over λ; interleaved rounds of one `oat-edge bench` run):", "",
                      "| precision | width | batch | fp32 p50 ms | ratio to fp32 |", "|---|---:|---:|---:|---:|"]
            for r in e["latency_ratio"]:
                lines.append(f"| {r['precision']} | {r['width']:g} | {r['batch']} | {r['fp32_p50_ms']:.4g} | "
                             f"{r['ratio_to_fp32']:.3g} |")
            ag = e["agreement"]
            lines += ["", f"Top-1 agreement with fp32 on {ag[0]['n'] if ag else 0} images (goal ≥ 99 %):", "",
                      "| precision | width | worst agreement (λ) | median agreement | max |Δlogit| ÷ max |logit| |"
                      + (" accuracy fp32 → this (worst λ) |" if ag and "acc" in ag[0] else ""),
                      "|---|---:|---:|---:|---:|" + ("---|" if ag and "acc" in ag[0] else "")]
            for prec in sorted({r["precision"] for r in ag}):
                for w in sorted({r["width"] for r in ag}):
                    rs = [r for r in ag if r["precision"] == prec and r["width"] == w]
                    worst = min(rs, key=lambda r: r["top1_agreement"])
                    row = (f"| {prec} | {w:g} | {worst['top1_agreement'] * 100:.1f} % (λ={worst['lam']:g}) | "
                           f"{median(r['top1_agreement'] for r in rs) * 100:.1f} % | "
                           f"{max(r['max_abs_diff_rel'] for r in rs):.3g} |")
                    if "acc" in worst:
                        row += f" {worst['acc_fp32'] * 100:.1f} → {worst['acc'] * 100:.1f} % |"
                    lines.append(row)
            cal = e["calibration"]
            if cal:
                lines += ["", "Calibration (manifest): SA and worst-case RA per mode; a reduced precision's RA is the "
                          "per-image worst of the fp32 attacks transferred, the gradient attacks through the file's "
                          "twin and Square against the deployed file:", "",
                          "| λ | width | precision | SA (fp32) | RA (fp32) | RA transfer | RA white-box twin | RA Square on the file |",
                          "|---:|---:|---|---|---|---:|---:|---:|"]
                for r in cal:
                    lines.append(f"| {r['lam']:g} | {r['width']:g} | {r['precision']} | {_p(r['sa'])} ({_p(r['sa_fp32'])}) | "
                                 f"{_p(r['ra'])} ({_p(r['ra_fp32'])}) | {_p(r['ra_transfer'])} | {_p(r.get('ra_whitebox_twin'))} | "
                                 f"{_p(r.get('ra_square_onnx'))} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def _p(v) -> str:
    return "—" if v is None else f"{100 * float(v):.1f} %"


if __name__ == "__main__":
    sys.exit(main())
