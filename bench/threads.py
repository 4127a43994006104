"""Thread counts and the roofline (``oat-edge bench --tune-threads``).

Small paths do not scale with intra-op threads: on a 2-core CPU a width-0.5 digits path at batch
1 is often faster on one thread (a barrier per operator costs more than the split saves) while a
ResNet-34 path at batch 32 wants every core. So the benchmark measures every path at each
candidate thread count, in the same interleaved rounds as everything else, and records the best
count per path and batch in the latency profile; ``Runtime(threads="tuned")`` opens each path's
session with its own count.

The roofline: achieved GMAC/s of each path (its manifest MACs × batch ÷ p50) against this CPU's
fp32 peak, measured in the same run by an optimised BLAS sgemm (numpy's, in a subprocess with
the OpenBLAS core-type overrides removed, at each thread count). The share says how far each
path is from what the hardware can do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

from oat_edge.bench.blocks import runtime_blocks
from oat_edge.bench.stats import ratio
from oat_edge.mode import Mode, same_width

# OpenBLAS settings some images pin (a core type or cache size for another CPU) that keep sgemm
# off this CPU's best kernel; dropped for the peak measurement alone.
_BLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_VERBOSE", "GOTO_NUM_THREADS")
SGEMM_N = 1024

_PEAK_SCRIPT = r"""
import json, sys, time
import numpy as np
n, reps = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n), dtype=np.float32)
b = rng.standard_normal((n, n), dtype=np.float32)
c = np.empty((n, n), np.float32)
for _ in range(3):
    np.matmul(a, b, out=c)
times = []
for _ in range(reps):
    t = time.perf_counter()
    np.matmul(a, b, out=c)
    times.append(time.perf_counter() - t)
times.sort()
macs = float(n) ** 3
kernel = None
try:  # which BLAS kernel ran (OpenBLAS picks one per CPU type)
    from threadpoolctl import threadpool_info
    kernel = next((f"{i.get('internal_api')} {i.get('architecture')}" for i in threadpool_info() if i.get("user_api") == "blas"), None)
except ImportError:
    pass
print(json.dumps({"best_gmacs": macs / times[0] / 1e9, "median_gmacs": macs / times[len(times) // 2] / 1e9, "kernel": kernel}))
"""


def candidate_threads(max_threads: int) -> List[int]:
    """1, 2, 4, ... up to the CPUs this process may use, and that count itself."""
    out, t = [], 1
    while t < max_threads:
        out.append(t)
        t *= 2
    return sorted(set(out) | {max(1, int(max_threads))})


def measure_sgemm_peak(threads: int, n: int = SGEMM_N, reps: int = 15) -> dict:
    """fp32 GMAC/s of numpy's BLAS sgemm (n×n×n) on ``threads`` threads, in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in _BLAS_OVERRIDES}
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(int(threads))
    try:
        out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(n), str(reps)], env=env, capture_output=True,
                             text=True, timeout=300, check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as e:
        return {"threads": threads, "error": f"sgemm peak not measured: {e}"}
    try:
        import numpy as np

        blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {}).get("name")
    except Exception:  # (older numpy: no dict mode)
        blas = None
    return {"threads": threads, "n": n, "reps": reps, "blas": blas, "kernel": res.pop("kernel", None),
            **{k: round(v, 1) for k, v in res.items()}}


def thread_blocks(open_runtime, modes: Sequence[Mode], batches, images, run_threads: int, max_threads: int):
    """Blocks ``threads|threadsT|λ|w|b`` (the runtime blocks' calls) for every candidate thread
    count other than the run's own (whose latency the runtime blocks already measure) and the
    runtimes they use (to close)."""
    blocks, runtimes = [], []
    for t in candidate_threads(max_threads):
        if t == run_threads:
            continue
        rt = open_runtime(t)
        runtimes.append(rt)
        blocks += runtime_blocks(rt, modes, batches, images, kind="threads", threads=t)
    return blocks, runtimes


def summarize(latency_rows: List[dict], blocks, stats, run_threads: int, width_macs: Dict[float, Optional[int]],
              peaks: Dict[int, dict]) -> dict:
    """Per (path, batch): p50 at each thread count, the best count and its gain over the run's
    count; achieved GMAC/s and share of the sgemm peak; width 0.5 ÷ 1.0 with tuned threads."""
    p50: Dict[tuple, Dict[int, float]] = {}
    pids: Dict[tuple, str] = {}

    def key_of(d):
        return (d["lam"], d["width"], d["batch"], d.get("precision") or "fp32")

    for r in latency_rows:
        p50.setdefault(key_of(r), {})[run_threads] = r["p50_ms"]
        pids[key_of(r)] = r["path_id"]
    for b in blocks:
        if b.meta.get("kind") == "threads":
            p50.setdefault(key_of(b.meta), {})[b.meta["threads"]] = stats[b.key]["latency"]["p50_ms"]
            pids.setdefault(key_of(b.meta), b.meta["path_id"])
    rows = []
    for (lam, width, batch, prec), by_t in sorted(p50.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        pid = pids[(lam, width, batch, prec)]
        best = min(by_t, key=by_t.get)
        macs = next((v for w, v in width_macs.items() if same_width(w, width)), None)
        row = {"path_id": pid, "lam": lam, "width": width, "batch": batch, "precision": prec, "p50_ms_by_threads": {str(t): v for t, v in sorted(by_t.items())},
               "best_threads": best, "best_p50_ms": by_t[best],
               "gain_over_default": ratio(by_t.get(run_threads), by_t[best])}
        if macs:
            row["macs_per_image"] = macs
            # 4 significant digits: a tiny model's path runs at well under 1 GMAC/s
            row["gmacs_by_threads"] = {str(t): float(f"{macs * batch / (v * 1e-3) / 1e9:.4g}") for t, v in sorted(by_t.items())}
            peak = (peaks.get(best) or {}).get("best_gmacs")
            row["best_gmacs"] = row["gmacs_by_threads"][str(best)]
            row["share_of_peak"] = round(row["best_gmacs"] / peak, 4) if peak else None
        rows.append(row)
    return {"candidates": sorted({t for v in p50.values() for t in v}), "default_threads": run_threads,
            "sgemm_peak": [peaks[t] for t in sorted(peaks)], "paths": rows,
            "width_ratio_tuned": _width_ratios(rows)}


def _width_ratios(rows: List[dict]) -> List[dict]:
    """Narrowest ÷ widest width's best p50 per (λ, batch, precision), with their MACs ratio."""
    out = []
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault((r["lam"], r["batch"], r.get("precision", "fp32")), []).append(r)
    for (lam, batch, prec), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["width"])
        lo, hi = rs[0], rs[-1]
        if same_width(lo["width"], hi["width"]):
            continue
        out.append({"lam": lam, "batch": batch, "precision": prec, "narrow": lo["width"], "wide": hi["width"],
                    "tuned_ratio": ratio(lo["best_p50_ms"], hi["best_p50_ms"]),
                    "macs_ratio": ratio(lo.get("macs_per_image"), hi.get("macs_per_image"))})
    return out


def profile_threads(summary: dict) -> Dict[str, Dict[str, int]]:
    """{path id: {batch: best thread count}} for the latency profile."""
    out: Dict[str, Dict[str, int]] = {}
    for r in summary["paths"]:
        out.setdefault(r["path_id"], {})[str(r["batch"])] = int(r["best_threads"])
    return out
