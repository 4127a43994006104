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

    python benchmarks/train_throughput.py --quick          # a minute or two on 2 cores
    python benchmarks/train_throughput.py --resnet34       # adds ResNet-34 (slow on a CPU)

Writes benchmarks/results/train_throughput.{json,md} (atomically).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
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


def time_steps(trainer, first_step: int, iters: int) -> float:
    """Wall seconds of ``iters`` optimizer steps (batches cycle through the epoch)."""
    import torch

    steps = trainer.steps_per_epoch
    batches = [next(iter(trainer.batches(0, start=(first_step + i) % steps))) for i in range(iters)]
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i, (x, y) in enumerate(batches):
        trainer.train_step(0, (first_step + i) % steps, x, y)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure_pair(pair, workload, args, tmp):
    from rich.console import Console

    console = Console(stderr=True)
    trainers = {m: make_trainer(m, workload, args.batch_size, args.device, args.threads, tmp) for m in pair}
    iters = args.resnet34_iters if workload == "resnet34" else args.iters
    if args.warmup:
        for t in trainers.values():
            time_steps(t, 0, args.warmup)
    ips = {m: [] for m in pair}
    step = args.warmup
    for r in range(args.rounds):
        for m in pair:  # interleaved: drift on a shared VM hits both methods alike
            seconds = time_steps(trainers[m], step, iters)
            ips[m].append(iters * args.batch_size / seconds)
        step += iters
        console.print(f"{workload} round {r + 1}/{args.rounds}: " +
                      "  ".join(f"{m} {ips[m][-1]:.1f} img/s" for m in pair))
    med = {m: statistics.median(v) for m, v in ips.items()}
    a, b = pair
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
    }


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
        f"{doc['machine']['device']} · median of {doc['settings']['rounds']} interleaved rounds.",
        "cost ratio = time per image of the first method / time per image of the second "
        "(paper: one OAT training ≈ one PGD-AT training, i.e. ≈ 1).",
        "",
        "| workload | pair | batch | widths | img/s (first) | img/s (second) | cost ratio |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for r in doc["results"]:
        a, b = r["pair"].split(" vs ")
        lines.append(
            f"| {r['workload']} ({r['arch']}, {'×'.join(map(str, r['input_shape']))}) | {r['pair']} | {r['batch_size']} | "
            f"{', '.join(f'{w:g}' for w in r['widths'])} | {r['images_per_s'][a]['median']:.1f} | "
            f"{r['images_per_s'][b]['median']:.1f} | {r['cost_ratio']:.2f} |"
        )
    lines += ["", "Slimmable methods train every width per step, so their images/s counts each image once "
              "for all widths.", ""]
    return "\n".join(lines)


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
    atomic_write_json(args.out_dir / "train_throughput.json", doc)
    atomic_write_text(args.out_dir / "train_throughput.md", markdown(doc))
    print(markdown(doc))
    print(f"wrote {args.out_dir / 'train_throughput.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
