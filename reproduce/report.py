"""results.json → the comparisons (``summarize``), ``report.md`` (``render_markdown``) and PNGs.

``report.md`` is a pure function of ``results.json`` (no clock, no machine): a test re-renders
the committed report from the committed results and compares the bytes.

Accuracies are in points (percent). Every mean is over seeds; the std is the sample std over
seeds (ddof 1). Noise rule for a difference Δ = mean_A − mean_B between two groups:

    SE(Δ) = sqrt(s_A²/k_A + s_B²/k_B)   (s: seed std, k: seeds; with one seed s² is the
                                         binomial variance p(1 − p)/n of the n test images)
    Δ exceeds the seed noise  ⇔  |Δ| > 2·SE(Δ)

and a comparison meets the goal when |Δ| ≤ 1.5 points or Δ is within the noise. Each comparison
also states its minimum detectable difference, MDD = (z₀.₉₇₅ + z₀.₈)·SE(Δ) ≈ 2.8·SE(Δ): the
smallest true difference a two-sided 5 % test finds with 80 % power. "Within noise" with an MDD
of several points is no evidence that two groups match.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from oat_edge.errors import InputError
from oat_edge.fileio import atomic_path, atomic_write_text

GOAL_POINTS = 1.5
NOISE_SIGMAS = 2.0
MDD_SIGMAS = 1.959964 + 0.841621  # two-sided 5 % test, 80 % power
PRIMARY = "ro"

# --- statistics ----------------------------------------------------------------------------------


def _r(x: Optional[float], nd: int = 2) -> Optional[float]:
    return None if x is None else round(float(x), nd)


def _cells(doc: dict) -> Dict[Tuple[str, float, float, str], dict]:
    """(group, λ, width, encoding) → per-seed SA/RA values (points) and n images."""
    cells: Dict[Tuple[str, float, float, str], dict] = {}
    for run in doc["runs"].values():
        if run.get("kind") != "train":
            continue
        for rec in run["records"]:
            enc = rec.get("encoding", PRIMARY) if not rec.get("primary", True) else "own"
            key = (run["group"], float(rec["lam"]), float(rec["width"]), enc)
            cell = cells.setdefault(key, {"sa": [], "ra": [], "n": int(rec.get("n", 0))})
            cell["sa"].append(100.0 * float(rec["sa"]))
            cell["ra"].append(100.0 * float(rec["ra"]["worst_case"]))
    return cells


def _stats(values: List[float], n_images: int) -> dict:
    k = len(values)
    mean = sum(values) / k
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1)) if k > 1 else None
    if k > 1:
        var_of_mean = std ** 2 / k
    else:  # one seed: the test set's binomial variance
        p = mean / 100.0
        var_of_mean = (100.0 ** 2) * p * (1 - p) / max(n_images, 1)
    return {"mean": mean, "std": std, "k": k, "var_of_mean": var_of_mean}


def _cell_stats(cells, key) -> Optional[dict]:
    cell = cells.get(key)
    if cell is None:
        return None
    return {m: _stats(cell[m], cell["n"]) for m in ("sa", "ra")}


def _compare(figure: str, what: str, lam: float, width: float, a_name: str, b_name: str, a: dict, b: dict) -> List[dict]:
    rows = []
    for metric in ("sa", "ra"):
        sa, sb = a[metric], b[metric]
        diff = sa["mean"] - sb["mean"]
        se = math.sqrt(sa["var_of_mean"] + sb["var_of_mean"])
        noise = NOISE_SIGMAS * se
        exceeds = abs(diff) > noise
        rows.append({
            "figure": figure, "what": what, "lam": lam, "width": width, "metric": metric.upper(),
            "a": a_name, "b": b_name, "a_mean": _r(sa["mean"]), "a_std": _r(sa["std"]),
            "b_mean": _r(sb["mean"]), "b_std": _r(sb["std"]), "diff": _r(diff), "noise": _r(noise),
            "mdd": _r(MDD_SIGMAS * se), "exceeds_noise": bool(exceeds), "within_goal": bool(abs(diff) <= GOAL_POINTS or not exceeds),
        })
    return rows


def summarize(doc: dict) -> dict:
    """Every mean ± std and every comparison the report shows, as plain JSON values."""
    cells = _cells(doc)
    suite = doc["suite"]
    s1, s3 = suite["s1"], suite["s3"]
    table = []
    for (group, lam, width, enc), cell in sorted(cells.items()):
        st = {m: _stats(cell[m], cell["n"]) for m in ("sa", "ra")}
        table.append({"group": group, "lam": lam, "width": width, "encoding": enc, "seeds": st["sa"]["k"],
                      "n_images": cell["n"], "sa_mean": _r(st["sa"]["mean"]), "sa_std": _r(st["sa"]["std"]),
                      "ra_mean": _r(st["ra"]["mean"]), "ra_std": _r(st["ra"]["std"])})
    comps: List[dict] = []

    def cmp(figure, what, a_key, b_key, a_name, b_name):
        a, b = _cell_stats(cells, a_key), _cell_stats(cells, b_key)
        if a is not None and b is not None:
            comps.extend(_compare(figure, what, a_key[1], a_key[2], a_name, b_name, a, b))

    from reproduce.suite import lam_tag

    for lam in s1:  # Fig. 4/8
        ded = (f"pgdat-{lam_tag(lam)}", lam, 1.0, "own")
        cmp("fig4", "OAT vs dedicated PGD-AT (λ ∈ S1)", ("oat-s1", lam, 1.0, "own"), ded, "OAT-S1", "PGD-AT")
        cmp("fig4", "OAT normal BN vs dedicated PGD-AT", ("oat-s1-nbn", lam, 1.0, "own"), ded, "OAT-S1 normal BN", "PGD-AT")
    for lam in s1:
        cmp("fig4-bn", "dual BN vs normal BN", ("oat-s1", lam, 1.0, "own"), ("oat-s1-nbn", lam, 1.0, "own"),
            "OAT dual BN", "OAT normal BN")
    encodings = sorted({k[3] for k in cells if k[0] in ("oat-s1", "oat-s2") and k[3] != "own"})
    for lam in s3:  # Fig. 5
        ded = (f"pgdat-{lam_tag(lam)}", lam, 1.0, "own")
        for g, label in (("oat-s1", "OAT-S1"), ("oat-s2", "OAT-S2")):
            cmp("fig5", f"{label} (ro) at unseen λ vs dedicated PGD-AT", (g, lam, 1.0, "own"), ded, f"{label} ro", "PGD-AT")
            for enc in encodings:
                cmp("fig5", f"{label} ({enc}) at unseen λ vs dedicated PGD-AT", (g, lam, 1.0, enc), ded,
                    f"{label} {enc}", "PGD-AT")
    for w in suite["slim_widths"]:  # Fig. 6/9
        for lam in suite["pgdats_lambdas"]:
            cmp("fig6", "OATS vs PGD-ATS", ("oats-s1", lam, w, "own"), (f"pgdats-{lam_tag(lam)}", lam, w, "own"),
                "OATS", "PGD-ATS")
    for lam in s1:  # Fig. 13
        for g, label in (("oat-s1-ro16", "RO-16"), ("oat-s1-scalar", "scalar")):
            cmp("fig13", f"{label} vs RO-128", (g, lam, 1.0, "own"), ("oat-s1", lam, 1.0, "own"), label, "RO-128")

    return {
        "noise_rule": f"|Δ| > {NOISE_SIGMAS:g}·sqrt(s_A²/k_A + s_B²/k_B) (s: seed std; one seed: binomial)",
        "goal_points": GOAL_POINTS,
        "table": table,
        "comparisons": comps,
        "unseen_encoding": _best_encoding(cells, s3),
        "timing": _timing(doc),
        "saliency": _saliency(doc),
        "cost": _cost(doc),
    }


def _best_encoding(cells, s3) -> dict:
    """Mean over S3 and over OAT-S1 / OAT-S2 of (SA + RA)/2 under each RO interpolation; the
    best is the highest."""
    scores = {}
    labels = sorted({k[3] for k in cells if k[0] in ("oat-s1", "oat-s2")})
    for enc in labels:
        vals = []
        for g in ("oat-s1", "oat-s2"):
            for lam in s3:
                c = cells.get((g, float(lam), 1.0, enc))
                if c:
                    vals.append((sum(c["sa"]) / len(c["sa"]) + sum(c["ra"]) / len(c["ra"])) / 2)
        if vals and len(vals) == 2 * len(s3):
            scores["ro" if enc == "own" else enc] = _r(sum(vals) / len(vals))
    best = max(scores, key=lambda e: (scores[e], e == "ro")) if scores else None
    return {"score": "mean over S3 and OAT-S1/OAT-S2 of (SA + RA)/2, points", "scores": scores, "best": best}


def _timing(doc: dict) -> Optional[dict]:
    t = doc["runs"].get("timing")
    if not t:
        return None
    sec = t["seconds_per_epoch"]
    med = {m: _r(sorted(v)[len(v) // 2], 3) for m, v in sec.items()}
    return {"median_seconds_per_epoch": med, "seconds_per_epoch": sec,
            "oat_over_pgdat": _r(med["oat"] / med["pgd-at"], 3),
            "oats_over_pgdats": _r(med["oats"] / med["pgd-ats"], 3),
            "widths": t.get("widths"), "lambdas": t.get("lambdas")}


def _saliency(doc: dict) -> Optional[list]:
    s = doc["runs"].get("saliency")
    if not s:
        return None
    return [{"lam": r["lam"], "oat_alignment": r["oat_alignment"], "pgdat_alignment": r["pgdat_alignment"]}
            for r in s["per_lambda"]]


def _cost(doc: dict) -> dict:
    runs = [r for r in doc["runs"].values() if r.get("kind") == "train"]
    train = sum(float(r.get("train_seconds", 0)) for r in runs)
    ev = sum(float(r.get("eval_seconds", 0)) for r in runs)
    wall = sum(float(s.get("wall_seconds", 0)) for s in doc.get("sessions", []))
    return {"train_seconds": _r(train, 1), "eval_seconds": _r(ev, 1), "wall_seconds_all_sessions": _r(wall, 1),
            "sessions": len(doc.get("sessions", []))}


# --- markdown ------------------------------------------------------------------------------------


def _pm(mean, std) -> str:
    if mean is None:
        return "—"
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def _verdict(c: dict) -> str:
    if not c["exceeds_noise"]:
        return "within noise" + ("" if c["within_goal"] else " ✗")
    # Which side wins matters to a reader: OAT more robust than the dedicated model is not a loss.
    side = "A higher" if c["diff"] > 0 else "A lower"
    return f"exceeds noise, {side}" + ("" if c["within_goal"] else " ✗")


def _comp_table(comps: List[dict], with_width: bool = False) -> List[str]:
    head = "| λ |" + (" width |" if with_width else "") + " metric | A | mean A | B | mean B | Δ = A − B | 2·SE | MDD | verdict |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in comps:
        lines.append(f"| {c['lam']:g} |" + (f" {c['width']:g} |" if with_width else "")
                     + f" {c['metric']} | {c['a']} | {_pm(c['a_mean'], c['a_std'])} | {c['b']} | "
                     f"{_pm(c['b_mean'], c['b_std'])} | {c['diff']:+.1f} | {c['noise']:.1f} | {c['mdd']:.1f} | {_verdict(c)} |")
    return lines


def _pick(comps, figure, what=None):
    return [c for c in comps if c["figure"] == figure and (what is None or c["what"] == what)]


def render_markdown(doc: dict) -> str:
    """report.md from a results document (deterministic)."""
    s = doc["summary"]
    suite = doc["suite"]
    rec = suite["recipe"]
    comps = s["comparisons"]
    out = [f"# OAT reproduction on digits — suite `{suite['name']}`", ""]
    out += [f"Seeds: {len(suite['seeds'])}. Recipe: resnet_tiny channels {rec['channels']}, {rec['epochs']} epochs, "
            f"training attack {rec['attack']}, batch {rec['batch_size']}, lr {rec['lr']:g}, "
            f"train images {rec['max_train_images'] or 'all 1437'}; evaluation on the first {rec['eval_images']} "
            "test images with the default ensemble, worst-case RA (docs/robustness.md).", ""]
    out += [f"S1 = {suite['s1']}, S2 = {suite['s2']}, S3 = {suite['s3']}; slimmable widths {suite['slim_widths']}.", ""]
    cost = s["cost"]
    out += [f"Cost: {cost['train_seconds']:.0f} s of training and {cost['eval_seconds']:.0f} s of evaluation "
            f"(per-run sums over worker processes); wall time {cost['wall_seconds_all_sessions']:.0f} s "
            f"over {cost['sessions']} session(s).", ""]
    out += [f"Noise rule: a difference exceeds the seed noise when {s['noise_rule']}. "
            f"Goal: |Δ| ≤ {s['goal_points']:g} points or within noise; ✗ marks a miss. MDD: the minimum "
            "detectable difference (two-sided 5 % test, 80 % power, 2.8·SE): a verdict of \"within noise\" "
            "says nothing about differences smaller than it.", ""]
    if suite.get("missing"):
        out += ["Not run in this build:", ""] + [f"- {m}" for m in suite["missing"]] + [""]

    def section(title, figure, what=None, png=None, with_width=False, note=None):
        rows = _pick(comps, figure, what)
        out.extend([f"## {title}", ""])
        if png:
            out.extend([f"![{title}]({png})", ""])
        if note:
            out.extend([note, ""])
        if rows:
            misses = sum(not c["within_goal"] for c in rows)
            out.extend(_comp_table(rows, with_width) + ["", f"{len(rows) - misses} of {len(rows)} within the goal.", ""])
        else:
            out.extend(["(no runs for this comparison in this suite)", ""])

    section("Fig. 4 / 8: OAT (S1) vs dedicated PGD-AT per λ", "fig4", "OAT vs dedicated PGD-AT (λ ∈ S1)",
            png="fig4_sa_ra.png")
    out.extend(["![SA and RA against λ](fig8_lambda.png)", ""])
    section("Fig. 4 ablation: OAT with normal BN vs dedicated PGD-AT", "fig4", "OAT normal BN vs dedicated PGD-AT")
    section("Dual BN vs normal BN (paper: dual BN is better; λ = 0 is the SA gap)", "fig4-bn")
    enc = s["unseen_encoding"]
    scores = ", ".join(f"{k} {v:.2f}" for k, v in sorted(enc["scores"].items()))
    section("Fig. 5: unseen λ ∈ S3 — OAT-S1 / OAT-S2 vs PGD-AT dedicated to each λ", "fig5", png="fig5_unseen.png",
            note=f"Interpolation of the λ code off the training grid, {enc['score']}: {scores or '—'}; "
                 f"best: **{enc['best'] or '—'}**.")
    section("Fig. 6 / 9: OATS vs PGD-ATS per width", "fig6", png="fig6_oats.png", with_width=True)
    section("Fig. 13: λ encoding — RO-16 and scalar λ vs RO-128", "fig13", png="fig13_encoding.png")

    out.extend(["## Figs. 10-12: saliency and gradient alignment", ""])
    if s["saliency"]:
        out.extend(["![saliency maps](fig10_saliency.png)", "", "![alignment](fig12_alignment.png)", "",
                    "| λ | alignment OAT-S1 | alignment PGD-AT(λ) |", "|---|---|---|"])
        for r in s["saliency"]:
            out.append(f"| {r['lam']:g} | {r['oat_alignment']:.4f} | {r['pgdat_alignment']:.4f} |")
        out.append("")
    else:
        out.extend(["(not run in this build)", ""])

    out.extend(["## Training cost (seconds per epoch, methods interleaved in one process)", ""])
    t = s["timing"]
    if t:
        out.extend(["| method | median s/epoch | all epochs |", "|---|---|---|"])
        for m in ("oat", "pgd-at", "oats", "pgd-ats"):
            out.append(f"| {m} | {t['median_seconds_per_epoch'][m]:.2f} | "
                       + ", ".join(f"{v:.2f}" for v in t["seconds_per_epoch"][m]) + " |")
        out.extend(["", f"OAT / PGD-AT = {t['oat_over_pgdat']:.2f}×; OATS / PGD-ATS = {t['oats_over_pgdats']:.2f}× "
                    f"(OAT/OATS λ set {t['lambdas']}, PGD-AT(S) at λ = 1, widths {t['widths']}).", ""])

    out.extend(["## All means (points, mean ± seed std)", "",
                "| group | λ | width | encoding | seeds | SA | RA (worst case) |", "|---|---|---|---|---|---|---|"])
    for row in s["table"]:
        enc = "as trained" if row["encoding"] == "own" else row["encoding"]
        out.append(f"| {row['group']} | {row['lam']:g} | {row['width']:g} | {enc} | {row['seeds']} | "
                   f"{_pm(row['sa_mean'], row['sa_std'])} | {_pm(row['ra_mean'], row['ra_std'])} |")
    out.append("")
    return "\n".join(out)


# --- figures -------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _series(table, group, width=1.0, encoding="own"):
    rows = sorted((r for r in table if r["group"] == group and r["width"] == width and r["encoding"] == encoding),
                  key=lambda r: r["lam"])
    return rows


def _dedicated(table, lams):
    rows = []
    for lam in lams:
        from reproduce.suite import lam_tag

        rows += [r for r in table if r["group"] == f"pgdat-{lam_tag(lam)}" and r["width"] == 1.0]
    return sorted(rows, key=lambda r: r["lam"])


def _err(rows, key):
    return [r[f"{key}_std"] or 0.0 for r in rows]


def write_figures(doc: dict, out_dir: Path) -> List[Path]:
    plt = _pyplot()
    s, suite = doc["summary"], doc["suite"]
    table = s["table"]
    paths = []
    s1 = suite["s1"]
    oat, nbn, ded = _series(table, "oat-s1"), _series(table, "oat-s1-nbn"), _dedicated(table, s1)
    oat = [r for r in oat if r["lam"] in s1]

    fig, ax = plt.subplots(figsize=(5, 4))
    for rows, label, marker in ((oat, "OAT-S1 (dual BN)", "o"), (nbn, "OAT-S1 normal BN", "s"), (ded, "PGD-AT per λ", "^")):
        if rows:
            ax.errorbar([r["sa_mean"] for r in rows], [r["ra_mean"] for r in rows], xerr=_err(rows, "sa"),
                        yerr=_err(rows, "ra"), fmt=marker, label=label, capsize=2)
            for r in rows:
                ax.annotate(f"{r['lam']:g}", (r["sa_mean"], r["ra_mean"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("SA (%)"), ax.set_ylabel("RA worst case (%)"), ax.set_title("Fig. 4: SA-RA per λ"), ax.legend(fontsize=7)
    paths.append(_save(plt, fig, out_dir / "fig4_sa_ra.png"))

    def lam_curves(name, title, curves):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for ax, key in zip(axes, ("sa", "ra")):
            for rows, label in curves:
                if rows:
                    ax.errorbar([r["lam"] for r in rows], [r[f"{key}_mean"] for r in rows], yerr=_err(rows, key),
                                marker="o", label=label, capsize=2)
            ax.set_xlabel("λ"), ax.set_ylabel(f"{key.upper()} (%)"), ax.legend(fontsize=7)
        fig.suptitle(title)
        paths.append(_save(plt, fig, out_dir / name))

    lam_curves("fig8_lambda.png", "Fig. 8: SA / RA against λ",
               [(oat, "OAT-S1"), (nbn, "OAT-S1 normal BN"), (ded, "PGD-AT per λ")])
    s3 = suite["s3"]
    curves = [(_dedicated(table, s3), "PGD-AT per λ")]
    encs = sorted({r["encoding"] for r in table if r["group"] in ("oat-s1", "oat-s2")} - {"own"})
    for g in ("oat-s1", "oat-s2"):
        curves.append(([r for r in _series(table, g) if r["lam"] in s3], f"{g.upper()} ro"))
        for e in encs:
            curves.append(([r for r in _series(table, g, encoding=e) if r["lam"] in s3], f"{g.upper()} {e}"))
    lam_curves("fig5_unseen.png", "Fig. 5: unseen λ (S3)", curves)

    widths = suite["slim_widths"]
    fig, axes = plt.subplots(2, len(widths), figsize=(3.2 * len(widths), 6), squeeze=False)
    for j, w in enumerate(widths):
        for i, key in enumerate(("sa", "ra")):
            ax = axes[i][j]
            rows = _series(table, "oats-s1", w)
            ax.errorbar([r["lam"] for r in rows], [r[f"{key}_mean"] for r in rows], yerr=_err(rows, key),
                        marker="o", label="OATS", capsize=2)
            from reproduce.suite import lam_tag

            p = sorted((r for r in table if r["group"].startswith("pgdats-") and r["width"] == w), key=lambda r: r["lam"])
            ax.errorbar([r["lam"] for r in p], [r[f"{key}_mean"] for r in p], yerr=_err(p, key), fmt="^",
                        label="PGD-ATS", capsize=2)
            ax.set_title(f"width {w:g}", fontsize=9), ax.set_xlabel("λ"), ax.set_ylabel(f"{key.upper()} (%)")
            ax.legend(fontsize=7)
    fig.suptitle("Fig. 6 / 9: OATS vs PGD-ATS")
    paths.append(_save(plt, fig, out_dir / "fig6_oats.png"))

    lam_curves("fig13_encoding.png", "Fig. 13: λ encoding",
               [(oat, "RO-128"), (_series(table, "oat-s1-ro16"), "RO-16"), (_series(table, "oat-s1-scalar"), "scalar")])

    sal = doc["runs"].get("saliency")
    if sal:
        per = sal["per_lambda"]
        n_img = len(sal["images"])
        fig, axes = plt.subplots(n_img, 1 + 2 * len(per), figsize=(1.1 * (1 + 2 * len(per)), 1.2 * n_img), squeeze=False)
        for i in range(n_img):
            axes[i][0].imshow(sal["images"][i], cmap="gray")
            axes[i][0].set_title(f"y={sal['labels'][i]}" if i == 0 else "", fontsize=6)
            for j, r in enumerate(per):
                for k, tag in enumerate(("oat", "pgdat")):
                    ax = axes[i][1 + 2 * j + k]
                    m = r[f"{tag}_maps"][i]
                    lim = max(1e-12, max(abs(v) for line in m for v in line))
                    ax.imshow(m, cmap="seismic", vmin=-lim, vmax=lim)
                    if i == 0:
                        ax.set_title(f"{'OAT' if tag == 'oat' else 'PGD'} λ={r['lam']:g}", fontsize=6)
        for ax in axes.flat:
            ax.set_xticks([]), ax.set_yticks([])
        fig.suptitle("Figs. 10-11: ∇x loss (red +, blue −)", fontsize=8)
        paths.append(_save(plt, fig, out_dir / "fig10_saliency.png"))
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([r["lam"] for r in per], [r["oat_alignment"] for r in per], marker="o", label="OAT-S1")
        ax.plot([r["lam"] for r in per], [r["pgdat_alignment"] for r in per], marker="^", label="PGD-AT(λ)")
        ax.set_xlabel("λ"), ax.set_ylabel("alignment of ∇x L with x"), ax.legend(fontsize=7)
        ax.set_title("Fig. 12: gradient alignment")
        paths.append(_save(plt, fig, out_dir / "fig12_alignment.png"))
    return paths


def load_results(path) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read reproduction results {path}: {e}") from None
    from reproduce.runner import RESULTS_SCHEMA

    if not isinstance(doc, dict) or doc.get("schema") != RESULTS_SCHEMA or "summary" not in doc:
        raise InputError(f"{path} is not a reproduction results file (schema {RESULTS_SCHEMA})")
    return doc


def write_report(results_path, out_dir, figures: bool = True) -> Path:
    """Write ``report.md`` (and the PNGs) beside the results; returns the report path."""
    out_dir = Path(out_dir)
    doc = load_results(results_path)
    if figures:
        write_figures(doc, out_dir)
    path = out_dir / "report.md"
    atomic_write_text(path, render_markdown(doc))
    return path
