"""Check `oat-edge eval`'s worst-case robust accuracy against an independent implementation.

Runs torchattacks' attacks at each (λ, width) of a checkpoint and compares with the worst-case
RA in an eval JSON written by `oat-edge eval CKPT --json`. `--suite standard` is AutoAttack's
standard version (APGD-CE, APGD-T with 9 targets, FAB-T, the black-box Square attack with 5000
queries: minutes per mode on a CPU); `--suite fast` (default) the per-image worst case of APGD-CE
with 5 restarts, APGD-T with 9 targets (torchattacks' own implementations, independent of ours)
and Square with 5000 queries. The acceptance: the
independent attack finds no more than 2 points below what eval reports, for any mode.

torchattacks is not a dependency of oat-edge (its package metadata pulls torchvision and an old
requests); install it next to the pinned CPU torch without its dependencies:

    pip install --no-deps torchattacks==3.5.1
    python benchmarks/independent_attack_check.py ckpt.pt --eval eval.json --out benchmarks/results/robustness/
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

TOLERANCE = 0.02  # the independent attack may find at most 2 points below eval's worst case


class _AtMode(torch.nn.Module):
    """The model at one fixed (λ, width), as a plain classifier f(x) for torchattacks."""

    def __init__(self, model, lam: float, width: float):
        super().__init__()
        self.model, self.lam = model, lam
        model.set_width(width)

    def forward(self, x):
        return self.model(x, self.lam)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--eval", required=True, type=Path, help="eval JSON of the same checkpoint (oat-edge eval --json)")
    p.add_argument("--out", type=Path, help="folder for independent_check.{json,md}")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-images", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--suite", choices=("fast", "standard"), default="fast")
    p.add_argument("--lambdas", type=float, nargs="+", help="check only the eval records at these λ")
    args = p.parse_args(argv)
    try:
        import torchattacks
    except ImportError:
        p.error("needs torchattacks: pip install --no-deps torchattacks==3.5.1")
    from oat_edge.checkpoint import load_model
    from oat_edge.training.datasets import load_dataset

    torch.set_num_threads(args.threads)
    doc = json.loads(args.eval.read_text())
    model, payload = load_model(args.checkpoint)
    data = load_dataset(payload["dataset"]["name"], doc.get("split", "test"))
    x, y = data.images, data.labels
    if args.max_images:
        x, y = x[: args.max_images], y[: args.max_images]
    if doc["n_images"] != len(y):
        p.error(f"the eval JSON was measured on {doc['n_images']} images, this run uses {len(y)}")
    eps = next(iter(doc["attacks"].values()))["eps"]
    rows = []
    records = [r for r in doc["records"] if args.lambdas is None or any(abs(r["lam"] - l) < 1e-9 for l in args.lambdas)]
    for rec in records:
        lam, width = rec["lam"], rec["width"]
        net = _AtMode(model, lam, width).eval()
        n_classes = int(payload["dataset"]["num_classes"])
        if args.suite == "standard":
            attacks = [torchattacks.AutoAttack(net, norm="Linf", eps=eps, version="standard", n_classes=n_classes, seed=args.seed)]
        else:
            attacks = [torchattacks.APGD(net, norm="Linf", eps=eps, steps=100, n_restarts=5, loss="ce", seed=args.seed),
                       torchattacks.APGDT(net, norm="Linf", eps=eps, steps=100, n_classes=n_classes, seed=args.seed),
                       torchattacks.Square(net, norm="Linf", eps=eps, n_queries=5000, seed=args.seed)]
        t0 = time.perf_counter()
        with torch.no_grad():
            ok = net(x).argmax(1) == y
        for attack in attacks:
            x_adv = attack(x, y)
            with torch.no_grad():
                ok &= net(x_adv).argmax(1) == y
        ra = float(ok.float().mean())
        ours = rec["ra"]["worst_case"]
        rows.append({"lam": lam, "width": width, "eval_worst_case": ours, "independent": ra,
                     "gap": ours - ra, "seconds": round(time.perf_counter() - t0, 1)})
        print(f"λ={lam:g} width={width:g}: eval worst case {100 * ours:.1f} %, torchattacks {100 * ra:.1f} % "
              f"(gap {100 * (ours - ra):+.1f})", flush=True)
    worst_gap = max(r["gap"] for r in rows)
    passed = worst_gap <= TOLERANCE
    what = ("AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square 5000)" if args.suite == "standard"
            else "worst case of APGD-CE (5 restarts), APGD-T (9 targets) and Square (5000 queries)")
    summary = {"checkpoint": str(args.checkpoint), "eps": eps, "n_images": len(y), "tolerance": TOLERANCE,
               "independent": f"torchattacks {torchattacks.__version__}: {what}",
               "largest_gap": worst_gap, "passed": passed, "modes": rows}
    print(f"largest gap (eval − independent): {100 * worst_gap:+.1f} points → {'PASS' if passed else 'FAIL'} "
          f"(target ≤ {100 * TOLERANCE:g})")
    if args.out:
        from oat_edge.fileio import atomic_write_json, atomic_write_text

        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out / "independent_check.json", summary)
        lines = ["# Independent check of the worst-case robust accuracy", "",
                 f"{summary['independent']} at ε = {eps:g} on {len(y)} images, against `oat-edge eval`'s worst case "
                 f"(target: independent ≥ eval − {100 * TOLERANCE:g} points at every mode).", "",
                 "| λ | width | eval worst case % | independent % | gap (points) |", "|---|---|---|---|---|"]
        lines += [f"| {r['lam']:g} | {r['width']:g} | {100 * r['eval_worst_case']:.1f} | {100 * r['independent']:.1f} | "
                  f"{100 * r['gap']:+.1f} |" for r in rows]
        lines += ["", f"Largest gap: {100 * worst_gap:+.1f} points: {'passed' if passed else 'FAILED'}."]
        atomic_write_text(args.out / "independent_check.md", "\n".join(lines) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
