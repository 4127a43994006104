"""The `oat-edge bench` report: markdown, PNG charts, console summary.

Everything here reads the results dict of ``oat_edge.bench.run_benchmark`` (the JSON file) and
nothing else, so a report can be re-drawn from a saved JSON. A results dict may carry
``"acceptance"`` — verdicts against targets, added by a project's own scripts (this repository's
``benchmarks/acceptance.py``); the report then shows them, and otherwise leaves them out."""

from __future__ import annotations

import math
from pathlib import Path
from statistics import median
from typing import List, Optional

from oat_edge.bench.stats import UNSTABLE_SPREAD
from oat_edge.bench.stats import find_row as _row
from oat_edge.mode import same_width


def _fmt(x: Optional[float], digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def _load_note(result) -> str:
    dev = result.get("device", {})
    la, lb = dev.get("loadavg"), dev.get("loadavg_end")
    n = dev.get("logical_cpus")
    if not la:
        return ""
    return (f"load average {la[0]:.2f} at start, {lb[0]:.2f} at end on {n} logical CPUs"
            if lb else f"load average {la[0]:.2f} at start on {n} logical CPUs")


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
    fp32 = [r for r in lat if (r.get("precision") or "fp32") == "fp32"]
    series = [  # fixed colours, so a series looks the same in every chart
        ("runtime, FiLM path, BN_a (λ>0)", _series(fp32, batch, lambda r: r["path"] == "film" and r["lam"] > 0), "o-",
         "tab:blue"),
        ("runtime, FiLM path, BN_c (λ=0)", _series(fp32, batch, lambda r: r["path"] == "film" and r["lam"] == 0), "s-",
         "tab:orange"),
        ("runtime, baked path", _series(fp32, batch, lambda r: r["path"] == "baked"), "D-", "tab:green"),
        ("PyTorch eager (conditional model)", _series(result.get("eager", []), batch, lambda r: True), "^--",
         "tab:red"),
        # reduced precision: every path of that precision, median over λ
        ("runtime, fp16 (median over λ)", _series(lat, batch, lambda r: r.get("precision") == "fp16"), "v:",
         "tab:purple"),
        ("runtime, int8 (median over λ)", _series(lat, batch, lambda r: r.get("precision") == "int8"), "P:",
         "tab:brown"),
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
    metric = calib.get("robust_metric")
    pts = []
    for rec in calib.get("records", []) or []:
        precision = rec.get("precision") or "fp32"
        r = _row(result["latency"], rec["lam"], rec["width"], batch, precision=precision)
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


def _setup(result: dict, h2: str, h3: str, image_prefix: str) -> List[str]:
    """The run's setup table."""
    out: List[str] = []
    cfg, dev, b = result["config"], result["device"], result["bundle"]
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

    return out


def _acceptance(result: dict, h2: str, h3: str, image_prefix: str) -> List[str]:
    """Verdicts, when the results carry them (added by a project's own scripts)."""
    out: List[str] = []
    acc = result.get("acceptance")
    if acc:
        out += [f"{h2} Acceptance figures", "", acceptance_table(acc), ""]
    misses = [a for a in acc or [] if a["verdict"] not in ("PASS", "INFO")]
    if misses:
        out += [f"{h3} Why a figure missed (or was not measured), and what would close it", ""]
        for a in misses:
            out.append(f"- **{a['criterion']}** — {a['verdict']}. Why: {a['why']}. To close: {a['to_close']}.")
        out.append("")

    return out


def _latency(result: dict, h2: str, h3: str, image_prefix: str) -> List[str]:
    """Latency per mode and the latency-vs-width charts."""
    out: List[str] = []
    out += [f"{h2} Latency per mode (Runtime.infer)", "",
            "p50/p90/p99 per call, medians across rounds; throughput = batch ÷ mean latency (one stream).", ""]
    precs = sorted({r.get("precision") or "fp32" for r in result["latency"]}, key=lambda p: ("fp32", "fp16", "int8").index(p))
    extra = len(precs) > 1  # a precision column only for bundles that have more than fp32
    rows = [[f"{r['lam']:g}", f"{r['width']:g}"] + ([r.get("precision") or "fp32"] if extra else [])
            + [r["batch"], r["path"], _fmt(r["p50_ms"]), _fmt(r["p90_ms"]), _fmt(r["p99_ms"]), _fmt(r["throughput_ips"]),
               r["n"]]
            for r in sorted(result["latency"], key=lambda r: (r["batch"], r["width"], r["lam"],
                                                               r.get("precision") or "fp32"))]
    out += [_table(["λ", "width"] + (["precision"] if extra else []) + ["batch", "path", "p50 ms", "p90 ms", "p99 ms",
                                                                       "images/s", "calls"], rows), ""]
    if extra:
        out += [f"{h3} Precision: p50 ÷ fp32 p50 (median over λ)", ""]
        ratio_rows = []
        for b in result["config"]["batches"]:
            for w in sorted({r["width"] for r in result["latency"]}):
                base = _series(result["latency"], b, lambda r, _w=w: (r.get("precision") or "fp32") == "fp32").get(w)
                cells = []
                for p in precs[1:]:
                    s = _series(result["latency"], b, lambda r, _p=p: r.get("precision") == _p).get(w)
                    cells.append(_fmt(s[0] / base[0]) if s and base else "—")
                ratio_rows.append([b, f"{w:g}", _fmt(base[0]) if base else "—"] + cells)
        out += [_table(["batch", "width", "fp32 p50 ms"] + [f"{p} ÷ fp32" for p in precs[1:]], ratio_rows), ""]
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

    return out


def _switch(result: dict, h2: str, h3: str, image_prefix: str) -> List[str]:
    """The mode-switch cost."""
    out: List[str] = []
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

    return out


def _eager(result: dict, h2: str, h3: str, image_prefix: str) -> List[str]:
    """The PyTorch-eager baseline."""
    out: List[str] = []
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

    return out


def _film_vs_baked(result: dict, h2: str, h3: str, image_prefix: str) -> List[str]:
    """FiLM-as-input against baked paths."""
    out: List[str] = []
    if result.get("film_vs_baked"):
        out += [f"{h2} FiLM-as-input path against baked path", "",
                "Same mode through `backend.infer_path` both ways: the generic path with γ/β fed as inputs, and "
                "the path with BN and FiLM folded into the convolutions for that one λ.", ""]
        rows = [[f"{r['lam']:g}", f"{r['width']:g}", r["batch"], _fmt(r["film_p50_ms"]), _fmt(r["baked_p50_ms"]),
                 f"{_fmt(r['film_over_baked'])}×"]
                for r in sorted(result["film_vs_baked"], key=lambda r: (r["batch"], r["width"], r["lam"]))]
        out += [_table(["λ", "width", "batch", "FiLM p50 ms", "baked p50 ms", "FiLM ÷ baked"], rows), ""]

    return out


def _baking(result: dict, h2: str, h3: str, image_prefix: str) -> List[str]:
    """Background baking (``--bake``)."""
    bk = result.get("baking")
    if not bk:
        return []
    out = [f"{h2} Background baking", "",
           "A second Runtime with `bake=True` in the same rounds. *Held*: a mode's BN path folded at run time "
           "(numpy + onnx) against the bundle's baked export of the same mode, both as the bare session call."
           + (f" Bake cache: {bk['config']['capacity']} modes, {bk['config']['memory_mb']:g} MB (room for every mode "
              "the blocks hold, so switches to grid modes are cache hits)." if bk.get("config") else ""), ""]
    rows = [[f"{r['lam']:g}", f"{r['width']:g}", r["batch"], _fmt(r["runtime_baked_p50_ms"]),
             _fmt(r["exported_baked_p50_ms"]), f"{_fmt(r['runtime_over_exported'])}×",
             f"{_fmt(r['copy_over_exported'])}×" if r.get("copy_over_exported") is not None else "—"]
            for r in sorted(bk.get("held_vs_exported", []), key=lambda r: (r["batch"], r["width"], r["lam"]))]
    if rows:
        out += [_table(["λ", "width", "batch", "baked at run time p50 ms", "baked export p50 ms", "ratio",
                        "control: 2nd session of the export ÷ export"], rows), "",
                "The control column times a second session of the same exported file: how far two sessions "
                "of one graph drift apart on this machine in this run, the noise floor of the ratio.", ""]
    rows = [[f"{r['lam']:.7g}", f"{r['width']:g}", r["batch"], _fmt(r["p50_ms"]), _fmt(r["p99_ms"])]
            for r in sorted(bk.get("held_runtime_infer", []), key=lambda r: (r["batch"], r["width"]))]
    if rows:
        out += ["`Runtime.infer` in an off-grid mode held until baked (cache lookup included):", "",
                _table(["λ", "width", "batch", "p50 ms", "p99 ms"], rows), ""]
    rows = []
    tr = bk.get("transition_ms")
    if tr:
        rows.append(["set_mode → baked live (fresh off-grid λ)", f"{_fmt(tr['p50_ms'])} ms", f"{_fmt(tr['p99_ms'])} ms",
                     tr["n"]])
    for label, key in (("set_mode, grid modes, idle", "set_mode_idle_us"),
                       ("set_mode, grid modes, while a bake runs", "set_mode_during_bake_us")):
        v = bk.get(key)
        if v:
            rows.append([label, f"{_fmt(v['p50_us'])} µs", f"{_fmt(v['p99_us'])} µs", v["n"]])
    for r in bk.get("interference", []):
        d = r["during_bake"]
        rows.append([f"infer b{r['batch']} while a bake runs (quiet: p50 {_fmt(r['quiet_p50_ms'])} ms, "
                     f"p99 {_fmt(r['quiet_p99_ms'])} ms)", f"{_fmt(d['p50_ms'])} ms ({_fmt(r['p50_ratio'])}×)",
                     f"{_fmt(d['p99_ms'])} ms ({_fmt(r['p99_ratio'])}×)", d["n"]])
    if rows:
        out += [_table(["figure", "p50", "p99", "n"], rows), ""]
    mem = bk.get("memory") or {}
    if mem.get("baked_rss_mb"):
        out += [f"RSS of a fresh process: bundle alone {_fmt(mem['bundle_alone_rss_mb'])} MiB; with K baked modes "
                + ", ".join(f"K={k}: {_fmt(v)} MiB" for k, v in mem["baked_rss_mb"].items()) + ".", ""]
    st = bk.get("stats") or {}
    if st:
        out += [f"Bake counters of the benchmark's runtime: {st.get('bakes')} bakes "
                f"(p50 {_fmt(st.get('bake_ms_p50'))} ms each), {st.get('hits')} hits, {st.get('evictions')} evictions, "
                f"{st.get('bake_failures')} failures.", ""]
    return out


def _threads(result: dict, h2: str, h3: str, image_prefix: str) -> List[str]:
    """Thread counts per path and the roofline (``--tune-threads``)."""
    th = result.get("threads")
    if not th:
        return []
    cands = th["candidates"]
    peaks = {p["threads"]: p for p in th.get("sgemm_peak", [])}
    peak_txt = "; ".join(f"{t} thread(s): {_fmt(p.get('best_gmacs'))} GMAC/s"
                         + (f", kernel {p['kernel']}" if p.get("kernel") else "") if "best_gmacs" in p else
                         f"{t} thread(s): {p.get('error')}" for t, p in sorted(peaks.items()))
    out = [f"{h2} Thread count per path and the roofline", "",
           f"Every mode at each intra-op thread count {cands} in the same rounds (the run's own count: "
           f"{th['default_threads']}). GMAC/s = the path's MACs per image (manifest) × batch ÷ p50. Peak: numpy's "
           f"BLAS sgemm {next(iter(peaks.values()), {}).get('n', 'n')}³ fp32 in a fresh process, best of its repetitions ({peak_txt}). "
           "`Runtime(threads=\"tuned\")` opens each path with its best count (latency profile `path_threads`).", ""]
    rows = []
    for r in th["paths"]:
        by_t = r["p50_ms_by_threads"]
        rows.append([f"{r['lam']:g}", f"{r['width']:g}", r["batch"], r["path_id"],
                     *[_fmt(by_t.get(str(t))) for t in cands], r["best_threads"], f"{_fmt(r['gain_over_default'])}×",
                     _fmt(r.get("best_gmacs")),
                     f"{r['share_of_peak'] * 100:.1f} %" if r.get("share_of_peak") is not None else "—"])
    out += [_table(["λ", "width", "batch", "path", *[f"p50 ms t={t}" for t in cands], "best t", "gain vs default",
                    "GMAC/s (best t)", "share of sgemm peak"], rows), ""]
    wr = th.get("width_ratio_tuned") or []
    if wr:
        out += ["Narrowest ÷ widest width, each at its best thread count:", "",
                _table(["λ", "batch", "widths", "p50 ratio (tuned)", "MACs ratio"],
                       [[f"{r['lam']:g}", r["batch"], f"{r['narrow']:g} ÷ {r['wide']:g}", _fmt(r["tuned_ratio"]),
                         _fmt(r["macs_ratio"])] for r in wr]), ""]
    return out


def _load_memory(result: dict, h2: str, h3: str, image_prefix: str) -> List[str]:
    """Load time and memory."""
    out: List[str] = []
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

    return out


def _tradeoff(result: dict, h2: str, h3: str, image_prefix: str) -> List[str]:
    """The trade-off chart and where the latency profile went."""
    out: List[str] = []
    b = result["bundle"]
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
    return out

def markdown(result: dict, title: Optional[str] = None, image_prefix: str = "", level: int = 1) -> str:
    """The report as markdown. ``image_prefix`` is prepended to the PNG links (for a report that
    lives in another folder than its images); ``level`` is the heading level of the title."""
    cfg, b = result["config"], result["bundle"]
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
    for section in (_setup, _acceptance, _latency, _switch, _eager, _film_vs_baked, _baking, _threads, _load_memory,
                    _tradeoff):
        out += section(result, h2, h3, image_prefix)
    out += ["Method and caveats: docs/benchmarking.md.", ""]
    return "\n".join(out)

def write_markdown(result: dict, path, title: Optional[str] = None) -> Path:
    from oat_edge.fileio import atomic_write_text

    atomic_write_text(path, markdown(result, title))
    return Path(path)


def print_summary(result: dict) -> None:
    """A short console table: acceptance verdicts (when the results carry them) and the latency
    per mode at the first batch."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if result.get("acceptance"):
        t = Table(title=f"oat-edge bench — {result['bundle']['arch']} on {result['device_key']}")
        for col in ("figure", "measured", "target", "verdict"):
            t.add_column(col)
        for a in result["acceptance"]:
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
