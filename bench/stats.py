"""Statistics of the benchmark: per-call times -> percentiles per round -> medians across
rounds, and the ratios the report compares."""

from __future__ import annotations

import math
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from oat_edge.errors import ConfigError

# rounds whose medians differ more than this flag a disturbed measurement
UNSTABLE_SPREAD = 2.0


def percentiles(samples: Sequence[float]) -> dict:
    """p50/p90/p99/mean/min (in the samples' own unit) and the sample count n."""
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        raise ConfigError("no samples")
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(a.mean()),
            "min": float(a.min()), "n": int(a.size)}


def summarize_ns(samples_ns: Sequence[int]) -> dict:
    """``percentiles`` in milliseconds (keys ``p50_ms`` ...) of per-call times in nanoseconds."""
    s = percentiles(np.asarray(samples_ns, dtype=np.float64) / 1e6)
    return {(k if k == "n" else f"{k}_ms"): v for k, v in s.items()}


def median_across_rounds(per_round: Sequence[dict]) -> dict:
    """Median of each per-round statistic; ``n`` is the total sample count, and the per-round p50
    values are kept so a reader can see the spread that the median hides."""
    keys = [k for k in per_round[0] if k != "n"]
    out = {k: float(np.median([r[k] for r in per_round])) for k in keys}
    out["n"] = int(sum(r["n"] for r in per_round))
    out["rounds"] = len(per_round)
    out["round_p50_ms"] = [round(r["p50_ms"], 6) for r in per_round]
    return out

def ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
    if num is None or den is None or den <= 0 or not math.isfinite(num) or not math.isfinite(den):
        return None
    return float(num / den)

def aggregate(samples: Dict[str, List[List[int]]]) -> Dict[str, dict]:
    """{metric: median-across-rounds summary} of one block's samples."""
    return {m: median_across_rounds([summarize_ns(r) for r in rounds if r])
            for m, rounds in samples.items() if any(rounds)}

def timer_overhead_ns(n: int = 20000) -> dict:
    """What one perf_counter_ns pair costs here: the floor under every µs-scale figure."""
    clock = time.perf_counter_ns
    d = np.empty(n, dtype=np.int64)
    for i in range(n):
        t0 = clock()
        d[i] = clock() - t0
    return {"p50_ns": float(np.median(d)), "p99_ns": float(np.percentile(d, 99)),
            "resolution_ns": time.get_clock_info("perf_counter").resolution * 1e9}


def find_row(rows, lam, width, batch, path=None, precision: str = "fp32"):
    """The result row of mode (λ, width, precision) at ``batch`` (and ``path``, when given), or
    None. Rows without a precision are fp32."""
    from oat_edge.mode import same_lambda, same_width

    for r in rows:
        if (same_lambda(r["lam"], lam) and same_width(r["width"], width) and r["batch"] == batch
                and (path is None or r.get("path") == path) and (r.get("precision") or "fp32") == precision):
            return r
    return None


def throughput(batch: int, s: dict) -> float:
    """Images per second from a latency summary (mean per call)."""
    return float(batch * 1e3 / s["mean_ms"]) if s["mean_ms"] > 0 else float("nan")


def ms_summary(s: dict) -> dict:
    return {k: s[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "n", "rounds")}


def us_summary(s: dict) -> dict:
    """The same statistics in microseconds (for µs-scale figures such as set_mode)."""
    return {**{k.replace("_ms", "_us"): v * 1e3 for k, v in s.items() if k.endswith("_ms") and not isinstance(v, list)},
            "n": s["n"]}
