"""PNG plots of evaluation records (matplotlib, Agg backend, written atomically).

- ``tradeoff_{attack}.png``: RA against SA, one curve per width, points in λ order and
  labelled with λ — the once-for-all trade-off the user picks a mode from.
- ``lambda_{attack}.png``: SA (left) and RA (right) against λ, one line per width.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

from oat_edge.errors import ConfigError
from oat_edge.fileio import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _by_width(records: List[dict]) -> dict:
    groups = {}
    for r in records:
        groups.setdefault(float(r["width"]), []).append(r)
    return {w: sorted(rs, key=lambda r: float(r["lam"])) for w, rs in sorted(groups.items())}


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_tradeoff(records: List[dict], out_dir) -> List[Path]:
    """Write the trade-off and λ plots for every attack in the records; returns the paths."""
    if not records:
        raise ConfigError("no evaluation records to plot")
    attacks = list(records[0]["ra"])
    if not attacks:
        raise ConfigError("the records hold no robust accuracy (no attack was run)")
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = _by_width(records)
    paths = []
    for attack in attacks:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for width, rs in groups.items():
            sa = [100 * r["sa"] for r in rs]
            ra = [100 * r["ra"][attack] for r in rs]
            (line,) = ax.plot(sa, ra, marker="o", label=f"width {width:g}")
            # Modes with identical accuracies share one label ("λ=0.2,0.3") instead of overprinting.
            labels = {}
            for r, xs, ys in zip(rs, sa, ra):
                labels.setdefault((round(xs, 6), round(ys, 6)), []).append(f"{r['lam']:g}")
            for (xs, ys), lams in labels.items():
                ax.annotate("λ=" + ",".join(lams), (xs, ys), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=line.get_color())
        ax.set_xlabel("standard accuracy SA (%)")
        ax.set_ylabel(f"robust accuracy RA, {attack} (%)")
        ax.set_title(f"SA–RA trade-off ({attack})")
        ax.grid(alpha=0.3)
        ax.legend()
        paths.append(_save(fig, out_dir / f"tradeoff_{attack}.png"))
        plt.close(fig)

        fig, (ax_sa, ax_ra) = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
        for width, rs in groups.items():
            lams = [r["lam"] for r in rs]
            ax_sa.plot(lams, [100 * r["sa"] for r in rs], marker="o", label=f"width {width:g}")
            ax_ra.plot(lams, [100 * r["ra"][attack] for r in rs], marker="o", label=f"width {width:g}")
        for ax, label in ((ax_sa, "SA (%)"), (ax_ra, f"RA, {attack} (%)")):
            ax.set_xlabel("λ")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        ax_sa.set_title("standard accuracy vs λ")
        ax_ra.set_title("robust accuracy vs λ")
        ax_ra.legend()
        paths.append(_save(fig, out_dir / f"lambda_{attack}.png"))
        plt.close(fig)
    return paths
