"""The `oat-edge bench` report: acceptance verdicts, markdown, PNG charts, console summary.

Everything here reads the results dict of ``oat_edge.runtime.bench.run_benchmark`` (the JSON
file) and nothing else, so a report can be re-drawn from a saved JSON."""

from __future__ import annotations

import math
from pathlib import Path
from statistics import median
from typing import List, Optional

# Acceptance targets (issue "On-device latency benchmarks").
SWITCH_P99_US = 10.0
NAIVE_RATIO = 1000.0
EAGER_RATIO = 2.0
WIDTH_RATIO = 0.35
WIDTH_RATIO_BATCH = 32

PASS, MISS, NOT_MEASURED = "PASS", "MISS", "NOT MEASURED"
UNSTABLE_SPREAD = 2.0  # same as bench.UNSTABLE_SPREAD


def _close(a: float, b: float, tol: float = 1e-6) -> bool:
    return abs(float(a) - float(b)) <= tol


def _fmt(x: Optional[float], digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def _row(rows, lam, width, batch, path=None):
    for r in rows:
        if (_close(r["lam"], lam, 1e-9) and _close(r["width"], width) and r["batch"] == batch
                and (path is None or r.get("path") == path)):
            return r
    return None


def _load_note(result) -> str:
    dev = result.get("device", {})
    la, lb = dev.get("loadavg"), dev.get("loadavg_end")
    n = dev.get("logical_cpus")
    if not la:
        return ""
    return (f"load average {la[0]:.2f} at start, {lb[0]:.2f} at end on {n} logical CPUs"
            if lb else f"load average {la[0]:.2f} at start on {n} logical CPUs")


# ------------------------------------------------------------------------------------------------
# Acceptance
# ------------------------------------------------------------------------------------------------
def acceptance(result: dict) -> List[dict]:
    """One record per acceptance figure: {id, criterion, value, target, verdict, detail, why,
    to_close}. ``why``/``to_close`` are filled for every MISS and NOT MEASURED."""
    out = [_acc_switch_p99(result), _acc_switch_naive(result), _acc_eager(result), _acc_width(result)]
    out += _acc_film_baked(result)
    out.append(_acc_gpu(result))
    return out


def _acc(id_, criterion, value, target, verdict, detail="", why="", to_close=""):
    return {"id": id_, "criterion": criterion, "value": value, "target": target, "verdict": verdict,
            "detail": detail, "why": why, "to_close": to_close}


def _acc_switch_p99(result):
    sw = result["switch"]["set_mode_us"]
    p50, p99 = sw["p50_us"], sw["p99_us"]
    crit = f"Runtime.set_mode p99 ≤ {SWITCH_P99_US:g} µs"
    detail = (f"{result['switch'].get('set_mode_scope', '')}: p50 {_fmt(p50)} µs, p90 {_fmt(sw['p90_us'])} µs, "
              f"p99 {_fmt(p99)} µs over {sw['n']} calls; runtime impl {result.get('runtime', {}).get('impl', '?')}")
    off = result["switch"].get("set_mode_offgrid_us")
    if off and result["switch"].get("set_mode_scope") == "grid/baked modes":
        detail += (f"; off-grid λ (FiLM vector computed in set_mode): p50 {_fmt(off['p50_us'])} µs, "
                   f"p99 {_fmt(off['p99_us'])} µs")
    if p99 <= SWITCH_P99_US:
        return _acc("switch_p99", crit, p99, SWITCH_P99_US, PASS, detail)
    timer = result.get("timer", {}).get("p50_ns", 0)
    if p50 <= SWITCH_P99_US:
        why = (f"the median switch ({_fmt(p50)} µs) is inside the target; the tail is the host, not the call: "
               f"a single set_mode is preempted when other processes compete for the cores "
               f"({_load_note(result)}); timer floor {timer:.0f} ns")
        close = ("re-run on a quiet machine with --pin (and on Jetson with nvpmodel MAXN + jetson_clocks); "
                 "if the tail stays, give the control thread a real-time priority (chrt)")
    else:
        why = (f"set_mode itself takes {_fmt(p50)} µs at the median: it does work on the switch path "
               "(validation, FiLM vector lookup or allocation) instead of swapping precomputed state")
        close = "precompute per-mode state at load (path handle + FiLM vector) so set_mode only swaps references"
    return _acc("switch_p99", crit, p99, SWITCH_P99_US, MISS, detail, why, close)


def _acc_switch_naive(result):
    sw = result["switch"]
    crit = f"set_mode ≥ {NAIVE_RATIO:g}× cheaper than the naive switch (new session per change)"
    if not sw.get("naive"):
        return _acc("switch_vs_naive", crit, None, NAIVE_RATIO, NOT_MEASURED,
                    why="the naive baseline was skipped (--no-naive) or the backend has no open_naive",
                    to_close="run without --no-naive on a backend that provides open_naive")
    r50 = sw["naive_over_set_mode_p50"]
    r99 = sw["naive_over_set_mode_p99"]
    detail = (f"naive new-session switch p50 {_fmt(sw['naive']['open_ms']['p50_ms'])} ms vs set_mode p50 "
              f"{_fmt(sw['set_mode_us']['p50_us'])} µs: {_fmt(r50)}× (against set_mode p99: {_fmt(r99)}×); "
              f"with the first inference after it: naive {_fmt(sw['naive']['open_plus_first_infer_ms']['p50_ms'])} ms "
              f"vs {_fmt(sw['set_mode_plus_first_infer_ms']['p50_ms'])} ms "
              f"({_fmt(sw.get('naive_over_fast_first_infer_p50'))}×)")
    if r50 is not None and r50 >= NAIVE_RATIO:
        return _acc("switch_vs_naive", crit, r50, NAIVE_RATIO, PASS, detail)
    return _acc("switch_vs_naive", crit, r50, NAIVE_RATIO, MISS, detail,
                why="creating a session for this bundle's small graphs is cheap relative to set_mode here",
                to_close="make set_mode cheaper (see switch_p99) — the naive cost is a property of the backend")


def _ref_eager_rows(result, batch):
    return [r for r in result.get("eager", []) if r["batch"] == batch]


def _acc_eager(result):
    crit = (f"{result['config']['backend']} path ≥ {EAGER_RATIO:g}× faster than PyTorch eager of the conditional "
            "model at batch 1")
    if not result.get("eager"):
        return _acc("ort_vs_eager_b1", crit, None, EAGER_RATIO, NOT_MEASURED,
                    why="no --checkpoint was given, so the eager baseline did not run",
                    to_close="pass --checkpoint CKPT (the checkpoint the bundle was exported from)")
    rows = _ref_eager_rows(result, 1)
    if not rows:
        return _acc("ort_vs_eager_b1", crit, None, EAGER_RATIO, NOT_MEASURED,
                    why="batch 1 was not benchmarked", to_close="include 1 in --batch")
    ratios = [(r["width"], r["lam"], r["eager_over_runtime"], r.get("runtime_path")) for r in rows]
    worst = min(ratios, key=lambda t: t[2] if t[2] is not None else math.inf)
    detail = "; ".join(f"width {w:g} (λ={lam:g}, {p or '?'} path): eager/runtime {_fmt(x)}×" for w, lam, x, p in ratios)
    detail += f"; same thread count ({result['config']['threads']}) for both"
    if worst[2] is not None and worst[2] >= EAGER_RATIO:
        return _acc("ort_vs_eager_b1", crit, worst[2], EAGER_RATIO, PASS, detail)
    row = next(r for r in rows if r["width"] == worst[0])
    saved = row["p50_ms"] - (row.get("runtime_p50_ms") or 0.0)
    return _acc("ort_vs_eager_b1", crit, worst[2], EAGER_RATIO, MISS, detail,
                why=(f"at width {worst[0]:g} this model is compute-bound even at batch 1 ({_fmt(row['runtime_p50_ms'])} "
                     f"ms per image): what the exported graph saves over eager on the same "
                     f"{result['config']['threads']} thread(s) — BN folded into the convolutions, no Python "
                     f"dispatch, no FiLM generators or dual-BN routing per call — is {_fmt(saved)} ms of the eager "
                     f"{_fmt(row['p50_ms'])} ms; the {_fmt(row['runtime_p50_ms'])} ms left are convolution kernels "
                     "that both pay"),
                to_close="not closable by the runtime on this CPU: the remaining time is convolution kernels. It "
                "closes with faster kernels for the same graph (fp16/int8 via TensorRT on a GPU/Jetson, or an int8 "
                "ORT model); where per-call overhead matters (small models, batch 1) the target holds — see the "
                "digits model")


def _acc_width(result):
    crit = f"width 0.5 ≤ {WIDTH_RATIO:g}× the latency of width 1.0 at batch {WIDTH_RATIO_BATCH} (FLOPs ratio ≈ 0.25)"
    rows = result["latency"]
    widths = {float(w) for w in result["bundle"]["widths"]}
    if not any(_close(w, 0.5) for w in widths) or not any(_close(w, 1.0) for w in widths):
        return _acc("width_0.5_vs_1.0_b32", crit, None, WIDTH_RATIO, NOT_MEASURED,
                    why="the bundle lacks width 0.5 or 1.0", to_close="export with --widths 0.5 ... 1.0")
    if WIDTH_RATIO_BATCH not in result["config"]["batches"]:
        return _acc("width_0.5_vs_1.0_b32", crit, None, WIDTH_RATIO, NOT_MEASURED,
                    why=f"batch {WIDTH_RATIO_BATCH} was not benchmarked",
                    to_close=f"include {WIDTH_RATIO_BATCH} in --batch")
    pairs = []
    for r in rows:
        if r["batch"] == WIDTH_RATIO_BATCH and _close(r["width"], 0.5):
            full = _row(rows, r["lam"], 1.0, WIDTH_RATIO_BATCH)
            if full is not None and full["path"] == r["path"]:
                pairs.append((r["lam"], r["path"], r["p50_ms"] / full["p50_ms"], r["p50_ms"], full["p50_ms"]))
    if not pairs:
        return _acc("width_0.5_vs_1.0_b32", crit, None, WIDTH_RATIO, NOT_MEASURED,
                    why="no λ was measured at both widths 0.5 and 1.0 with the same path",
                    to_close="add modes like 1:0.5 1:1.0")
    value = median(p[2] for p in pairs)
    flops = result["bundle"].get("path_flops") or {}
    f_half, f_full = flops.get("a_w0.5"), flops.get("a_w1")
    flops_ratio = (f_half / f_full) if f_half and f_full else None
    detail = (f"median over {len(pairs)} λ of p50(0.5)/p50(1.0) = {_fmt(value)} "
              f"(e.g. λ={pairs[-1][0]:g}: {_fmt(pairs[-1][3])} ms vs {_fmt(pairs[-1][4])} ms); "
              f"FLOPs ratio from the manifest {_fmt(flops_ratio)}; model {result['bundle']['arch']} "
              f"{result['bundle']['input_shape']}")
    if value <= WIDTH_RATIO:
        return _acc("width_0.5_vs_1.0_b32", crit, value, WIDTH_RATIO, PASS, detail)
    b1 = _row(rows, pairs[-1][0], 1.0, 1)
    fixed = ""
    if b1 is not None:
        fixed = (f"; a batch-1 call at width 1.0 already takes {_fmt(b1['p50_ms'])} ms, i.e. "
                 f"{_fmt(100 * b1['p50_ms'] / pairs[-1][4])} % of the batch-{WIDTH_RATIO_BATCH} time is per-call cost "
                 "that does not shrink with width")
    return _acc("width_0.5_vs_1.0_b32", crit, value, WIDTH_RATIO, MISS, detail,
                why=("latency does not follow FLOPs on a model this small: per-operator overhead, memory traffic "
                     "and thin convolutions (few channels per thread) at width 0.5 keep the kernels far from peak"
                     + fixed),
                to_close="measure on a model where width matters (the benchmark's bigger-model run), a larger "
                "batch, or an accelerator; narrower widths only pay once convolutions are compute-bound")


def _acc_film_baked(result):
    rows = result.get("film_vs_baked") or []
    crit = "FiLM-as-input / baked latency ratio per width (baked pays off when > 1)"
    if not rows:
        return [_acc("film_over_baked", crit, None, 1.0, NOT_MEASURED,
                     why="the bundle has no baked path among the benchmarked modes",
                     to_close="export with --bake LAM ... and include those modes in --modes")]
    out = []
    for w in sorted({r["width"] for r in rows}):
        sub = [r for r in rows if _close(r["width"], w) and r["film_over_baked"] is not None]
        value = median(r["film_over_baked"] for r in sub)
        detail = ", ".join(f"b{r['batch']} λ={r['lam']:g}: {_fmt(r['film_over_baked'])}×" for r in sub)
        if value > 1.0:
            out.append(_acc(f"film_over_baked_w{w:g}", f"{crit}: width {w:g}", value, 1.0, PASS, detail))
        else:
            out.append(_acc(f"film_over_baked_w{w:g}", f"{crit}: width {w:g}", value, 1.0, MISS, detail,
                            why="feeding γ/β as inputs costs nothing measurable here: the extra Mul/Add per FiLM "
                            "site is small next to the convolutions, within this run's noise",
                            to_close="no action needed: keep these modes on the FiLM path (do not bake them); "
                            "re-check on the target device"))
    return out


def _acc_gpu(result):
    crit = "GPU: torch backend with CUDA graphs (--backend torch --device cuda)"
    dev = result["config"].get("device")
    if dev and str(dev).startswith("cuda"):
        rows = [r for r in result["latency"] if r["batch"] == 1]
        v = min((r["p50_ms"] for r in rows), default=None)
        return _acc("gpu_cuda_graphs", crit, v, None, PASS if v is not None else NOT_MEASURED,
                    f"measured on {result['device'].get('gpu', {}).get('name', 'GPU')}: fastest batch-1 p50 {_fmt(v)} ms")
    return _acc("gpu_cuda_graphs", crit, None, None, NOT_MEASURED,
                why="this run was on the CPU (no CUDA device here)",
                to_close="run `oat-edge bench BUNDLE --backend torch --device cuda` on a machine with a GPU")


# ------------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------------
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


def _series(rows, batch, select):
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
    series = [  # fixed colours, so a series looks the same in every chart
        ("runtime, FiLM path, BN_a (λ>0)", _series(lat, batch, lambda r: r["path"] == "film" and r["lam"] > 0), "o-",
         "tab:blue"),
        ("runtime, FiLM path, BN_c (λ=0)", _series(lat, batch, lambda r: r["path"] == "film" and r["lam"] == 0), "s-",
         "tab:orange"),
        ("runtime, baked path", _series(lat, batch, lambda r: r["path"] == "baked"), "D-", "tab:green"),
        ("PyTorch eager (conditional model)", _series(result.get("eager", []), batch, lambda r: True), "^--",
         "tab:red"),
    ]
    for label, s, style, color in series:
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
    pts = []
    for rec in calib.get("records", []) or []:
        r = _row(result["latency"], rec["lam"], rec["width"], batch)
        if r is None:
            continue
        ra = rec.get("ra") or {}
        attack = sorted(ra)[0] if ra else None
        pts.append({"lam": rec["lam"], "width": rec["width"], "p50_ms": r["p50_ms"], "sa": rec.get("sa"),
                    "ra": ra.get(attack) if attack else None, "attack": attack})
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
        for ax, key, label in ((axes[0], "sa", "standard accuracy (SA)"), (axes[1], "ra", f"robust accuracy (RA, {attack})")):
            for i, w in enumerate(widths):
                sub = [p for p in pts if _close(p["width"], w) and p[key] is not None]
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
            sub = sorted((r for r in rows if _close(r["width"], w)), key=lambda r: r["lam"])
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
    ax.axvline(SWITCH_P99_US, color="k", ls=":", lw=1)
    ax.set_title(f"mode-switch cost, batch {sw['batch']} ({result['config']['backend']})")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    path = out_dir / "switch_cost.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------
# Markdown and console
# ------------------------------------------------------------------------------------------------
def _table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def acceptance_table(acc: List[dict]) -> str:
    rows = []
    for a in acc:
        target = "—" if a["target"] is None else _fmt(a["target"])
        rows.append([a["criterion"], _fmt(a["value"]), target, f"**{a['verdict']}**", a["detail"] or ""])
    return _table(["figure", "measured", "target", "verdict", "detail"], rows)


def markdown(result: dict, title: Optional[str] = None, image_prefix: str = "", level: int = 1) -> str:
    """The report as markdown. ``image_prefix`` is prepended to the PNG links (for a report that
    lives in another folder than its images); ``level`` is the heading level of the title."""
    cfg, dev, b = result["config"], result["device"], result["bundle"]
    acc = result.get("acceptance") or acceptance(result)
    h1, h2, h3 = "#" * level, "#" * (level + 1), "#" * (level + 2)
    out = [f"{h1} {title or 'oat-edge bench: ' + b['arch']}", ""]
    out.append(f"Created {result['created']} in {result['wall_s']:.0f} s. Command: `{result.get('command') or '—'}`")
    out.append("")
    if result.get("note"):
        out += [f"> **Note.** {result['note']}", ""]
    note = _load_note(result)
    if note:
        out += [f"Machine load during the run: {note}. All figures below are medians across "
                f"{cfg['rounds']} interleaved rounds of the same run; compare ratios, not absolute times, "
                "across runs.", ""]
    clocks = dev.get("cpufreq", {})
    clock_txt = (str(clocks.get("all_cpus") or "per-CPU, see JSON") if clocks.get("readable")
                 else clocks.get("note", "not readable"))
    setup = [
        ["bundle", f"`{b['path']}` ({b['arch']}, input {b['input_shape']}, widths {b['widths']}, "
                   f"batch profile {b.get('batch_profile')}, {len(b['baked'])} baked, calibration: "
                   f"{'yes' if b['has_calibration'] else 'no'})"],
        ["backend / device key", f"{cfg['backend']} (asked: {cfg['backend_requested']}) / `{result['device_key']}`"],
        ["CPU", f"{dev.get('cpu_model')} — {dev.get('logical_cpus')} logical CPUs, affinity {dev.get('affinity')}"],
        ["threads", f"{cfg['threads']} for ONNX Runtime intra-op and torch; pinned CPUs: {cfg['pinned_cpus'] or 'no'}"],
        ["clocks", clock_txt],
        ["method", f"warm-up {cfg['warmup_s']} s per variant, {cfg['rounds']} rounds × {cfg['duration_s']} s per "
                   f"variant, rotated order; medians across rounds"],
        ["versions", ", ".join(f"{k} {v}" for k, v in result["versions"].items() if k != "onnxruntime_providers")],
    ]
    if dev.get("jetson"):
        setup.append(["Jetson", str({k: v for k, v in dev["jetson"].items() if k != "jetson_clocks"})])
    if dev.get("gpu"):
        setup.append(["GPU", str(dev["gpu"])])
    out += [f"{h2} Setup", "", _table(["", ""], setup), ""]

    out += [f"{h2} Acceptance figures", "", acceptance_table(acc), ""]
    misses = [a for a in acc if a["verdict"] != PASS]
    if misses:
        out += [f"{h3} Why a figure missed (or was not measured), and what would close it", ""]
        for a in misses:
            out.append(f"- **{a['criterion']}** — {a['verdict']}. Why: {a['why']}. To close: {a['to_close']}.")
        out.append("")

    out += [f"{h2} Latency per mode (Runtime.infer)", "",
            "p50/p90/p99 per call, medians across rounds; throughput = batch ÷ mean latency (one stream).", ""]
    rows = [[f"{r['lam']:g}", f"{r['width']:g}", r["batch"], r["path"], _fmt(r["p50_ms"]), _fmt(r["p90_ms"]),
             _fmt(r["p99_ms"]), _fmt(r["throughput_ips"]), r["n"]]
            for r in sorted(result["latency"], key=lambda r: (r["batch"], r["width"], r["lam"]))]
    out += [_table(["λ", "width", "batch", "path", "p50 ms", "p90 ms", "p99 ms", "images/s", "calls"], rows), ""]
    unstable = [r for r in result["latency"] + result.get("eager", [])
                if (r.get("round_spread") or 1.0) > UNSTABLE_SPREAD]
    if unstable:
        out += [f"**Disturbed measurements:** {len(unstable)} variant(s) had per-round medians that differ by more "
                f"than {UNSTABLE_SPREAD:g}× (worst {_fmt(max(r['round_spread'] for r in unstable))}×) — the host "
                "was busy; the medians across rounds damp this, but re-run on a quiet machine before quoting "
                "absolute times.", ""]
    for png in (result.get("outputs") or {}).get("plots", []):
        if Path(png).name.startswith("latency_vs_width"):
            out += [f"![{Path(png).stem}]({image_prefix}{Path(png).name})", ""]

    out += [f"{h2} Mode switch", ""]
    sw = result["switch"]
    rows = [[f"set_mode alone ({sw.get('set_mode_scope', '')})", f"{_fmt(sw['set_mode_us']['p50_us'])} µs",
             f"{_fmt(sw['set_mode_us']['p90_us'])} µs", f"{_fmt(sw['set_mode_us']['p99_us'])} µs"]]
    off = sw.get("set_mode_offgrid_us")
    if off and sw.get("set_mode_scope") == "grid/baked modes":
        rows.append(["set_mode alone (off-grid λ: FiLM vector computed)", f"{_fmt(off['p50_us'])} µs",
                     f"{_fmt(off['p90_us'])} µs", f"{_fmt(off['p99_us'])} µs"])
    for label, key in (("set_mode + first inference", "set_mode_plus_first_infer_ms"),
                       ("first inference after a switch", "first_infer_after_switch_ms"),
                       ("steady-state inference (same mode)", "steady_infer_ms")):
        s = sw[key]
        rows.append([label, f"{_fmt(s['p50_ms'])} ms", f"{_fmt(s['p90_ms'])} ms", f"{_fmt(s['p99_ms'])} ms"])
    if sw.get("naive"):
        for label, key in (("naive: new session", "open_ms"), ("naive: new session + first inference", "open_plus_first_infer_ms")):
            s = sw["naive"][key]
            rows.append([label, f"{_fmt(s['p50_ms'])} ms", f"{_fmt(s['p90_ms'])} ms", f"{_fmt(s['p99_ms'])} ms"])
    out += [f"Batch {sw['batch']}, cycling through {len(sw['cycle'])} modes (consecutive modes alternate width, "
            "so every switch changes the active path). First-inference overhead over steady state: "
            f"{_fmt(sw['first_infer_overhead_ms'])} ms.", "",
            _table(["", "p50", "p90", "p99"], rows), "", f"![switch cost]({image_prefix}switch_cost.png)", ""]

    if result.get("eager"):
        ei = result.get("eager_info") or {}
        out += [f"{h2} Baseline: PyTorch eager of the conditional model", "",
                f"`model(x, λ)` at the width under `torch.no_grad()` — FiLM generators and dual BN evaluated on "
                f"every call; numpy in and out like Runtime.infer; torch threads {ei.get('torch_threads')}; "
                f"checkpoint `{ei.get('checkpoint')}` ({'the one the bundle came from' if ei.get('matches_bundle') else 'NOT the exact checkpoint of the bundle: same architecture, latency comparable'}).", ""]
        rows = [[f"{r['lam']:g}", f"{r['width']:g}", r["batch"], _fmt(r["p50_ms"]), _fmt(r["p99_ms"]),
                 _fmt(r.get("runtime_p50_ms")), r.get("runtime_path") or "—", f"{_fmt(r.get('eager_over_runtime'))}×"]
                for r in sorted(result["eager"], key=lambda r: (r["batch"], r["width"]))]
        out += [_table(["λ", "width", "batch", "eager p50 ms", "eager p99 ms", "runtime p50 ms", "runtime path",
                        "eager ÷ runtime"], rows), ""]

    if result.get("film_vs_baked"):
        out += [f"{h2} FiLM-as-input path against baked path", "",
                "Same mode through `backend.infer_path` both ways: the generic path with γ/β fed as inputs, and "
                "the path with BN and FiLM folded into the convolutions for that one λ.", ""]
        rows = [[f"{r['lam']:g}", f"{r['width']:g}", r["batch"], _fmt(r["film_p50_ms"]), _fmt(r["baked_p50_ms"]),
                 f"{_fmt(r['film_over_baked'])}×"]
                for r in sorted(result["film_vs_baked"], key=lambda r: (r["batch"], r["width"], r["lam"]))]
        out += [_table(["λ", "width", "batch", "FiLM p50 ms", "baked p50 ms", "FiLM ÷ baked"], rows), ""]

    ld, mem = result["load"], result["memory"]
    out += [f"{h2} Load time and memory", ""]
    rows = [["Runtime construction (in process, median)", f"{_fmt(ld['construct_ms']['p50_ms'])} ms"],
            ["first construction in this process", f"{_fmt(ld['first_construct_s'] * 1e3)} ms"]]
    cs = ld.get("cold_start") or {}
    if "error" in cs:
        rows.append(["cold start (fresh process)", cs["error"]])
    elif cs:
        rows += [["cold start: import oat_edge.runtime", f"{_fmt(cs['import_s'] * 1e3)} ms"],
                 ["cold start: Runtime construction", f"{_fmt(cs['construct_s'] * 1e3)} ms"],
                 ["cold start: first inference per batch", ", ".join(f"b{k}: {_fmt(v)} ms" for k, v in cs['first_infer_ms'].items())],
                 ["runtime-only process peak RSS", f"{_fmt(cs.get('peak_rss_mb'))} MiB "
                  f"(torch imported: {cs.get('torch_imported')})"]]
    rows.append(["bench process peak RSS (also holds torch + eager model)", f"{_fmt(mem.get('bench_process_peak_rss_mb'))} MiB"])
    if mem.get("gpu_max_allocated_mb") is not None:
        rows.append(["GPU torch.cuda.max_memory_allocated", f"{_fmt(mem['gpu_max_allocated_mb'])} MiB"])
    else:
        rows.append(["GPU memory", "— (no GPU in this run)"])
    out += [_table(["", ""], rows), ""]

    out += [f"{h2} Trade-off", ""]
    if b["has_calibration"]:
        out += ["SA and RA from the bundle's calibration against measured latency, one point per (λ, width).", "",
                f"![trade-off]({image_prefix}tradeoff.png)", ""]
    else:
        out += ["**The bundle has no calibration** (export without `--calibrate`), so there is no SA/RA axis: "
                "the chart shows latency per mode only.", "", f"![latency per mode]({image_prefix}latency_modes.png)", ""]
    prof = (result.get("outputs") or {}).get("profile")
    if prof:
        out += [f"{h2} Latency profile", "",
                f"Written to `{prof['path']}`" + (" (inside the bundle; `Runtime.select(max_latency_ms=...)` reads it)."
                                                   if prof["in_bundle"] else f". Warning: {prof['warning']}"), ""]
    out += ["Method and caveats: docs/benchmarking.md.", ""]
    return "\n".join(out)


def write_markdown(result: dict, path, title: Optional[str] = None) -> Path:
    from oat_edge.fileio import atomic_write_text

    atomic_write_text(path, markdown(result, title))
    return Path(path)


def print_summary(result: dict) -> None:
    """A short console table: acceptance verdicts and the batch-1 latency per mode."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"oat-edge bench — {result['bundle']['arch']} on {result['device_key']}")
    for col in ("figure", "measured", "target", "verdict"):
        t.add_column(col)
    for a in result.get("acceptance") or acceptance(result):
        color = {"PASS": "green", "MISS": "red"}.get(a["verdict"], "yellow")
        t.add_row(a["criterion"], _fmt(a["value"]), "—" if a["target"] is None else _fmt(a["target"]),
                  f"[{color}]{a['verdict']}[/]")
    console.print(t)
    b0 = result["config"]["batches"][0]
    t2 = Table(title=f"latency, batch {b0} (ms)")
    for col in ("λ", "width", "path", "p50", "p99", "images/s"):
        t2.add_column(col)
    for r in sorted((r for r in result["latency"] if r["batch"] == b0), key=lambda r: (r["width"], r["lam"])):
        t2.add_row(f"{r['lam']:g}", f"{r['width']:g}", r["path"], _fmt(r["p50_ms"]), _fmt(r["p99_ms"]),
                   _fmt(r["throughput_ips"]))
    console.print(t2)
