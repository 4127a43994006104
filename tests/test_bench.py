"""`oat-edge bench`: one quick real run on the shared tiny bundle (tests/runtime_support.py)
produces the documented JSON, valid PNGs and the latency profile inside the bundle, and
Runtime.select then budgets with that profile; bad input gets one clear error each.

Timings themselves are not asserted here (they belong in benchmark reports); what is asserted is the
structure a user and Runtime.select rely on, and orderings that hold by a wide margin."""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

import runtime_support as rs
from oat_edge.cli import main
from oat_edge.bench import plots as bench_plots
from oat_edge.bench import report as bench_report
from oat_edge.bench import run as bench
from oat_edge.bench import scheduling, stats
from oat_edge.bundle import read_latency_profile

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODES = ("0:0.5", "1:0.5", "0.2:0.5", "0:1", "1:1", "0.2:1", "0.37:1")  # 0.2 is baked; 0.37 off-grid
BATCHES = (1, 16)
JSON_KEYS = {"schema", "schema_version", "created", "command", "wall_s", "bundle", "config", "device_key", "runtime",
             "device", "versions", "timer", "latency", "film_vs_baked", "film_vs_baked_paths", "eager", "eager_info",
             "switch", "load", "memory", "calibration", "outputs", "baking"}


def _acceptance(res):
    """Verdicts against the project's benchmark targets (scripts/bench_acceptance.py: repository
    tooling; the targets do not ship in oat_edge)."""
    import sys

    scripts = str(Path(__file__).resolve().parent.parent / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    from bench_acceptance import acceptance

    return acceptance(res)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One real `oat-edge bench` on a private copy of the shared bundle: (bundle, report dir, results)."""
    work = tmp_path_factory.mktemp("bench")
    bundle = rs.copy_bundle(work)
    report = work / "report"
    rc = main(["bench", str(bundle), "--checkpoint", str(rs.checkpoint_path()), "--batch", *map(str, BATCHES),
               "--modes", *MODES, "--warmup", "0.02", "--duration", "0.05", "--rounds", "3", "--threads", "1",
               "--report", str(report), "--no-progress", "--bake"])
    assert rc == 0
    return bundle, report, json.loads((report / "bench.json").read_text())


def test_bench_json_has_the_documented_figures(bench_run):
    bundle, report, res = bench_run
    assert JSON_KEYS <= set(res)
    assert res["schema"] == "oat-edge/bench" and res["config"]["threads"] == 1
    # one latency row per (mode, batch), each with ordered percentiles and a throughput
    got = {(r["lam"], r["width"], r["batch"]) for r in res["latency"]}
    want = {(float(m.split(":")[0]), float(m.split(":")[1]), b) for m in MODES for b in BATCHES}
    assert got == want
    for r in res["latency"]:
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["throughput_ips"] > 0 and r["rounds"] == 3 and len(r["round_p50_ms"]) == 3
        assert r["path"] == ("baked" if r["lam"] == 0.2 else "film")
    # baselines from the same run: eager per width and batch, FiLM vs baked for the baked mode
    assert {(r["width"], r["batch"]) for r in res["eager"]} == {(w, b) for w in (0.5, 1.0) for b in BATCHES}
    assert all(r["lam"] == 1.0 and r["runtime_path"] == "film" for r in res["eager"])  # the non-baked λ
    assert {(r["width"], r["batch"]) for r in res["film_vs_baked"]} == {(w, b) for w in (0.5, 1.0) for b in BATCHES}
    sw = res["switch"]
    assert sw["offgrid_modes"] == [[0.37, 1.0]] and sw["set_mode_scope"] == "grid/baked modes"
    assert 0 < sw["set_mode_us"]["p50_us"] <= sw["set_mode_us"]["p99_us"]
    assert sw["naive"]["open_ms"]["n"] >= 3 * 3
    # wide margins that hold on any machine: a lookup switch is far cheaper than a new session,
    # and the eager model (FiLM MLPs + Python dispatch per call) slower than the exported graph
    assert sw["naive_over_set_mode_p50"] > 50
    assert all(r["eager_over_runtime"] > 1 for r in res["eager"] if r["batch"] == 1)
    assert res["load"]["construct_ms"]["n"] == 3 and res["load"]["cold_start"]["torch_imported"] is False
    assert res["memory"]["runtime_process_peak_rss_mb"] > 10
    assert res["device"]["cpu_model"] and "onnxruntime" in res["versions"]
    # every acceptance figure has a verdict; misses and unmeasured ones say why and what closes them
    assert "acceptance" not in res  # the targets are the project's (scripts/), not the shipped tool's
    acc = _acceptance(res)
    ids = {a["id"] for a in acc}
    assert {"switch_p99", "switch_vs_naive", "ort_vs_eager_b1", "width_0.5_vs_1.0_b32", "gpu_cuda_graphs"} <= ids
    for a in acc:
        assert a["verdict"] in ("PASS", "MISS", "NOT MEASURED", "INFO")
        if a["verdict"] not in ("PASS", "INFO"):  # INFO: a figure reported without a target
            assert a["why"] and a["to_close"]
    assert {"film_over_baked_w0.5", "held_over_exported_b1", "set_mode_during_bake_p99", "transition_p50"} <= ids
    width = next(a for a in acc if a["id"] == "width_0.5_vs_1.0_b32")
    assert width["verdict"] == "NOT MEASURED" and "32" in width["why"]  # the bundle's batch max is 16


def test_bench_measures_background_baking(bench_run):
    _bundle, _report, res = bench_run
    bk = res["baking"]
    # the exported baked mode (λ = 0.2) against the same mode baked at run time, per width and batch
    assert {(r["lam"], r["width"], r["batch"]) for r in bk["held_vs_exported"]} == {
        (0.2, w, b) for w in (0.5, 1.0) for b in BATCHES}
    assert all(r["runtime_over_exported"] > 0 for r in bk["held_vs_exported"])
    # the control: a second session of the same export, timed in the same rounds
    assert all(r["copy_over_exported"] > 0 and r["copy_p50_ms"] > 0 for r in bk["held_vs_exported"])
    assert {(r["width"], r["batch"]) for r in bk["held_runtime_infer"]} == {(w, b) for w in (0.5, 1.0) for b in BATCHES}
    # a bake (fold + session + parity) takes far longer than a set_mode lookup
    assert bk["transition_ms"]["n"] >= 3 * 3 and bk["transition_ms"]["p50_ms"] * 1e3 > 10 * bk["set_mode_idle_us"]["p50_us"]
    assert bk["set_mode_during_bake_us"]["n"] >= 200 * 3
    # the cache has room for the grid the set_mode block switches over: those switches are hits
    assert bk["config"]["capacity"] >= 4 * 2 + 4 and bk["stats"]["hits"] >= bk["set_mode_during_bake_us"]["n"] // 2
    assert bk["interference"] and bk["interference"][0]["during_bake"]["n"] >= 5
    mem = bk["memory"]
    assert not mem["errors"] and set(mem["baked_rss_mb"]) == {"1", "4", "8"}
    assert mem["baked_rss_mb"]["8"] >= mem["baked_rss_mb"]["1"] > mem["bundle_alone_rss_mb"] > 10
    assert bk["stats"]["bake_failures"] == 0 and bk["stats"]["bakes"] >= 10
    md = (_report / "report.md").read_text()
    assert "## Background baking" in md and "set_mode → baked live" in md


def test_bench_report_pngs_and_markdown(bench_run):
    _bundle, report, res = bench_run
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert pngs == ["latency_modes.png", "latency_vs_width_b1.png", "latency_vs_width_b16.png", "switch_cost.png"]
    import matplotlib.image as mpimg

    for name in pngs:
        data = (report / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE
        img = mpimg.imread(report / name)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
        assert float(np.std(img)) > 0.01  # something is drawn
    md = (report / "report.md").read_text()
    assert "no calibration" in md and "(latency_vs_width_b16.png)" in md
    assert "## Acceptance figures" not in md  # no targets in the shipped report
    acc = _acceptance(res)
    md = bench_report.markdown({**res, "acceptance": acc})  # as scripts/bench_suite.py renders it
    assert "## Acceptance figures" in md
    for a in acc:
        assert a["criterion"] in md


def test_profile_is_written_into_the_bundle_and_select_uses_it(bench_run):
    from oat_edge.runtime import Runtime

    bundle, _report, res = bench_run
    prof = read_latency_profile(bundle, res["device_key"])  # the runtime's own reader validates it
    assert prof is not None and Path(prof["file"]).parent == bundle / "latency"
    assert res["outputs"]["profile"]["in_bundle"] is True
    by_key = {(r["lam"], r["width"], r["batch"], r["path"]): r["p50_ms"] for r in prof["records"]}
    for r in res["latency"]:
        assert by_key[(r["lam"], r["width"], r["batch"], r["path"])] == pytest.approx(r["p50_ms"])

    rt = Runtime(bundle, threads=1)
    assert rt.device_key == res["device_key"]
    for r in res["latency"]:  # the runtime's latency for a benched mode is the profile's, not a re-measurement
        assert rt.latency_ms(r["lam"], r["width"], r["batch"]) == pytest.approx(r["p50_ms"])

    batch = max(BATCHES)
    free = rt.select(batch=batch)
    assert free.width == 1.0
    # A budget between the two fastest p99 latencies the profile gives leaves exactly the fastest
    # mode(s): select must find them from the profile. (Which width that is, is the machine's
    # business: at these tiny sizes and 50 ms blocks width 0.5 once measured 1 % slower.)
    lat = {m: rt.latency_ms(m.lam, m.width, batch, quantile="p99") for m in rt.modes}
    fastest, second = sorted(set(lat.values()))[:2]
    chosen = rt.select(max_latency_ms=(fastest + second) / 2, batch=batch)
    assert lat[chosen] == fastest
    slowest = max(lat.values())
    assert rt.select(max_latency_ms=slowest * 1.001, batch=batch) == free  # everything fits: the widest again


def test_read_only_bundle_gets_a_warning_and_the_profile_goes_beside_the_report(bench_run, tmp_path):
    _bundle, _report, res = bench_run
    with pytest.warns(UserWarning, match="not writable"):
        out = bench.write_latency_profile(res, Path("/proc/oat-edge-bundle"), fallback_dir=tmp_path)
    assert out["in_bundle"] is False
    written = json.loads(Path(out["path"]).read_text())
    assert Path(out["path"]) == tmp_path / "latency" / f"{res['device_key']}.json"
    assert written["device_key"] == res["device_key"] and len(written["records"]) >= len(res["latency"])


def test_report_redraws_from_saved_json_with_a_tradeoff_chart(bench_run, tmp_path):
    """The report reads only the JSON; with calibration records it draws SA/RA against latency."""
    _bundle, _report, res = bench_run
    res = json.loads(json.dumps(res))
    res["calibration"] = {"attacks": {"pgd7": {}}, "records": [
        {"lam": r["lam"], "width": r["width"], "sa": 0.9 - 0.2 * r["lam"], "ra": {"pgd7": 0.2 + 0.3 * r["lam"]}}
        for r in res["latency"] if r["batch"] == 1]}
    res["bundle"]["has_calibration"] = True
    pts = bench_plots.tradeoff_points(res, 1)
    assert len(pts) == len(MODES) and all(p["attack"] == "pgd7" for p in pts)
    paths = bench_plots.write_plots(res, tmp_path)
    assert (tmp_path / "tradeoff.png") in paths and (tmp_path / "tradeoff.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "![trade-off](tradeoff.png)" in bench_report.markdown(res)


def _one_error(capsys, argv, *needles):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("oat-edge bench: error:"), err
    for n in needles:
        assert n in err[0]
    return err[0]


@pytest.mark.parametrize("argv, needles", [
    (["--backend", "tensorflow"], ("unknown backend", "onnxruntime")),
    (["--batch", "64"], ("batch 64", "1..16")),
    (["--modes", "0.5"], ("λ:width",)),
    (["--modes", "a:b"], ("λ:width",)),
    (["--modes", "1:0.6"], ("never trained", "0.5")),
    (["--modes", "1.5:1"], ("λ must be in [0, 1]",)),
    (["--rounds", "0"], ("--rounds",)),
])
def test_bad_input_gets_one_clear_error(capsys, tmp_path, argv, needles):
    bundle = rs.bundle_path()
    _one_error(capsys, ["bench", str(bundle), "--no-progress", "--duration", "0.01", *argv], *needles)
    assert not (bundle / "latency").exists()  # nothing was written to the shared bundle


def test_missing_bundle_and_cuda_without_gpu(capsys, tmp_path):
    _one_error(capsys, ["bench", str(tmp_path / "nope"), "--no-progress"], "does not exist")
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the guard does not apply")
    _one_error(capsys, ["bench", str(rs.bundle_path()), "--backend", "torch", "--device", "cuda", "--no-progress"],
               "CUDA")


def test_interleaved_schedule_and_statistics():
    orders = scheduling.round_orders(10, 4)
    assert all(sorted(o) == list(range(10)) for o in orders)
    assert len({o[0] for o in orders}) == 4  # no variant always goes first
    assert orders[1] != orders[0][::-1] or orders[1][0] != orders[0][0]
    s = stats.summarize_ns([1_000_000 * v for v in range(1, 101)])
    assert s["p50_ms"] == pytest.approx(np.percentile(np.arange(1, 101), 50))
    assert s["p99_ms"] == pytest.approx(np.percentile(np.arange(1, 101), 99)) and s["n"] == 100
    agg = stats.median_across_rounds([stats.summarize_ns([1e6] * 5), stats.summarize_ns([3e6] * 5),
                                      stats.summarize_ns([100e6] * 5)])
    assert agg["p50_ms"] == pytest.approx(3.0) and agg["n"] == 15  # one disturbed round does not move it
    assert math.isclose(stats.ratio(4.0, 2.0), 2.0) and stats.ratio(1.0, 0.0) is None


def test_paired_chunks_spread_a_drifting_host_over_every_variant():
    """The held-vs-exported comparison times its variants in rotating chunks inside one block: a
    host that slows down over the block then bills every variant alike."""
    from oat_edge.bench.baking import paired_chunks

    start = time.perf_counter()
    calls = []

    def drifting(name):
        def call(_x):
            calls.append(name)
            t = time.perf_counter() - start
            time.sleep(100e-6 * (1 + 4 * t))  # a host that gets 2.2x slower over the 0.3 s block
        return call

    out = paired_chunks({k: drifting(k) for k in "abc"}, None, 0.3, chunk_s=0.002)
    p50 = {k: float(np.median(v)) for k, v in out.items()}
    assert max(p50.values()) / min(p50.values()) < 1.15  # block by block, c would be ~1.5x a
    assert all(len(v) >= 2 * 4 for v in out.values())
    # chunks rotate forwards then backwards: a b c c b a a b c ...
    runs = [k for i, k in enumerate(calls) if i == 0 or calls[i - 1] != k]
    assert runs[:5] == ["a", "b", "c", "b", "a"]
    # calls longer than a chunk: one timed call per chunk and no untimed re-warm after the first
    calls.clear()
    slow = paired_chunks({k: drifting(k) for k in "ab"}, None, 0.0, chunk_s=50e-6, min_turns=6)
    assert [len(v) for v in slow.values()] == [2 + 5, 2 + 5] and len(calls) == 2 * (1 + 2 + 5)


def test_tune_threads_records_the_best_count_per_path_and_the_runtime_uses_it(tmp_path):
    """--tune-threads: every mode at every candidate thread count in the same rounds, the best
    count per path and batch in the profile, GMAC/s against a measured sgemm peak; then
    Runtime(threads="tuned") opens each path with its recorded count."""
    from oat_edge.bench.threads import candidate_threads
    from oat_edge.host import default_threads
    from oat_edge.runtime import Runtime

    bundle = rs.copy_bundle(tmp_path)
    out = tmp_path / "b.json"
    rc = main(["bench", str(bundle), "--batch", "1", "16", "--modes", "0:0.5", "0.37:0.5", "0.37:1", "--warmup", "0.02",
               "--duration", "0.05", "--rounds", "2", "--threads", "1", "--no-naive", "--tune-threads",
               "--json", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads(out.read_text())
    th = res["threads"]
    cands = sorted(set(candidate_threads(default_threads())) | {1})
    assert th["candidates"] == cands and th["default_threads"] == 1
    assert {(r["lam"], r["width"], r["batch"]) for r in th["paths"]} == {(l, w, b) for l, w in ((0, 0.5), (0.37, 0.5), (0.37, 1.0))
                                                                         for b in (1, 16)}
    peaks = {p["threads"]: p["best_gmacs"] for p in th["sgemm_peak"]}
    assert set(peaks) == set(cands) and all(v > 1 for v in peaks.values())
    for r in th["paths"]:
        by_t = {int(t): v for t, v in r["p50_ms_by_threads"].items()}
        assert set(by_t) == set(cands) and r["best_p50_ms"] == min(by_t.values()) == by_t[r["best_threads"]]
        macs = next(p["flops"] for p in rs_manifest(bundle)["paths"] if p["width"] == r["width"])
        assert r["gmacs_by_threads"][str(r["best_threads"])] == pytest.approx(macs * r["batch"] / r["best_p50_ms"] / 1e6, rel=1e-2)
        assert 0 < r["share_of_peak"] < 2  # measured against the same machine's sgemm
    assert [(w["lam"], w["narrow"], w["wide"]) for w in th["width_ratio_tuned"]] == [(0.37, 0.5, 1.0)] * 2  # b1, b16
    assert all(0 < w["tuned_ratio"] and w["macs_ratio"] == pytest.approx(0.25, abs=0.05) for w in th["width_ratio_tuned"])

    prof = read_latency_profile(bundle, res["device_key"])
    table = prof["path_threads"]
    assert set(table) == {r["path_id"] for r in th["paths"]}
    rt = Runtime(bundle, threads="tuned")
    opt = rt.io.batch_opt
    for pid, by_batch in table.items():  # each path at its best count for the batch nearest batch.opt
        nearest = min(by_batch, key=lambda b: (abs(int(b) - opt), -int(b)))
        assert rt.backend.path_threads[pid] == by_batch[nearest]
    x = rs.sample_images(4, seed=2)
    ref = Runtime(bundle, threads=1)
    for lam, w in ((0.0, 0.5), (0.37, 1.0)):
        rt.set_mode(lam, w)
        ref.set_mode(lam, w)
        np.testing.assert_allclose(rt.infer(x), ref.infer(x), atol=1e-5)
    bare = Runtime(rs.copy_bundle(tmp_path / "untuned"), threads="tuned")  # no tuning recorded: says so, runs
    assert "bench --tune-threads" in bare.backend_reason and bare.infer(x).shape == (4, 10)


def rs_manifest(bundle) -> dict:
    return json.loads((Path(bundle) / "manifest.json").read_text())


def test_micro_measures_every_hot_path_piece_and_writes_nothing_into_the_bundle(tmp_path):
    """`oat-edge bench --micro`: set_mode per kind with each implementation, off-grid async with
    its publish time, set_mode while a bake runs, infer against the bare call — in the bench's
    rounds, so every figure has samples from every round."""
    from oat_edge.runtime import extension_available

    bundle = rs.copy_bundle(tmp_path)
    out = tmp_path / "micro.json"
    rc = main(["bench", str(bundle), "--micro", "--warmup", "0", "--duration", "0.02", "--rounds", "2",
               "--threads", "1", "--json", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["schema"] == "oat-edge/bench-micro" and res["config"]["rounds"] == 2
    impls = ["python"] + (["ext"] if extension_available() else [])
    rows = {(r["impl"], r["mode"]): r for r in res["set_mode"]}
    for impl in impls:
        assert {(impl, "grid"), (impl, "offgrid"), (impl, "baked")} <= set(rows)  # λ=0.2 is baked
    assert any(mode == "offgrid (async)" for _, mode in rows) and any("bake runs" in mode for _, mode in rows)
    for r in res["set_mode"]:
        assert r["n"] >= 2 * 5 and 0 < r["p50_us"] <= r["p99_us"]
    live = res["offgrid_async"]
    assert live["published"] >= 1 and live["live_ms_p50"] > 0
    assert set(res["infer_b1"]) == {"runtime", "bare"}
    assert not (bundle / "latency").exists()


def test_micro_refuses_the_standard_benchmark_options(capsys):
    bundle = rs.bundle_path()
    _one_error(capsys, ["bench", str(bundle), "--micro", "--bake", "--no-progress"], "--micro", "--bake")


def test_timed_calls_runs_after_untimed_after_every_call():
    events = []
    samples = scheduling.timed_calls(lambda: events.append("call"), 0.0, min_iters=4, rewarm=1,
                                     after=lambda: events.append("after"))
    assert len(samples) == 4 and events == ["call", "after"] * 5


def test_maintainer_scripts_use_public_names_and_import_each_other_by_name():
    """Scripts reuse the product through its public names, and each other as sibling modules
    (never by file path or a sys.path edit)."""
    import ast

    root = Path(__file__).resolve().parent.parent
    bad = []
    for path in sorted([*(root / "scripts").glob("*.py"), *(root / "benchmarks").glob("*.py")]):
        text = path.read_text(encoding="utf-8")
        for needle in ("spec_from_file_location", "sys.path.insert", "sys.path.append"):
            if needle in text:
                bad.append(f"{path.name}: {needle}")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("oat_edge"):
                names = [a.name for a in node.names] + node.module.split(".")
            elif isinstance(node, ast.Import):
                names = [part for a in node.names if a.name.startswith("oat_edge") for part in a.name.split(".")]
            else:
                continue
            bad += [f"{path.name}: {n}" for n in names if n.startswith("_") and n != "__version__"]
    assert not bad, "\n".join(bad)
def _cpu_peers():
    path = Path(__file__).resolve().parent.parent / "scripts" / "cpu_peers.py"
    spec = importlib.util.spec_from_file_location("oat_edge_benchmarks_cpu_peers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cpu_peers_records_an_engine_that_cannot_run_and_summarizes_the_rest():
    """scripts/cpu_peers.py: an engine that fails to build is recorded with its error, the
    others still measured; ratios to the best engine and to onnxruntime, the sgemm share and
    FiLM ÷ baked come from the tuned (fastest) thread count of each engine."""
    from oat_edge.bench.scheduling import run_interleaved
    from oat_edge.bench.stats import aggregate

    peers = _cpu_peers()
    legacy = Path(__file__).resolve().parent / "fixtures" / "legacy_bundle"
    m = json.loads((legacy / "manifest.json").read_text())
    baked = m["baked"][0]
    entry = next(e for e in m["paths"] if e["width"] == baked["width"] and e["bn"] == "a")
    film = np.zeros(entry["film_size"], np.float32)
    paths = [(baked["width"], "baked", baked, (legacy / baked["file"]).read_bytes(), None, None),
             (entry["width"], "film", entry, (legacy / entry["file"]).read_bytes(), film, None)]
    errors = {}
    blocks, parity = peers.build_blocks([("digits", paths, (1, 8, 8))], ["onnxruntime", "inductor"], [1], [1], errors)
    assert set(errors) == {"inductor"} and errors["inductor"]  # no frozen module: recorded, not raised
    assert [b.meta["engine"] for b in blocks] == ["onnxruntime", "onnxruntime"]
    stats = {k: aggregate(v) for k, v in run_interleaved(blocks, 1, 0.0, 0.0).items()}
    table, film_ratio = peers.summarize(blocks, stats, parity, {1: {"best_gmacs": 10.0}})
    assert {(r["path"], r["engine"], r["ratio_to_best"], r["ratio_to_onnxruntime"]) for r in table} == \
        {("baked", "onnxruntime", 1.0, 1.0), ("film", "onnxruntime", 1.0, 1.0)}
    assert all(0 < r["share_of_peak"] and r["max_abs_diff_vs_onnxruntime"] == 0.0 for r in table)
    (ratio,) = film_ratio
    film_row = next(r for r in table if r["path"] == "film")
    baked_row = next(r for r in table if r["path"] == "baked")
    assert ratio["film_over_baked"] == pytest.approx(film_row["p50_ms"] / baked_row["p50_ms"])
