"""Acceptance verdicts of this project's runtime benchmarks (the on-device latency targets):
repository tooling, not shipped with oat-edge. ``acceptance(result)`` reads
a results dict of ``oat_edge.bench.run.run_benchmark``; ``bench_suite.py`` stores the verdicts in
the results as ``"acceptance"``, where the report (``oat_edge.bench.report``) shows them."""

from __future__ import annotations

import math
from statistics import median
from typing import List

from oat_edge.bench.report import fmt, load_note
from oat_edge.bench.stats import find_row as _row
from oat_edge.mode import same_width

SWITCH_P99_US = 10.0
NAIVE_RATIO = 1000.0
EAGER_RATIO = 2.0
WIDTH_RATIO = 0.35
WIDTH_RATIO_BATCH = 32

PASS, MISS, NOT_MEASURED, INFO = "PASS", "MISS", "NOT MEASURED", "INFO"


def acceptance(result: dict) -> List[dict]:
    """One record per acceptance figure: {id, criterion, value, target, verdict, detail, why,
    to_close}. ``why``/``to_close`` are filled for every MISS and NOT MEASURED."""
    out = [_acc_switch_p99(result), _acc_switch_naive(result), _acc_eager(result), _acc_width(result)]
    if result.get("threads"):
        out.append(_acc_width_tuned(result))
    out += _acc_film_baked(result)
    out += _acc_baking(result)
    out.append(_acc_gpu(result))
    return out


def _acc(id_, criterion, value, target, verdict, detail="", why="", to_close=""):
    return {"id": id_, "criterion": criterion, "value": value, "target": target, "verdict": verdict,
            "detail": detail, "why": why, "to_close": to_close}


def _acc_switch_p99(result):
    sw = result["switch"]["set_mode_us"]
    p50, p99 = sw["p50_us"], sw["p99_us"]
    crit = f"Runtime.set_mode p99 ≤ {SWITCH_P99_US:g} µs"
    detail = (f"{result['switch'].get('set_mode_scope', '')}: p50 {fmt(p50)} µs, p90 {fmt(sw['p90_us'])} µs, "
              f"p99 {fmt(p99)} µs over {sw['n']} calls; runtime impl {result.get('runtime', {}).get('impl', '?')}")
    off = result["switch"].get("set_mode_offgrid_us")
    if off and result["switch"].get("set_mode_scope") == "grid/baked modes":
        detail += (f"; off-grid λ (FiLM vector computed in set_mode): p50 {fmt(off['p50_us'])} µs, "
                   f"p99 {fmt(off['p99_us'])} µs")
    if p99 <= SWITCH_P99_US:
        return _acc("switch_p99", crit, p99, SWITCH_P99_US, PASS, detail)
    timer = result.get("timer", {}).get("p50_ns", 0)
    if p50 <= SWITCH_P99_US:
        why = (f"the median switch ({fmt(p50)} µs) is inside the target; the tail is the host, not the call: "
               f"a single set_mode is preempted when other processes compete for the cores "
               f"({load_note(result)}); timer floor {timer:.0f} ns")
        close = ("re-run on a quiet machine with --pin (and on Jetson with nvpmodel MAXN + jetson_clocks); "
                 "if the tail stays, give the control thread a real-time priority (chrt)")
    else:
        why = (f"set_mode itself takes {fmt(p50)} µs at the median: it does work on the switch path "
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
    detail = (f"naive new-session switch p50 {fmt(sw['naive']['open_ms']['p50_ms'])} ms vs set_mode p50 "
              f"{fmt(sw['set_mode_us']['p50_us'])} µs: {fmt(r50)}× (against set_mode p99: {fmt(r99)}×); "
              f"with the first inference after it: naive {fmt(sw['naive']['open_plus_first_infer_ms']['p50_ms'])} ms "
              f"vs {fmt(sw['set_mode_plus_first_infer_ms']['p50_ms'])} ms "
              f"({fmt(sw.get('naive_over_fast_first_infer_p50'))}×)")
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
    detail = "; ".join(f"width {w:g} (λ={lam:g}, {p or '?'} path): eager/runtime {fmt(x)}×" for w, lam, x, p in ratios)
    detail += f"; same thread count ({result['config']['threads']}) for both"
    if worst[2] is not None and worst[2] >= EAGER_RATIO:
        return _acc("ort_vs_eager_b1", crit, worst[2], EAGER_RATIO, PASS, detail)
    row = next(r for r in rows if r["width"] == worst[0])
    saved = row["p50_ms"] - (row.get("runtime_p50_ms") or 0.0)
    return _acc("ort_vs_eager_b1", crit, worst[2], EAGER_RATIO, MISS, detail,
                why=(f"at width {worst[0]:g} this model is compute-bound even at batch 1 ({fmt(row['runtime_p50_ms'])} "
                     f"ms per image): what the exported graph saves over eager on the same "
                     f"{result['config']['threads']} thread(s) — BN folded into the convolutions, no Python "
                     f"dispatch, no FiLM generators or dual-BN routing per call — is {fmt(saved)} ms of the eager "
                     f"{fmt(row['p50_ms'])} ms; the {fmt(row['runtime_p50_ms'])} ms left are convolution kernels "
                     "that both pay"),
                to_close="not closable by the runtime on this CPU: the remaining time is convolution kernels. It "
                "closes with faster kernels for the same graph (fp16/int8 via TensorRT on a GPU/Jetson, or an int8 "
                "ORT model); where per-call overhead matters (small models, batch 1) the target holds — see the "
                "digits model")


def _acc_width(result):
    crit = f"width 0.5 ≤ {WIDTH_RATIO:g}× the latency of width 1.0 at batch {WIDTH_RATIO_BATCH} (FLOPs ratio ≈ 0.25)"
    rows = result["latency"]
    widths = {float(w) for w in result["bundle"]["widths"]}
    if not any(same_width(w, 0.5) for w in widths) or not any(same_width(w, 1.0) for w in widths):
        return _acc("width_0.5_vs_1.0_b32", crit, None, WIDTH_RATIO, NOT_MEASURED,
                    why="the bundle lacks width 0.5 or 1.0", to_close="export with --widths 0.5 ... 1.0")
    if WIDTH_RATIO_BATCH not in result["config"]["batches"]:
        return _acc("width_0.5_vs_1.0_b32", crit, None, WIDTH_RATIO, NOT_MEASURED,
                    why=f"batch {WIDTH_RATIO_BATCH} was not benchmarked",
                    to_close=f"include {WIDTH_RATIO_BATCH} in --batch")
    pairs = []
    for r in rows:
        if r["batch"] == WIDTH_RATIO_BATCH and same_width(r["width"], 0.5):
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
    detail = (f"median over {len(pairs)} λ of p50(0.5)/p50(1.0) = {fmt(value)} "
              f"(e.g. λ={pairs[-1][0]:g}: {fmt(pairs[-1][3])} ms vs {fmt(pairs[-1][4])} ms); "
              f"FLOPs ratio from the manifest {fmt(flops_ratio)}; model {result['bundle']['arch']} "
              f"{result['bundle']['input_shape']}")
    if value <= WIDTH_RATIO:
        return _acc("width_0.5_vs_1.0_b32", crit, value, WIDTH_RATIO, PASS, detail)
    b1 = _row(rows, pairs[-1][0], 1.0, 1)
    fixed = ""
    if b1 is not None:
        fixed = (f"; a batch-1 call at width 1.0 already takes {fmt(b1['p50_ms'])} ms, i.e. "
                 f"{fmt(100 * b1['p50_ms'] / pairs[-1][4])} % of the batch-{WIDTH_RATIO_BATCH} time is per-call cost "
                 "that does not shrink with width")
    return _acc("width_0.5_vs_1.0_b32", crit, value, WIDTH_RATIO, MISS, detail,
                why=("latency does not follow FLOPs on a model this small: per-operator overhead, memory traffic "
                     "and thin convolutions (few channels per thread) at width 0.5 keep the kernels far from peak"
                     + fixed),
                to_close="measure on a model where width matters (the benchmark's bigger-model run), a larger "
                "batch, or an accelerator; narrower widths only pay once convolutions are compute-bound")


def _acc_width_tuned(result):
    """The width figure again with each path at its best thread count (--tune-threads)."""
    crit = (f"width 0.5 ≤ {WIDTH_RATIO:g}× the latency of width 1.0 at batch {WIDTH_RATIO_BATCH}, each path at its "
            "best thread count")
    th = result["threads"]
    pairs = [w for w in th.get("width_ratio_tuned") or [] if w["batch"] == WIDTH_RATIO_BATCH
             and same_width(w["narrow"], 0.5) and same_width(w["wide"], 1.0) and w["tuned_ratio"] is not None]
    if not pairs:
        return _acc("width_0.5_vs_1.0_b32_tuned", crit, None, WIDTH_RATIO, NOT_MEASURED,
                    why=f"no λ measured at widths 0.5 and 1.0 at batch {WIDTH_RATIO_BATCH}",
                    to_close=f"include batch {WIDTH_RATIO_BATCH} and modes at both widths")
    value = median(w["tuned_ratio"] for w in pairs)
    best = {(r["lam"], r["width"]): r for r in th["paths"] if r["batch"] == WIDTH_RATIO_BATCH}
    detail = "; ".join(
        f"λ={w['lam']:g}: {fmt(w['tuned_ratio'])} (t={best[(w['lam'], w['narrow'])]['best_threads']} vs "
        f"t={best[(w['lam'], w['wide'])]['best_threads']}; {fmt(best[(w['lam'], w['narrow'])].get('share_of_peak'))} vs "
        f"{fmt(best[(w['lam'], w['wide'])].get('share_of_peak'))} of the sgemm peak)" for w in pairs)
    detail += f"; MACs ratio {fmt(pairs[0]['macs_ratio'])}"
    if value <= WIDTH_RATIO:
        return _acc("width_0.5_vs_1.0_b32_tuned", crit, value, WIDTH_RATIO, PASS, detail)
    return _acc("width_0.5_vs_1.0_b32_tuned", crit, value, WIDTH_RATIO, MISS, detail,
                why="the narrow path reaches a smaller share of the CPU's peak than the wide one (thin convolutions "
                "and per-operator overhead do not shrink with width), so its latency falls less than its MACs",
                to_close="a model whose narrow convolutions are still compute-bound (ResNet-34 in "
                "benchmarks/results/bake_bench_resnet34.md), or "
                "fusing the small model's operators (a compiled engine)")


# FiLM-as-input ÷ baked at batch 1: what the transition to a mode costs until its bake
# lands. 1.3 on the small demo model (per-site overhead is large next to its convolutions), 1.05
# where convolutions dominate.
FILM_TARGET = {"resnet34": 1.05}
FILM_TARGET_DEFAULT = 1.3
FILM_BATCH = 1
HELD_TARGET = 1.05  # a held mode once baked ÷ the baked export of that mode, p50
BAKE_SWITCH_P99_US = 10.0


def _acc_film_baked(result):
    rows = [r for r in result.get("film_vs_baked") or [] if r["batch"] == FILM_BATCH]
    target = FILM_TARGET.get(result.get("bundle", {}).get("arch"), FILM_TARGET_DEFAULT)
    crit = f"FiLM-as-input ÷ baked p50 at batch {FILM_BATCH} (the transition path) ≤ {target:g}×"
    if not rows:
        return [_acc("film_over_baked", crit, None, target, NOT_MEASURED,
                     why="the bundle has no baked path among the benchmarked modes at batch 1",
                     to_close="export with --bake-lambdas LAM ... and include those modes and batch 1")]
    out = []
    for w in sorted({r["width"] for r in rows}):
        sub = [r for r in rows if same_width(r["width"], w) and r["film_over_baked"] is not None]
        value = median(r["film_over_baked"] for r in sub)
        detail = ", ".join(f"λ={r['lam']:g}: {fmt(r['film_over_baked'])}× ({fmt(r['film_p50_ms'])} vs "
                           f"{fmt(r['baked_p50_ms'])} ms)" for r in sub)
        if value <= target:
            out.append(_acc(f"film_over_baked_w{w:g}", f"{crit}: width {w:g}", value, target, PASS, detail))
        else:
            out.append(_acc(f"film_over_baked_w{w:g}", f"{crit}: width {w:g}", value, target, MISS, detail,
                            why="each FiLM site adds an elementwise Mul and Add over the activation after its "
                            "convolution (ORT cannot fuse a Mul by a graph input into the Conv); on a model this "
                            "small those passes are a large share of a sub-0.1 ms inference",
                            to_close="background baking (Runtime(bake=True)) serves a held mode from a folded graph "
                            "within one bake; the FiLM path then only covers the transition"))
    return out


def _load_text(result) -> str:
    """The run's own load, as measured (never a figure from another run)."""
    dev = result.get("device") or {}
    la, lb, n = dev.get("loadavg"), dev.get("loadavg_end"), dev.get("logical_cpus", "?")
    if not la:
        return f"{n} logical CPUs, load not recorded"
    end = f" to {lb[0]:.2f}" if lb else ""
    return f"load average {la[0]:.2f}{end} on {n} logical CPUs during this run"


def _acc_baking(result):
    bk = result.get("baking")
    if not bk:
        return []
    out = []
    held = bk.get("held_vs_exported") or []
    for b in sorted({r["batch"] for r in held}):
        sub = [r for r in held if r["batch"] == b and r["runtime_over_exported"] is not None]
        value = max(r["runtime_over_exported"] for r in sub)
        detail = ", ".join(f"λ={r['lam']:g} w={r['width']:g}: {fmt(r['runtime_over_exported'])}× "
                           f"({fmt(r['runtime_baked_p50_ms'])} vs {fmt(r['exported_baked_p50_ms'])} ms)" for r in sub)
        crit = f"held mode baked at run time ÷ baked export of that mode, p50, batch {b} (worst mode) ≤ {HELD_TARGET:g}×"
        control = [r["copy_over_exported"] for r in sub if r.get("copy_over_exported") is not None]
        if control:
            detail += (f"; control, a 2nd session of the export ÷ the export: {fmt(min(control))}–"
                       f"{fmt(max(control))}×")
        if value <= HELD_TARGET:
            out.append(_acc(f"held_over_exported_b{b}", crit, value, HELD_TARGET, PASS, detail))
        else:
            out.append(_acc(f"held_over_exported_b{b}", crit, value, HELD_TARGET, MISS, detail,
                            why="the run-time bake is the same graph as the export (tests/test_bake.py checks the op "
                            "list), timed in the same block in rotating chunks; compare the gap with the control's "
                            "range: a gap inside it is the machine, one outside it is a real difference",
                            to_close="re-run with more rounds on a quiet machine; if the gap stays outside the "
                            "control's range, compare the two graphs' optimised forms (optimized_model_filepath)"))
    sw = bk.get("set_mode_during_bake_us")
    if sw:
        crit = f"set_mode p99 for grid modes while a bake runs ≤ {BAKE_SWITCH_P99_US:g} µs"
        idle = bk.get("set_mode_idle_us") or {}
        detail = (f"p50 {fmt(sw['p50_us'])} µs, p99 {fmt(sw['p99_us'])} µs over {sw['n']} calls "
                  f"(idle: p50 {fmt(idle.get('p50_us'))} µs, p99 {fmt(idle.get('p99_us'))} µs)")
        if sw["p99_us"] <= BAKE_SWITCH_P99_US:
            out.append(_acc("set_mode_during_bake_p99", crit, sw["p99_us"], BAKE_SWITCH_P99_US, PASS, detail))
        else:
            out.append(_acc("set_mode_during_bake_p99", crit, sw["p99_us"], BAKE_SWITCH_P99_US, MISS, detail,
                            why=("set_mode only puts a request on the bake worker's queue, so its tail follows CPU "
                                 f"contention: {_load_text(result)}, and the bake is one more busy thread (p99 "
                                 f"{fmt(sw['p99_us'])} µs while baking, {fmt(idle.get('p99_us'))} µs idle in this run)"),
                            to_close="give the control thread its own core (affinity, SCHED_FIFO) and the bake "
                            "worker another; re-measure on a quiet device"))
    tr = bk.get("transition_ms")
    if tr:
        out.append(_acc("transition_p50", "set_mode → baked live, p50 (ms; reported, no target)", tr["p50_ms"], None, INFO,
                        f"p50 {fmt(tr['p50_ms'])} ms, p99 {fmt(tr['p99_ms'])} ms over {tr['n']} fresh modes"))
    return out


def _acc_gpu(result):
    crit = "GPU: torch backend with CUDA graphs (--backend torch --device cuda)"
    dev = result["config"].get("device")
    if dev and str(dev).startswith("cuda"):
        rows = [r for r in result["latency"] if r["batch"] == 1]
        v = min((r["p50_ms"] for r in rows), default=None)
        return _acc("gpu_cuda_graphs", crit, v, None, PASS if v is not None else NOT_MEASURED,
                    f"measured on {result['device'].get('gpu', {}).get('name', 'GPU')}: fastest batch-1 p50 {fmt(v)} ms")
    return _acc("gpu_cuda_graphs", crit, None, None, NOT_MEASURED,
                why="this run was on the CPU (no CUDA device here)",
                to_close="run `oat-edge bench BUNDLE --backend torch --device cuda` on a machine with a GPU")
