"""The `oat-edge bench` report: markdown and console summary (the charts: ``plots``).

Everything here reads the results dict of ``oat_edge.bench.run_benchmark`` (the JSON file) and
nothing else, so a report can be re-drawn from a saved JSON. A results dict may carry
``"acceptance"`` — verdicts against targets, added by a project's own scripts (this repository's
``scripts/bench_acceptance.py``); the report then shows them, and otherwise leaves them out."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

from oat_edge.bench.plots import series
from oat_edge.bench.stats import UNSTABLE_SPREAD


def fmt(x: Optional[float], digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def load_note(result) -> str:
    dev = result.get("device", {})
    la, lb = dev.get("loadavg"), dev.get("loadavg_end")
    n = dev.get("logical_cpus")
    if not la:
        return ""
    return (f"load average {la[0]:.2f} at start, {lb[0]:.2f} at end on {n} logical CPUs"
            if lb else f"load average {la[0]:.2f} at start on {n} logical CPUs")


# ------------------------------------------------------------------------------------------------
# Markdown and console
# ------------------------------------------------------------------------------------------------
def table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def acceptance_table(acc: List[dict]) -> str:
    rows = []
    for a in acc:
        target = "—" if a["target"] is None else fmt(a["target"])
        rows.append([a["criterion"], fmt(a["value"]), target, f"**{a['verdict']}**", a["detail"] or ""])
    return table(["figure", "measured", "target", "verdict", "detail"], rows)


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
    out += [f"{h2} Setup", "", table(["", ""], setup), ""]

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
            + [r["batch"], r["path"], fmt(r["p50_ms"]), fmt(r["p90_ms"]), fmt(r["p99_ms"]), fmt(r["throughput_ips"]),
               r["n"]]
            for r in sorted(result["latency"], key=lambda r: (r["batch"], r["width"], r["lam"],
                                                               r.get("precision") or "fp32"))]
    out += [table(["λ", "width"] + (["precision"] if extra else []) + ["batch", "path", "p50 ms", "p90 ms", "p99 ms",
                                                                       "images/s", "calls"], rows), ""]
    if extra:
        out += [f"{h3} Precision: p50 ÷ fp32 p50 (median over λ)", ""]
        ratio_rows = []
        for b in result["config"]["batches"]:
            for w in sorted({r["width"] for r in result["latency"]}):
                base = series(result["latency"], b, lambda r, _w=w: (r.get("precision") or "fp32") == "fp32").get(w)
                cells = []
                for p in precs[1:]:
                    s = series(result["latency"], b, lambda r, _p=p: r.get("precision") == _p).get(w)
                    cells.append(fmt(s[0] / base[0]) if s and base else "—")
                ratio_rows.append([b, f"{w:g}", fmt(base[0]) if base else "—"] + cells)
        out += [table(["batch", "width", "fp32 p50 ms"] + [f"{p} ÷ fp32" for p in precs[1:]], ratio_rows), ""]
    unstable = [r for r in result["latency"] + result.get("eager", [])
                if (r.get("round_spread") or 1.0) > UNSTABLE_SPREAD]
    if unstable:
        out += [f"**Disturbed measurements:** {len(unstable)} variant(s) had per-round medians that differ by more "
                f"than {UNSTABLE_SPREAD:g}× (worst {fmt(max(r['round_spread'] for r in unstable))}×) — the host "
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
    rows = [[f"set_mode alone ({sw.get('set_mode_scope', '')})", f"{fmt(sw['set_mode_us']['p50_us'])} µs",
             f"{fmt(sw['set_mode_us']['p90_us'])} µs", f"{fmt(sw['set_mode_us']['p99_us'])} µs"]]
    off = sw.get("set_mode_offgrid_us")
    if off and sw.get("set_mode_scope") == "grid/baked modes":
        rows.append(["set_mode alone (off-grid λ: FiLM vector computed)", f"{fmt(off['p50_us'])} µs",
                     f"{fmt(off['p90_us'])} µs", f"{fmt(off['p99_us'])} µs"])
    for label, key in (("set_mode + first inference", "set_mode_plus_first_infer_ms"),
                       ("first inference after a switch", "first_infer_after_switch_ms"),
                       ("steady-state inference (same mode)", "steady_infer_ms")):
        s = sw[key]
        rows.append([label, f"{fmt(s['p50_ms'])} ms", f"{fmt(s['p90_ms'])} ms", f"{fmt(s['p99_ms'])} ms"])
    if sw.get("naive"):
        for label, key in (("naive: new session", "open_ms"), ("naive: new session + first inference", "open_plus_first_infer_ms")):
            s = sw["naive"][key]
            rows.append([label, f"{fmt(s['p50_ms'])} ms", f"{fmt(s['p90_ms'])} ms", f"{fmt(s['p99_ms'])} ms"])
    out += [f"Batch {sw['batch']}, cycling through {len(sw['cycle'])} modes (consecutive modes alternate width, "
            "so every switch changes the active path). First-inference overhead over steady state: "
            f"{fmt(sw['first_infer_overhead_ms'])} ms.", "",
            table(["", "p50", "p90", "p99"], rows), "", f"![switch cost]({image_prefix}switch_cost.png)", ""]

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
        rows = [[f"{r['lam']:g}", f"{r['width']:g}", r["batch"], fmt(r["p50_ms"]), fmt(r["p99_ms"]),
                 fmt(r.get("runtime_p50_ms")), r.get("runtime_path") or "—", f"{fmt(r.get('eager_over_runtime'))}×"]
                for r in sorted(result["eager"], key=lambda r: (r["batch"], r["width"]))]
        out += [table(["λ", "width", "batch", "eager p50 ms", "eager p99 ms", "runtime p50 ms", "runtime path",
                        "eager ÷ runtime"], rows), ""]

    return out


def _film_vs_baked(result: dict, h2: str, h3: str, image_prefix: str) -> List[str]:
    """FiLM-as-input against baked paths."""
    out: List[str] = []
    if result.get("film_vs_baked"):
        out += [f"{h2} FiLM-as-input path against baked path", "",
                "Same mode through `backend.infer_path` both ways: the generic path with γ/β fed as inputs, and "
                "the path with BN and FiLM folded into the convolutions for that one λ.", ""]
        rows = [[f"{r['lam']:g}", f"{r['width']:g}", r["batch"], fmt(r["film_p50_ms"]), fmt(r["baked_p50_ms"]),
                 f"{fmt(r['film_over_baked'])}×"]
                for r in sorted(result["film_vs_baked"], key=lambda r: (r["batch"], r["width"], r["lam"]))]
        out += [table(["λ", "width", "batch", "FiLM p50 ms", "baked p50 ms", "FiLM ÷ baked"], rows), ""]

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
    rows = [[f"{r['lam']:g}", f"{r['width']:g}", r["batch"], fmt(r["runtime_baked_p50_ms"]),
             fmt(r["exported_baked_p50_ms"]), f"{fmt(r['runtime_over_exported'])}×",
             f"{fmt(r['copy_over_exported'])}×" if r.get("copy_over_exported") is not None else "—"]
            for r in sorted(bk.get("held_vs_exported", []), key=lambda r: (r["batch"], r["width"], r["lam"]))]
    if rows:
        out += [table(["λ", "width", "batch", "baked at run time p50 ms", "baked export p50 ms", "ratio",
                        "control: 2nd session of the export ÷ export"], rows), "",
                "The control column times a second session of the same exported file: how far two sessions "
                "of one graph drift apart on this machine in this run, the noise floor of the ratio.", ""]
    rows = [[f"{r['lam']:.7g}", f"{r['width']:g}", r["batch"], fmt(r["p50_ms"]), fmt(r["p99_ms"])]
            for r in sorted(bk.get("held_runtime_infer", []), key=lambda r: (r["batch"], r["width"]))]
    if rows:
        out += ["`Runtime.infer` in an off-grid mode held until baked (cache lookup included):", "",
                table(["λ", "width", "batch", "p50 ms", "p99 ms"], rows), ""]
    rows = []
    tr = bk.get("transition_ms")
    if tr:
        rows.append(["set_mode → baked live (fresh off-grid λ)", f"{fmt(tr['p50_ms'])} ms", f"{fmt(tr['p99_ms'])} ms",
                     tr["n"]])
    for label, key in (("set_mode, grid modes, idle", "set_mode_idle_us"),
                       ("set_mode, grid modes, while a bake runs", "set_mode_during_bake_us")):
        v = bk.get(key)
        if v:
            rows.append([label, f"{fmt(v['p50_us'])} µs", f"{fmt(v['p99_us'])} µs", v["n"]])
    for r in bk.get("interference", []):
        d = r["during_bake"]
        rows.append([f"infer b{r['batch']} while a bake runs (quiet: p50 {fmt(r['quiet_p50_ms'])} ms, "
                     f"p99 {fmt(r['quiet_p99_ms'])} ms)", f"{fmt(d['p50_ms'])} ms ({fmt(r['p50_ratio'])}×)",
                     f"{fmt(d['p99_ms'])} ms ({fmt(r['p99_ratio'])}×)", d["n"]])
    if rows:
        out += [table(["figure", "p50", "p99", "n"], rows), ""]
    mem = bk.get("memory") or {}
    if mem.get("baked_rss_mb"):
        out += [f"RSS of a fresh process: bundle alone {fmt(mem['bundle_alone_rss_mb'])} MiB; with K baked modes "
                + ", ".join(f"K={k}: {fmt(v)} MiB" for k, v in mem["baked_rss_mb"].items()) + ".", ""]
    st = bk.get("stats") or {}
    if st:
        out += [f"Bake counters of the benchmark's runtime: {st.get('bakes')} bakes "
                f"(p50 {fmt(st.get('bake_ms_p50'))} ms each), {st.get('hits')} hits, {st.get('evictions')} evictions, "
                f"{st.get('bake_failures')} failures.", ""]
    return out


def _threads(result: dict, h2: str, h3: str, image_prefix: str) -> List[str]:
    """Thread counts per path and the roofline (``--tune-threads``)."""
    th = result.get("threads")
    if not th:
        return []
    cands = th["candidates"]
    peaks = {p["threads"]: p for p in th.get("sgemm_peak", [])}
    peak_txt = "; ".join(f"{t} thread(s): {fmt(p.get('best_gmacs'))} GMAC/s"
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
                     *[fmt(by_t.get(str(t))) for t in cands], r["best_threads"], f"{fmt(r['gain_over_default'])}×",
                     fmt(r.get("best_gmacs")),
                     f"{r['share_of_peak'] * 100:.1f} %" if r.get("share_of_peak") is not None else "—"])
    out += [table(["λ", "width", "batch", "path", *[f"p50 ms t={t}" for t in cands], "best t", "gain vs default",
                    "GMAC/s (best t)", "share of sgemm peak"], rows), ""]
    wr = th.get("width_ratio_tuned") or []
    if wr:
        out += ["Narrowest ÷ widest width, each at its best thread count:", "",
                table(["λ", "batch", "widths", "p50 ratio (tuned)", "MACs ratio"],
                       [[f"{r['lam']:g}", r["batch"], f"{r['narrow']:g} ÷ {r['wide']:g}", fmt(r["tuned_ratio"]),
                         fmt(r["macs_ratio"])] for r in wr]), ""]
    return out


def _load_memory(result: dict, h2: str, h3: str, image_prefix: str) -> List[str]:
    """Load time and memory."""
    out: List[str] = []
    ld, mem = result["load"], result["memory"]
    out += [f"{h2} Load time and memory", ""]
    rows = [["Runtime construction (in process, median)", f"{fmt(ld['construct_ms']['p50_ms'])} ms"],
            ["first construction in this process", f"{fmt(ld['first_construct_s'] * 1e3)} ms"]]
    cs = ld.get("cold_start") or {}
    if "error" in cs:
        rows.append(["cold start (fresh process)", cs["error"]])
    elif cs:
        rows += [["cold start: import oat_edge.runtime", f"{fmt(cs['import_s'] * 1e3)} ms"],
                 ["cold start: Runtime construction", f"{fmt(cs['construct_s'] * 1e3)} ms"],
                 ["cold start: first inference per batch", ", ".join(f"b{k}: {fmt(v)} ms" for k, v in cs['first_infer_ms'].items())],
                 ["runtime-only process peak RSS", f"{fmt(cs.get('peak_rss_mb'))} MiB "
                  f"(torch imported: {cs.get('torch_imported')})"]]
    rows.append(["bench process peak RSS (also holds torch + eager model)", f"{fmt(mem.get('bench_process_peak_rss_mb'))} MiB"])
    if mem.get("gpu_max_allocated_mb") is not None:
        rows.append(["GPU torch.cuda.max_memory_allocated", f"{fmt(mem['gpu_max_allocated_mb'])} MiB"])
    else:
        rows.append(["GPU memory", "— (no GPU in this run)"])
    out += [table(["", ""], rows), ""]

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
    note = load_note(result)
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
            t.add_row(a["criterion"], fmt(a["value"]), "—" if a["target"] is None else fmt(a["target"]),
                      f"[{color}]{a['verdict']}[/]")
        console.print(t)
    b0 = result["config"]["batches"][0]
    t2 = Table(title=f"latency, batch {b0} (ms)")
    for col in ("λ", "width", "path", "p50", "p99", "images/s"):
        t2.add_column(col)
    for r in sorted((r for r in result["latency"] if r["batch"] == b0), key=lambda r: (r["width"], r["lam"])):
        t2.add_row(f"{r['lam']:g}", f"{r['width']:g}", r["path"], fmt(r["p50_ms"]), fmt(r["p99_ms"]),
                   fmt(r["throughput_ips"]))
    console.print(t2)
