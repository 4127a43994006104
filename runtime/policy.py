"""The budget policy behind ``Runtime.select``: which mode meets the accuracy and latency
budgets, and is best by a preference.

Candidates are the bundle's calibrated modes (clean accuracy SA and robust accuracy RA measured
at export with ``--calibrate``), each with the latency of the path the runtime would run for
it on this device (the bundle's latency profile from ``oat-edge bench``, or a quick measurement).
The choice itself is ``select_mode`` of the C++ extension or its Python twin (same algorithm,
see runtime/csrc/policy.h):

- feasible: RA ≥ min_robust_acc, SA ≥ min_clean_acc, latency ≤ max_latency_ms, where each
  accuracy is its one-sided 95 % Wilson lower bound over the n calibration images (10 of 10
  correct supports 0.79, not 1; a record with no image count supports 0): a budget is met only
  when the measurement supports it, not when a noisy figure happens to reach it; latency is a
  tail quantile of the path's latency (p99 by default, ``latency_quantile``), so a budget
  bounds nearly every frame, not the median one;
- RA is the calibration's robust metric (the per-image worst case over its attack ensemble)
  unless another attack is named;
- best: prefer="robust" maximises RA (then SA, then speed), "accurate" maximises SA (then RA,
  then speed), "fast" minimises latency (then RA, then SA); remaining ties go to the wider
  model, then the smaller λ, then the more exact precision (candidates come fp32 first and
  both implementations keep the first of equal keys);
- precision is searched like λ and width: each (λ, width, precision) with a calibration record
  is a candidate with its own SA, RA (for fp16/int8 the worst of the transferred and the
  fake-quantized white-box attacks) and latency (the profile's record of that precision);
- a reduced-precision copy exists to be faster: one whose latency on this device is not below
  the fp32 file of the same (λ, width) is no candidate (int8 QDQ can run slower than fp32 on a
  CPU, e.g. S8S8 in onnxruntime on x86, or any int8 on a model too small for its Q/DQ work);
- none feasible: ModeError naming the closest modes (smallest total shortfall).

Without calibration only latency budgets can be checked; preferences then use λ as the
robustness proxy and width − λ as the accuracy proxy (monotone stand-ins, named as such).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from oat_edge.errors import BundleError, ConfigError, ModeError
from oat_edge.mode import Mode

PREFER = {"robust": 0, "accurate": 1, "fast": 2}
NO_CALIBRATION = (
    "this bundle has no calibration (clean/robust accuracy per mode), so accuracy budgets cannot be "
    "checked; re-export it with `oat-edge export CKPT --calibrate` (or select with max_latency_ms only)"
)


@dataclass(frozen=True)
class Candidate:
    mode: Mode
    sa: float  # clean accuracy in [0, 1] (NaN: unknown)
    ra: float  # robust accuracy under the chosen attack (NaN: unknown)
    latency_ms: float  # the budget's quantile (p99 by default) at the requested batch on this device (NaN: unknown)
    path: str  # "film" or "baked"
    latency_source: str = ""  # "profile" | "measured"

    def describe(self, calibrated: bool) -> str:
        acc = f"RA {self.ra:.3f}, SA {self.sa:.3f}, " if calibrated else ""
        return f"{self.mode}: {acc}{self.latency_ms:.3g} ms"


def check_budgets(min_robust_acc, min_clean_acc, max_latency_ms, prefer: str, batch) -> Tuple[float, float, float, int]:
    """Budgets as floats (NaN = none) and the preference code; ConfigError for nonsense."""
    out = []
    for name, value, hi in (("min_robust_acc", min_robust_acc, 1.0), ("min_clean_acc", min_clean_acc, 1.0),
                            ("max_latency_ms", max_latency_ms, math.inf)):
        if value is None:
            out.append(math.nan)
            continue
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
        if math.isnan(v) or v < 0 or v > hi or (name == "max_latency_ms" and v == 0):
            rng = "(0, ∞)" if name == "max_latency_ms" else "[0, 1] (a fraction, not a percentage)"
            raise ConfigError(f"{name} must be in {rng}, got {value!r}")
        out.append(v)
    if prefer not in PREFER:
        raise ConfigError(f"prefer must be one of {sorted(PREFER)}, got {prefer!r}")
    if not isinstance(batch, (int, np.integer)) or isinstance(batch, bool) or batch < 1:
        raise ConfigError(f"batch must be a positive integer, got {batch!r}")
    return out[0], out[1], out[2], PREFER[prefer]


def choose(candidates: Sequence[Candidate], min_ra: float, min_sa: float, max_lat: float, prefer: int,
           impl: ModuleType, calibrated: bool, batch: int, n_closest: int = 3) -> Candidate:
    candidates = drop_slower_copies(candidates)
    if not candidates:
        raise BundleError("the bundle offers no modes to select from")
    if not calibrated and not (math.isnan(min_ra) and math.isnan(min_sa)):
        raise BundleError(NO_CALIBRATION)
    cols = [np.array(v, dtype=np.float64) for v in zip(*[
        (c.mode.lam, c.mode.width, c.sa, c.ra, c.latency_ms) for c in candidates])]
    if not calibrated:  # proxies: robustness grows with λ; accuracy with width and falls with λ
        cols[3] = cols[0].copy()
        cols[2] = cols[1] - cols[0]
    chosen, closest = impl.select_mode(cols[0], cols[1], cols[2], cols[3], cols[4], min_ra, min_sa, max_lat,
                                       prefer, n_closest)
    if chosen >= 0:
        return candidates[chosen]
    raise ModeError(
        f"no mode meets {_budget_text(min_ra, min_sa, max_lat)} at batch {batch}; closest: "
        + "; ".join(candidates[i].describe(calibrated) for i in closest)
    )


def drop_slower_copies(candidates: Sequence[Candidate]) -> List[Candidate]:
    """``candidates`` without the fp16/int8 ones not faster than the fp32 file of their (λ,
    width): such a copy is less exact and buys no time (unknown latencies are kept)."""
    fp32 = {(c.mode.lam, c.mode.width): c.latency_ms for c in candidates if c.mode.precision == "fp32"}
    out = []
    for c in candidates:
        ref = fp32.get((c.mode.lam, c.mode.width), math.nan)
        if c.mode.precision != "fp32" and not math.isnan(ref) and not math.isnan(c.latency_ms) and c.latency_ms >= ref:
            continue
        out.append(c)
    return out


def _budget_text(min_ra: float, min_sa: float, max_lat: float) -> str:
    parts = []
    if not math.isnan(min_ra):
        parts.append(f"robust accuracy ≥ {min_ra:g}")
    if not math.isnan(min_sa):
        parts.append(f"clean accuracy ≥ {min_sa:g}")
    if not math.isnan(max_lat):
        parts.append(f"latency ≤ {max_lat:g} ms")
    return " and ".join(parts) or "the budgets"


Z_LOWER = 1.645  # one-sided 95 % normal quantile for the lower confidence bound
LATENCY_QUANTILES = ("p50", "p90", "p99")


def lower_bound(p: float, n: int) -> float:
    """The one-sided 95 % Wilson lower bound of an accuracy p measured on n images: the
    accuracy the calibration supports. Unlike p − z·sqrt(p(1 − p)/n) it does not collapse to p
    at p = 1 (10 of 10 correct supports only 0.79), and with no image count (n < 1) it is 0:
    a figure of unknown support meets no budget above 0."""
    if not n or n < 1:
        return 0.0
    z2n = Z_LOWER * Z_LOWER / n
    centre = p + z2n / 2.0
    spread = Z_LOWER * math.sqrt(max(p * (1.0 - p), 0.0) / n + z2n / (4.0 * n))
    return max(0.0, (centre - spread) / (1.0 + z2n))


def check_quantile(latency_quantile: str) -> str:
    if latency_quantile not in LATENCY_QUANTILES:
        raise ConfigError(f"latency_quantile must be one of {list(LATENCY_QUANTILES)}, got {latency_quantile!r}")
    return latency_quantile


def calibration_table(calibration: Optional[dict], attack: Optional[str]) -> Tuple[Optional[str], List[Tuple[float, float, float, float, str]]]:
    """(attack used, [(λ, width, SA, RA, precision)]) from the manifest's calibration, each
    accuracy its lower confidence bound over the record's n images (``n_images`` for records
    without n), fp32 rows first, then fp16, then int8 (so that on a complete tie the policy,
    which keeps the first best candidate, prefers the more exact arithmetic).
    RA is ``attack``'s, by default the calibration's ``robust_metric`` (the worst case over the
    ensemble) or, in bundles without one, the first attack listed. A reduced-precision record
    (``precision`` fp16/int8) has its own robust figures (transfer, fake-quantized white-box
    and their worst case, see export.quant_eval) and is left out when ``attack`` names an
    attack it lacks. BundleError for a malformed calibration, ConfigError for an unknown attack."""
    from oat_edge.precision import RANK, entry_precision

    if not calibration:
        return None, []
    records = calibration.get("records")
    if not isinstance(records, list) or not records:
        raise BundleError("the manifest's calibration has no records; re-export with --calibrate")
    attacks = list((calibration.get("attacks") or {}).keys())
    first_ra = records[0].get("ra") if isinstance(records[0], dict) else None
    available = list(first_ra.keys()) if isinstance(first_ra, dict) else attacks
    metric = calibration.get("robust_metric")
    if attack is None:
        attack = metric if metric in available else (attacks or available or [None])[0]
        if attack is None:
            raise BundleError("the manifest's calibration names no attack")
    elif attack not in available:
        raise ConfigError(f"the calibration has no robust accuracy for attack {attack!r}; it has {available}")
    default_n = calibration.get("n_images")
    rows = []
    for r in records:
        try:
            precision = entry_precision(r)
            if precision != "fp32" and attack not in r["ra"]:
                continue
            n = int(r.get("n", default_n) or 0)
            rows.append((float(r["lam"]), float(r["width"]), lower_bound(float(r["sa"]), n),
                         lower_bound(float(r["ra"][attack]), n), precision))
        except (AttributeError, KeyError, TypeError, ValueError):
            raise BundleError(f"calibration record {r!r} lacks lam/width/sa/ra[{attack!r}]") from None
    rows.sort(key=lambda row: RANK.get(row[4], len(RANK)))  # stable: manifest order within a precision
    return attack, rows


MEASURE_RUNS = 25  # quick latency measurement per path when the bundle has no profile for this device


class Selector:
    """``Runtime.select`` over one runtime: its calibrated modes, each with the latency of the
    path it runs on here (the device's latency profile, else a quick measurement, cached: the
    calibration and the latency sources do not change while the runtime lives)."""

    def __init__(self, state, backend, io, calibration: Optional[dict], latency_profile: Optional[dict],
                 impl: ModuleType):
        self.state = state  # runtime.modestate.ModeState
        self.backend = backend
        self.io = io
        self.calibration = calibration
        self.latency_profile = latency_profile
        self.impl = impl
        self._measured: Dict[Tuple[int, int], Dict[str, float]] = {}
        self._measure_lock = threading.Lock()
        self._candidate_cache: Dict[tuple, Tuple[List[Candidate], bool]] = {}

    @property
    def calibrated(self) -> bool:
        return bool((self.calibration or {}).get("records"))

    def modes(self) -> List[Mode]:
        """Every FiLM-grid λ × width (or the calibrated ones), at every precision the runtime runs."""
        state = self.state
        if self.calibrated:
            base = list(dict.fromkeys((float(r["lam"]), float(r["width"])) for r in self.calibration["records"]))
        else:
            base = [(lam, w) for w in state.widths for lam in state.film.grid_list]
        return [Mode(lam, w, p) for p in state.table.precisions for lam, w in base]

    def select(self, min_robust_acc, min_clean_acc, max_latency_ms, prefer: str, batch,
               attack: Optional[str], latency_quantile: str) -> Mode:
        min_ra, min_sa, max_lat, code = check_budgets(min_robust_acc, min_clean_acc, max_latency_ms, prefer, batch)
        if not self.io.batch_min <= batch <= self.io.batch_max:
            raise ConfigError(f"batch {batch} is outside this bundle's batch range {self.io.batch_min}..{self.io.batch_max}")
        if not self.calibrated and not (math.isnan(min_ra) and math.isnan(min_sa)):
            raise BundleError(NO_CALIBRATION)  # before measuring anything
        quantile = check_quantile(latency_quantile)
        candidates, calibrated = self.candidates(batch, attack, quantile)
        return choose(candidates, min_ra, min_sa, max_lat, code, self.impl, calibrated, batch).mode

    def candidates(self, batch: int, attack: Optional[str], quantile: str = "p99") -> Tuple[List[Candidate], bool]:
        """Every selectable mode with its accuracies and latency at ``batch`` (cached)."""
        key = (batch, attack, quantile)
        cached = self._candidate_cache.get(key)
        if cached is not None:
            return cached
        _attack, table = calibration_table(self.calibration, attack)
        calibrated = bool(table)
        rows = table if calibrated else [(m.lam, m.width, math.nan, math.nan, m.precision) for m in self.modes()]
        candidates = []
        for lam, width, sa, ra, precision in rows:
            try:
                wi = self.state.width_index(width)
            except ModeError:
                continue  # calibrated at a width this bundle did not export
            if precision not in self.state.table.precisions:
                continue  # a precision this bundle (or this backend) has no files for
            lat, source, kind = self.latency(lam, wi, batch, precision, quantile)
            candidates.append(Candidate(Mode(lam, self.state.widths[wi], precision), sa, ra, lat, kind, source))
        self._candidate_cache[key] = (candidates, calibrated)
        return candidates, calibrated

    def latency_ms(self, lam, width, batch, precision: str, quantile: str) -> float:
        from oat_edge.mode import check_lambda
        from oat_edge.precision import check_precision

        return self.latency(check_lambda(lam), self.state.width_index(width), int(batch), check_precision(precision),
                            check_quantile(quantile))[0]

    def latency(self, lam: float, wi: int, batch: int, precision: str = "fp32",
                quantile: str = "p50") -> Tuple[float, str, str]:
        """(ms at ``quantile``, source, path kind) of a mode: the device's latency profile, else measured."""
        from oat_edge.bundle.latency import profile_latency

        index, kind = self.state.table.lookup(lam, wi, precision)
        if index is None:
            return math.nan, "none", kind
        ms = profile_latency(self.latency_profile, lam, self.state.widths[wi], batch, kind, precision, quantile)
        if ms is not None:
            return ms, "profile", kind
        return self._measure(index, batch)[quantile], "measured", kind

    def _measure(self, index: int, batch: int) -> Dict[str, float]:
        """{"p50", "p90", "p99"} ms over a few runs of one path (cached): the fallback when the
        bundle has no latency profile for this device; with MEASURE_RUNS runs the p99 is close
        to the slowest run. ``oat-edge bench`` measures properly and writes the profile."""
        key = (index, batch)
        with self._measure_lock:
            if key in self._measured:
                return self._measured[key]
            spec = self.state.paths[index]
            x = np.random.default_rng(0).random((batch,) + tuple(self.io.input_shape), dtype=np.float32)
            film = self.state.film.tables[self.state.width_index(spec.width)][0] if spec.has_film else None
            self.backend.run(index, x, film)  # warm-up
            times = []
            for _ in range(MEASURE_RUNS):
                t0 = time.perf_counter()
                self.backend.run(index, x, film)
                times.append((time.perf_counter() - t0) * 1e3)
            self._measured[key] = {q: float(np.percentile(times, float(q[1:]))) for q in LATENCY_QUANTILES}
            return self._measured[key]
