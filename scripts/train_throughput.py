"""Training throughput (images/s) of OAT vs PGD-AT and OATS vs PGD-ATS on the same backbone.

The paper's claim to check: one OAT training costs about as much as one PGD-AT training
(both are dominated by the 7-step PGD attack; OAT adds FiLM generators, a clean pass for the
samples with λ < 1, and skips the attack for the samples with λ = 0).

Method: for each pair, one Trainer per method with the same architecture, data and batch;
warm-up steps, then ``--rounds`` interleaved rounds (A, B, A, B, ...) of ``--iters`` optimizer
steps each; images/s per round = images / wall time; we report the median per method and the
ratio of the medians measured in the same run (VM timings drift up to 4×, ratios less).

Workloads:
- digits: resnet_tiny on scikit-learn digits (8×8), the CPU demo model;
- resnet34 (``--resnet34``): ResNet-34 on random 32×32 images (CIFAR shape; timing only).

    python scripts/train_throughput.py --quick          # a minute or two on 2 cores
    python scripts/train_throughput.py --resnet34       # adds ResNet-34 (slow on a CPU)

    python scripts/train_throughput.py --threads 2 --warmup 22 --count-ops --stem train_throughput_cpu

The warm-up matters for OAT/OATS on a CPU: their attack and passes run on the λ > 0 / λ < 1
sub-batches, whose size changes from step to step, and oneDNN builds a convolution primitive
the first time it sees a shape. One epoch of warm-up steps (22 on digits) has it see most sizes,
as a real run does after its first epoch. ``--count-ops`` adds the aten operators one step
dispatches per method.

Writes benchmarks/results/<stem>.{json,md} (atomically; stem ``train_throughput`` by default).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
PAIRS = (("oat", "pgd-at"), ("oats", "pgd-ats"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few rounds and iterations (a smoke-sized measurement)")
    p.add_argument("--rounds", type=int, help="interleaved rounds per method (default 5; --quick 3)")
    p.add_argument("--iters", type=int, help="optimizer steps per round (default 10; --quick 3)")
    p.add_argument("--warmup", type=int, help="untimed steps per method first (default 2; --quick 1)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--resnet34", action="store_true", help="also ResNet-34 on random 32×32 data")
    p.add_argument("--resnet34-iters", type=int, help="steps per round for ResNet-34 (default 2; --quick 1)")
    p.add_argument("--out-dir", type=Path, default=RESULTS, help=f"where to write results (default {RESULTS})")
    p.add_argument("--stem", default="train_throughput", help="results file name without suffix (default train_throughput)")
    p.add_argument("--count-ops", action="store_true", help="also count the aten operators of one step per method")
    args = p.parse_args(argv)
    defaults = dict(rounds=3, iters=3, warmup=1, resnet34_iters=1) if args.quick else \
        dict(rounds=5, iters=10, warmup=2, resnet34_iters=2)
    for name, value in defaults.items():  # explicit arguments win over --quick
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.warmup < 0:
        p.error("--warmup must be ≥ 0")
    for name in ("rounds", "iters", "batch_size", "resnet34_iters"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be ≥ 1")
    return args


def make_trainer(method: str, workload: str, batch: int, device: str, threads, tmp: Path):
    import numpy as np

    from oat_edge.training.config import TrainConfig
    from oat_edge.training.datasets import make_dataset
    from oat_edge.training.trainers import Trainer

    common = dict(method=method, batch_size=batch, epochs=1, progress=False, device=device, threads=threads,
                  out=str(tmp / f"{workload}-{method}.pt"))
    if workload == "digits":
        return Trainer(TrainConfig(dataset="digits", arch="resnet_tiny", **common))
    # ResNet-34 at CIFAR shape on random images: enough batches for the timed steps.
    rng = np.random.default_rng(0)
    n = batch * 4
    data = make_dataset(rng.random((n, 3, 32, 32), dtype=np.float32), rng.integers(0, 10, n), "cifar10", "train")
    return Trainer(TrainConfig(dataset="cifar10", arch="resnet34", **common), train_set=data)


def measure_pair(pair, workload, args, tmp):
    from rich.console import Console

    console = Console(stderr=True)
    from oat_edge.training.throughput import aten_ops_per_step, interleaved_step_seconds

    trainers = {m: make_trainer(m, workload, args.batch_size, args.device, args.threads, tmp) for m in pair}
    iters = args.resnet34_iters if workload == "resnet34" else args.iters

    def progress(r, seconds):
        console.print(f"{workload} round {r + 1}/{args.rounds}: " +
                      "  ".join(f"{m} {iters * args.batch_size / seconds[m][-1]:.1f} img/s" for m in pair))

    load_before = _load_avg()
    seconds = interleaved_step_seconds(trainers, args.rounds, iters, args.warmup, on_round=progress)
    ips = {m: [iters * args.batch_size / s for s in v] for m, v in seconds.items()}
    med = {m: statistics.median(v) for m, v in ips.items()}
    a, b = pair
    # counted after the timing (a warmed-up trainer: its optimizer state exists, as at any later step)
    ops = {m: aten_ops_per_step(t, 0, 1) for m, t in trainers.items()} if args.count_ops else None
    extra = {"load_avg_before": load_before, "load_avg_after": _load_avg(),
             # per-round ratio (a's seconds / b's seconds in the same round): drift between rounds cancels
             "round_ratios": [sa / sb for sa, sb in zip(seconds[a], seconds[b])]}
    extra["median_round_ratio"] = statistics.median(extra["round_ratios"])
    if ops is not None:
        extra["aten_ops_per_step"] = {m: ops[m]["total"] for m in pair}
        extra["aten_ops_top"] = {m: dict(list(ops[m].items())[1:16]) for m in pair}
    widths = list(trainers[a].model.widths)
    return {
        "workload": workload,
        "arch": trainers[a].cfg.arch,
        "input_shape": list(trainers[a].info["input_shape"]),
        "batch_size": args.batch_size,
        "widths": widths,
        "lambdas": {m: trainers[m].cfg.lambdas for m in pair},
        "attack": trainers[a].attack.describe(),
        "iters_per_round": iters,
        "rounds": args.rounds,
        "images_per_s": {m: {"median": med[m], "rounds": ips[m]} for m in pair},
        "cost_ratio": med[b] / med[a],  # time per image of `a` relative to `b`
        "pair": f"{a} vs {b}",
        "warmup_steps": args.warmup,
        **extra,
    }


def _load_avg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info(args) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "device": args.device}
    try:
        import psutil

        info["load_avg"] = list(os.getloadavg())
        info["cpu_percent_before"] = psutil.cpu_percent(interval=0.5)
    except (ImportError, OSError):
        pass
    if args.device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def markdown(doc) -> str:
    lines = [
        "# Training throughput: OAT vs PGD-AT, OATS vs PGD-ATS",
        "",
        f"Created {doc['created']} · torch {doc['machine']['torch']} · {doc['machine']['threads']} threads · "
        f"{doc['machine']['device']} · median of {doc['settings']['rounds']} interleaved rounds of "
        f"{doc['settings']['iters']} steps after {doc['settings']['warmup']} warm-up steps per method.",
        "cost ratio = time per image of the first method / time per image of the second "
        "(paper: one OAT training ≈ one PGD-AT training, i.e. ≈ 1); round ratio = the median of the "
        "per-round ratios (each round times both methods back to back).",
        "",
        "| workload | pair | batch | widths | img/s (first) | img/s (second) | cost ratio | round ratio "
        "| aten ops/step | load (1 min) before → after |",
        "|---|---|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for r in doc["results"]:
        a, b = r["pair"].split(" vs ")
        lines.append(
            f"| {r['workload']} ({r['arch']}, {'×'.join(map(str, r['input_shape']))}) | {r['pair']} | {r['batch_size']} | "
            f"{', '.join(f'{w:g}' for w in r['widths'])} | {r['images_per_s'][a]['median']:.1f} | "
            f"{r['images_per_s'][b]['median']:.1f} | {r['cost_ratio']:.2f} | {r['median_round_ratio']:.2f} | "
            f"{_ops_cell(r, a, b)} | {_load_cell(r)} |"
        )
    lines += ["", "Slimmable methods train every width per step, so their images/s counts each image once "
              "for all widths.", ""]
    return "\n".join(lines)


def _ops_cell(r, a, b) -> str:
    ops = r.get("aten_ops_per_step")
    return f"{ops[a]:,} vs {ops[b]:,}" if ops else "–"


def _load_cell(r) -> str:
    before, after = r.get("load_avg_before"), r.get("load_avg_after")
    return f"{before[0]:.1f} → {after[0]:.1f}" if before and after else "–"


def main(argv=None) -> int:
    import tempfile

    args = parse_args(argv)
    import torch

    from oat_edge.fileio import atomic_write_json, atomic_write_text

    if args.threads:
        torch.set_num_threads(args.threads)
    doc = {"benchmark": "train_throughput", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "machine": machine_info(args),
           "settings": {"rounds": args.rounds, "iters": args.iters, "warmup": args.warmup,
                        "batch_size": args.batch_size, "quick": args.quick}, "results": []}
    workloads = ["digits"] + (["resnet34"] if args.resnet34 else [])
    with tempfile.TemporaryDirectory() as tmp:
        for workload in workloads:
            for pair in PAIRS:
                doc["results"].append(measure_pair(pair, workload, args, Path(tmp)))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out_dir / f"{args.stem}.json", doc)
    atomic_write_text(args.out_dir / f"{args.stem}.md", markdown(doc))
    print(markdown(doc))
    print(f"wrote {args.out_dir / (args.stem + '.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
