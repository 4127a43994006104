"""The `oat-edge bench` charts (PNG): latency against width per batch, the accuracy–robustness–
latency trade-off, and the mode-switch cost. They read the results dict only, like the report."""

from __future__ import annotations

from pathlib import Path
from statistics import median
from typing import List

from oat_edge.bench.stats import find_row
from oat_edge.mode import same_width


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(result: dict, out_dir) -> List[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [plot_latency_vs_width(result, out_dir, b) for b in result["config"]["batches"]]
    paths.append(plot_tradeoff(result, out_dir))
    paths.append(plot_switch(result, out_dir))
    return paths


def series(rows, batch, select):
    """{width: (median p50, median p90, median p99)} over the rows that ``select`` keeps."""
    by_w = {}
    for r in rows:
        if r["batch"] == batch and select(r):
            by_w.setdefault(r["width"], []).append(r)
    return {w: tuple(median(x[k] for x in rs) for k in ("p50_ms", "p90_ms", "p99_ms")) for w, rs in sorted(by_w.items())}


def plot_latency_vs_width(result: dict, out_dir: Path, batch: int) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    lat = result["latency"]
    fp32 = [r for r in lat if (r.get("precision") or "fp32") == "fp32"]
    lines = [  # fixed colours, so a series looks the same in every chart
        ("runtime, FiLM path, BN_a (λ>0)", series(fp32, batch, lambda r: r["path"] == "film" and r["lam"] > 0), "o-",
         "tab:blue"),
        ("runtime, FiLM path, BN_c (λ=0)", series(fp32, batch, lambda r: r["path"] == "film" and r["lam"] == 0), "s-",
         "tab:orange"),
        ("runtime, baked path", series(fp32, batch, lambda r: r["path"] == "baked"), "D-", "tab:green"),
        ("PyTorch eager (conditional model)", series(result.get("eager", []), batch, lambda r: True), "^--",
         "tab:red"),
        # reduced precision: every path of that precision, median over λ
        ("runtime, fp16 (median over λ)", series(lat, batch, lambda r: r.get("precision") == "fp16"), "v:",
         "tab:purple"),
        ("runtime, int8 (median over λ)", series(lat, batch, lambda r: r.get("precision") == "int8"), "P:",
         "tab:brown"),
    ]
    for label, s, style, color in lines:
        if not s:
            continue
        ws = list(s)
        p50 = [s[w][0] for w in ws]
        p99 = [s[w][2] for w in ws]
        ax.errorbar(ws, p50, yerr=[[0] * len(ws), [b - a for a, b in zip(p50, p99)]], fmt=style, color=color,
                    capsize=3, label=label)
    ax.set_xlabel("width")
    ax.set_ylabel("latency per call (ms), p50; bar to p99")
    ax.set_yscale("log")
    ax.set_xticks([float(w) for w in result["bundle"]["widths"]])
    ax.set_title(f"{result['bundle']['arch']} · batch {batch} · {result['config']['backend']}, "
                 f"{result['config']['threads']} threads")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / f"latency_vs_width_b{batch}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tradeoff_points(result: dict, batch: int) -> List[dict]:
    """(λ, width, p50 latency, SA, RA) for every benchmarked mode that the calibration covers."""
    calib = result.get("calibration") or {}
    metric = calib.get("robust_metric")
    pts = []
    for rec in calib.get("records", []) or []:
        precision = rec.get("precision") or "fp32"
        r = find_row(result["latency"], rec["lam"], rec["width"], batch, precision=precision)
        if r is None:
            continue
        ra = rec.get("ra") or {}
        # the robust metric (worst case) where records have it: fp32 and fp16/int8 records
        # name their attacks differently, their worst case is the comparable figure
        attack = metric if metric in ra else (sorted(ra)[0] if ra else None)
        pts.append({"lam": rec["lam"], "width": rec["width"], "p50_ms": r["p50_ms"], "sa": rec.get("sa"),
                    "ra": ra.get(attack) if attack else None, "attack": attack, "precision": precision})
    return pts


def plot_tradeoff(result: dict, out_dir: Path) -> Path:
    """SA and RA against latency, one point per (λ, width); latency-only when no calibration."""
    plt = _plt()
    batch = result["config"]["batches"][0]
    pts = tradeoff_points(result, batch)
    path = out_dir / "tradeoff.png"
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    widths = sorted({float(w) for w in result["bundle"]["widths"]})
    if pts:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharex=True)
        attack = next((p["attack"] for p in pts if p["attack"]), "attack")
        precisions = [p for p in ("fp32", "fp16", "int8") if any(q["precision"] == p for q in pts)]
        for ax, key, label in ((axes[0], "sa", "standard accuracy (SA)"), (axes[1], "ra", f"robust accuracy (RA, {attack})")):
            if len(precisions) > 1:  # precision is the marker, width the marker size
                for i, prec in enumerate(precisions):
                    sub = [p for p in pts if p["precision"] == prec and p[key] is not None]
                    sc = ax.scatter([p["p50_ms"] for p in sub], [p[key] for p in sub], c=[p["lam"] for p in sub],
                                    cmap="viridis", vmin=0, vmax=1, marker=markers[i % len(markers)],
                                    s=[25 + 60 * float(p["width"]) for p in sub], edgecolors="k", linewidths=0.5,
                                    label=f"{prec} (size: width)")
            else:
                for i, w in enumerate(widths):
                    sub = [p for p in pts if same_width(p["width"], w) and p[key] is not None]
                    if not sub:
                        continue
                    sc = ax.scatter([p["p50_ms"] for p in sub], [p[key] for p in sub], c=[p["lam"] for p in sub],
                                    cmap="viridis", vmin=0, vmax=1, marker=markers[i % len(markers)], s=50,
                                    edgecolors="k", linewidths=0.5, label=f"width {w:g}")
            ax.set_xlabel(f"latency p50 (ms), batch {batch}")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.colorbar(sc, ax=axes, label="λ")
        fig.suptitle(f"accuracy–robustness–latency trade-off: {result['bundle']['arch']}, "
                     f"{result['config']['backend']}, {result['device'].get('cpu_model', '')[:40]}")
    else:
        fig, ax = plt.subplots(figsize=(7, 4.4))
        rows = [r for r in result["latency"] if r["batch"] == batch]
        for i, w in enumerate(widths):
            sub = sorted((r for r in rows if same_width(r["width"], w)), key=lambda r: r["lam"])
            if not sub:
                continue
            ax.plot([r["lam"] for r in sub], [r["p50_ms"] for r in sub], marker=markers[i % len(markers)],
                    label=f"width {w:g}")
        baked = [r for r in rows if r["path"] == "baked"]
        if baked:
            ax.scatter([r["lam"] for r in baked], [r["p50_ms"] for r in baked], s=160, facecolors="none",
                       edgecolors="k", label="baked path (BN + FiLM folded)", zorder=3)
        ax.set_xlabel("λ")
        ax.set_ylabel(f"latency p50 (ms), batch {batch}")
        ax.set_title("latency per mode (the bundle has no calibration: no SA/RA axis)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    path = out_dir / ("tradeoff.png" if pts else "latency_modes.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_switch(result: dict, out_dir: Path) -> Path:
    plt = _plt()
    sw = result["switch"]
    bars = [("set_mode p50", sw["set_mode_us"]["p50_us"]), ("set_mode p99", sw["set_mode_us"]["p99_us"]),
            ("steady inference p50", sw["steady_infer_ms"]["p50_ms"] * 1e3),
            ("set_mode + first inference p50", sw["set_mode_plus_first_infer_ms"]["p50_ms"] * 1e3)]
    if sw.get("naive"):
        bars += [("naive: new session p50", sw["naive"]["open_ms"]["p50_ms"] * 1e3),
                 ("naive: new session + first inference p50", sw["naive"]["open_plus_first_infer_ms"]["p50_ms"] * 1e3)]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    colors = ["tab:green", "tab:green", "tab:gray", "tab:blue", "tab:red", "tab:red"]
    ax.barh([b[0] for b in bars][::-1], [b[1] for b in bars][::-1], color=colors[: len(bars)][::-1])
    ax.set_xscale("log")
    ax.set_xlabel("µs (log scale)")
    ax.set_title(f"mode-switch cost, batch {sw['batch']} ({result['config']['backend']})")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    path = out_dir / "switch_cost.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
