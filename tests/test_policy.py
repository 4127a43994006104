"""Runtime.select and its budget policy: feasibility, preferences, closest-mode errors, the
missing-calibration error, latency from the bundle's profile or measured — for both the C++
and the Python implementation of the policy."""

from __future__ import annotations

import json
import math

import pytest

from oat_edge.errors import BundleError, ConfigError, ModeError
from oat_edge.mode import Mode
from oat_edge.runtime import policy
from oat_edge.runtime._native import load

from runtime_support import WIDTHS, copy_bundle, impl_params

# (λ, width, SA, RA, latency ms)
TABLE = [
    (0.0, 1.0, 0.95, 0.10, 4.0), (0.2, 1.0, 0.90, 0.40, 4.0), (1.0, 1.0, 0.80, 0.55, 4.0),
    (0.0, 0.5, 0.90, 0.05, 1.0), (0.2, 0.5, 0.85, 0.30, 1.0), (1.0, 0.5, 0.70, 0.45, 1.0),
]


def _cands():
    return [policy.Candidate(Mode(l, w), sa, ra, lat, "film", "profile") for l, w, sa, ra, lat in TABLE]


def _choose(impl, min_ra=None, min_sa=None, max_lat=None, prefer="robust", calibrated=True):
    b = policy.check_budgets(min_ra, min_sa, max_lat, prefer, 1)
    return policy.choose(_cands(), b[0], b[1], b[2], b[3], load(impl), calibrated, 1).mode


@pytest.mark.parametrize("impl", impl_params())
@pytest.mark.parametrize("budgets,expected", [
    (dict(), (1.0, 1.0)),
    (dict(prefer="accurate"), (0.0, 1.0)),
    (dict(prefer="fast"), (1.0, 0.5)),  # fastest tier, then most robust
    (dict(min_ra=0.35, max_lat=2.0), (1.0, 0.5)),
    (dict(min_ra=0.35, prefer="accurate"), (0.2, 1.0)),
    (dict(min_sa=0.88, prefer="fast"), (0.0, 0.5)),
    (dict(min_ra=0.55, min_sa=0.8), (1.0, 1.0)),  # budgets met exactly count as met
])
def test_policy_choices(impl, budgets, expected):
    assert _choose(impl, **budgets) == Mode(*expected)


@pytest.mark.parametrize("impl", impl_params())
def test_infeasible_budget_names_closest_modes(impl):
    with pytest.raises(ModeError) as e:
        _choose(impl, min_ra=0.5, max_lat=2.0)
    msg = str(e.value)
    assert "robust accuracy ≥ 0.5 and latency ≤ 2 ms" in msg
    # Shortfalls: (1, 0.5) misses RA by 0.05, (0.2, 0.5) by 0.2, (0, 0.5) by 0.45, while (1, 1)
    # meets RA but is 2 ms (100 %) over the latency budget: the first three are named, in order.
    closest = msg.split("closest: ")[1]
    assert closest.index("(λ=1, width=0.5): RA 0.450") < closest.index("(λ=0.2, width=0.5)") < closest.index("(λ=0, width=0.5)")
    assert "width=1)" not in closest
    with pytest.raises(ModeError, match="closest"):
        _choose(impl, min_ra=0.9)


@pytest.mark.parametrize("impl", impl_params())
def test_without_calibration_only_latency_budgets(impl):
    with pytest.raises(BundleError, match="--calibrate"):
        _choose(impl, min_ra=0.3, calibrated=False)
    with pytest.raises(BundleError, match="--calibrate"):
        _choose(impl, min_sa=0.3, calibrated=False)
    # λ is the robustness proxy; width − λ the accuracy proxy.
    assert _choose(impl, max_lat=2.0, calibrated=False) == Mode(1.0, 0.5)
    assert _choose(impl, prefer="accurate", calibrated=False) == Mode(0.0, 1.0)


@pytest.mark.parametrize("kwargs", [
    dict(min_robust_acc=40), dict(min_clean_acc=-0.1), dict(max_latency_ms=0), dict(max_latency_ms=-3),
    dict(min_robust_acc=float("nan")), dict(prefer="best"), dict(batch=0), dict(min_robust_acc="high"),
])
def test_budget_arguments_are_checked(kwargs):
    args = dict(min_robust_acc=None, min_clean_acc=None, max_latency_ms=None, prefer="robust", batch=1)
    args.update(kwargs)
    with pytest.raises(ConfigError):
        policy.check_budgets(args["min_robust_acc"], args["min_clean_acc"], args["max_latency_ms"], args["prefer"],
                             args["batch"])


# --- Runtime.select on a real bundle --------------------------------------------------------------
CAL_LAMS = (0.0, 0.1, 0.2, 0.3, 1.0)


def _calibration(n_images: int = 10**20):
    """Synthetic calibration; with the default n the lower confidence bounds equal the figures,
    so the tests below are about the choice itself."""
    recs = []
    for w in WIDTHS:
        for lam in CAL_LAMS:
            recs.append({"lam": lam, "width": w, "sa": round(0.95 - 0.2 * lam - 0.1 * (1 - w), 4),
                         "ra": {"pgd7": round(0.1 + 0.4 * lam * w, 4), "fgsm": round(0.2 + 0.4 * lam * w, 4)}})
    return {"dataset": "digits", "split": "test", "n_images": n_images,
            "attacks": {"pgd7": {"eps": 0.03, "steps": 7, "step_size": 0.008}, "fgsm": {"eps": 0.03}},
            "records": recs}


@pytest.fixture
def calibrated_bundle(tmp_path):
    b = copy_bundle(tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["calibration"] = _calibration()
    (b / "manifest.json").write_text(json.dumps(m))
    return b


def _write_profile(rt, latency_of_width, baked_ms=None, tail=None):
    """A latency profile: p50 = p90 = p99 per width, except the p99s given in ``tail``."""
    tail = tail or {}
    recs = []
    for w in WIDTHS:
        for lam in (0.0, 0.1):
            ms = latency_of_width[w]
            recs.append({"lam": lam, "width": w, "batch": 1, "path": "film", "p50_ms": ms,
                         "p90_ms": ms, "p99_ms": tail.get(w, ms), "throughput_ips": 0})
        if baked_ms is not None:
            recs.append({"lam": 0.2, "width": w, "batch": 1, "path": "baked", "p50_ms": baked_ms[w],
                         "p99_ms": baked_ms[w]})
    path = rt.bundle_dir / "latency" / f"{rt.device_key}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"device_key": rt.device_key, "backend": rt.backend_name, "device": {},
                                "threads": rt.threads, "created": "now", "records": recs}))


@pytest.mark.parametrize("impl", impl_params())
def test_select_uses_calibration_and_latency_profile(calibrated_bundle, impl):
    from oat_edge.runtime import Runtime

    probe = Runtime(calibrated_bundle, backend="onnxruntime", impl=impl)
    _write_profile(probe, {0.5: 1.0, 0.75: 2.0, 1.0: 3.0}, baked_ms={0.5: 0.5, 0.75: 1.5, 1.0: 2.5})
    rt = Runtime(calibrated_bundle, backend="onnxruntime", impl=impl)
    assert rt.calibrated and rt.describe()["latency_profile"]
    assert rt.select() == Mode(1.0, 1.0)  # most robust: RA = 0.1 + 0.4·λ·w
    assert rt.select(max_latency_ms=2.2) == Mode(1.0, 0.75)
    assert rt.select(max_latency_ms=1.2) == Mode(1.0, 0.5)
    # λ = 0.2 is baked: its own (faster) latency record counts, so width 1 fits 2.6 ms for it only.
    assert rt.select(min_robust_acc=0.15, max_latency_ms=2.6, prefer="accurate") == Mode(0.2, 1.0)
    assert rt.latency_ms(0.2, 1.0) == 2.5 and rt.latency_ms(0.3, 1.0) == 3.0
    assert rt.select(min_clean_acc=0.9, prefer="robust") == Mode(0.2, 1.0)  # SA(0.3, 1) = 0.89
    # FGSM RA(1, 0.5) = 0.4 (its PGD-7 RA is 0.3): feasible only under the named attack.
    assert rt.select(attack="fgsm", min_robust_acc=0.4, prefer="fast") == Mode(1.0, 0.5)
    assert rt.select(min_robust_acc=0.4, prefer="fast") == Mode(1.0, 0.75)
    with pytest.raises(ConfigError, match="attack"):
        rt.select(attack="cw")
    with pytest.raises(ModeError, match="closest"):
        rt.select(min_robust_acc=0.45, max_latency_ms=1.0)
    mode = rt.select(max_latency_ms=2.2)
    rt.set_mode(mode)
    assert rt.mode == mode
    assert set(rt.modes) == {Mode(l, w) for l in CAL_LAMS for w in WIDTHS}


def test_select_budgets_use_the_lower_confidence_bound_of_the_robust_metric(tmp_path):
    """RA budgets are checked against the one-sided 95 % Wilson lower bound of the worst-case
    metric: a mode measured at 50 % on 100 images does not meet a 45 % budget (bound 41.9 %);
    on 10,000 images (bound 49.2 %) it does."""
    from oat_edge.runtime import Runtime

    def bundle_with(n, folder):
        b = copy_bundle(folder)
        m = json.loads((b / "manifest.json").read_text())
        cal = _calibration()
        cal["robust_metric"] = "worst_case"
        for r in cal["records"]:
            r["n"] = n
            # The worst case is below every single attack; only (1, 1) reaches 50 %.
            r["ra"]["worst_case"] = 0.5 if (r["lam"], r["width"]) == (1.0, 1.0) else 0.2
        m["calibration"] = cal
        (b / "manifest.json").write_text(json.dumps(m))
        return b

    small = Runtime(bundle_with(100, tmp_path / "small"), backend="onnxruntime")
    with pytest.raises(ModeError, match="closest"):
        small.select(min_robust_acc=0.45, max_latency_ms=1e4)
    assert small.select(min_robust_acc=0.4, max_latency_ms=1e4) == Mode(1.0, 1.0)
    large = Runtime(bundle_with(10_000, tmp_path / "large"), backend="onnxruntime")
    assert large.select(min_robust_acc=0.45, max_latency_ms=1e4) == Mode(1.0, 1.0)
    # The worst case is the default metric; naming an attack reads that attack's figures instead.
    cal = json.loads((large.bundle_dir / "manifest.json").read_text())["calibration"]
    metric, rows = policy.calibration_table(cal, None)
    assert metric == "worst_case" and sorted(r[3] for r in rows)[-1] == pytest.approx(0.4917761126, abs=1e-9)
    named, rows = policy.calibration_table(cal, "pgd7")
    assert named == "pgd7" and sum(r[3] >= 0.25 for r in rows) == 3  # (1, 0.5), (1, 0.75), (1, 1) by PGD-7


def test_lower_bound_is_wilson():
    """Hand-computed one-sided 95 % Wilson bounds (z = 1.645): (p + z²/2n − z·sqrt(p(1−p)/n +
    z²/4n²)) / (1 + z²/n). At p = 1 it is 1/(1 + z²/n), not 1: 10 of 10 images support 0.787."""
    from oat_edge.runtime.policy import lower_bound

    assert lower_bound(1.0, 10) == pytest.approx(1 / (1 + 1.645 ** 2 / 10), abs=1e-12)
    assert lower_bound(1.0, 10) == pytest.approx(0.7870282012, abs=1e-9)
    assert lower_bound(0.5, 100) == pytest.approx(0.4188407648, abs=1e-9)
    assert lower_bound(0.9, 50) == pytest.approx(0.8084525234, abs=1e-9)
    assert lower_bound(0.0, 10) == 0.0
    assert lower_bound(0.7, 0) == 0.0 and lower_bound(0.7, None) == 0.0  # no image count: supports nothing


def test_perfect_score_on_few_images_and_records_without_n_do_not_meet_budgets(tmp_path):
    """10 of 10 does not meet an 80 % budget (its bound is 78.7 %); a record without n, in a
    calibration without n_images, meets no budget above 0."""
    from oat_edge.runtime import Runtime

    def bundle_with(folder, n_images, n):
        b = copy_bundle(folder)
        m = json.loads((b / "manifest.json").read_text())
        cal = _calibration(n_images)
        if n_images is None:
            del cal["n_images"]
        for r in cal["records"]:
            r["sa"], r["ra"]["pgd7"] = 1.0, 1.0
            if n is not None:
                r["n"] = n
        m["calibration"] = cal
        (b / "manifest.json").write_text(json.dumps(m))
        return Runtime(b, backend="onnxruntime")

    ten = bundle_with(tmp_path / "ten", 10_000, 10)  # each record's own n wins over n_images
    with pytest.raises(ModeError, match="closest"):
        ten.select(min_robust_acc=0.8, max_latency_ms=1e4)
    with pytest.raises(ModeError, match="closest"):
        ten.select(min_clean_acc=0.8, max_latency_ms=1e4)
    assert ten.select(min_robust_acc=0.78, max_latency_ms=1e4) in ten.modes  # 0.787 ≥ 0.78
    unknown = bundle_with(tmp_path / "unknown", None, None)
    with pytest.raises(ModeError, match="closest"):
        unknown.select(min_robust_acc=0.01, max_latency_ms=1e4)


@pytest.mark.parametrize("impl", impl_params())
def test_latency_budget_bounds_the_p99_by_default(calibrated_bundle, impl):
    """Width 1 has a 1 ms median but a 9 ms p99: a 2 ms budget excludes it unless the caller
    asks for the median explicitly."""
    from oat_edge.runtime import Runtime

    probe = Runtime(calibrated_bundle, backend="onnxruntime", impl=impl)
    _write_profile(probe, {0.5: 1.5, 0.75: 1.5, 1.0: 1.0}, tail={1.0: 9.0})
    rt = Runtime(calibrated_bundle, backend="onnxruntime", impl=impl)
    assert rt.select(max_latency_ms=2.0) == Mode(1.0, 0.75)
    assert rt.select(max_latency_ms=2.0, latency_quantile="p99") == Mode(1.0, 0.75)
    assert rt.select(max_latency_ms=2.0, latency_quantile="p50") == Mode(1.0, 1.0)
    assert rt.latency_ms(1.0, 1.0, quantile="p99") == 9.0 and rt.latency_ms(1.0, 1.0) == 1.0
    with pytest.raises(ConfigError, match="latency_quantile"):
        rt.select(max_latency_ms=2.0, latency_quantile="p95")


def test_select_measures_latency_without_profile(calibrated_bundle):
    from oat_edge.runtime import Runtime

    rt = Runtime(calibrated_bundle, backend="onnxruntime")
    assert rt.describe()["latency_profile"] is None
    mode = rt.select(max_latency_ms=1e4)
    assert mode == Mode(1.0, 1.0)
    cands, calibrated = rt._selector.candidates(1, None)
    assert calibrated and all(c.latency_source == "measured" and c.latency_ms > 0 for c in cands)
    with pytest.raises(ModeError):
        rt.select(max_latency_ms=1e-6)  # nothing is that fast


def test_select_without_calibration(tmp_path):
    from oat_edge.runtime import Runtime

    rt = Runtime(copy_bundle(tmp_path), backend="onnxruntime")
    assert not rt.calibrated
    with pytest.raises(BundleError, match="--calibrate"):
        rt.select(min_robust_acc=0.3)
    assert rt.select(max_latency_ms=1e4) == Mode(1.0, max(WIDTHS))  # λ as the robustness proxy
    with pytest.raises(ConfigError, match="batch"):
        rt.select(batch=10_000)


def test_malformed_latency_profile_is_refused(tmp_path):
    from oat_edge.runtime import Runtime
    from oat_edge.bundle.latency import read_latency_profile

    b = copy_bundle(tmp_path)
    rt = Runtime(b, backend="onnxruntime")
    path = b / "latency" / f"{rt.device_key}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text("{not json")
    with pytest.raises(BundleError, match="oat-edge bench"):
        Runtime(b, backend="onnxruntime")
    path.write_text(json.dumps({"records": [{"lam": 0, "width": 1}]}))
    with pytest.raises(BundleError, match="lacks"):
        read_latency_profile(b, rt.device_key)
    path.write_text(json.dumps({"device_key": "gpu-other", "records": []}))
    with pytest.raises(BundleError, match="for device"):
        read_latency_profile(b, rt.device_key)
    assert read_latency_profile(b, "no-such-device") is None
    assert math.isnan(policy.check_budgets(None, None, None, "fast", 1)[0])
