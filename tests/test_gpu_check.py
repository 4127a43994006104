"""The GPU checker (scripts/gpu_check.py, scripts/gpu_check.sh) on a machine without CUDA:
its CUDA parts must record "skipped: no CUDA device" and report no GPU figure, and the parts
that run on the CPU (the backend checks as a dry run, the one-process torchrun over gloo) must
really run and pass. Keeps the script that a GPU machine runs once from rotting here."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runtime_support import bundle_path, checkpoint_path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import gpu_check  # noqa: E402

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the CPU path does not apply")


def _strict_json(path: Path):
    def bad(token):
        raise ValueError(f"{path} holds {token}")

    return json.loads(path.read_text(), parse_constant=bad)


@needs_no_cuda
def test_cpu_run_skips_every_cuda_part_and_dry_runs_the_backend(tmp_path):
    out = tmp_path / "out"
    rc = gpu_check.main([str(out), "--quick", "--suite", "none", "--skip", "train", "ddp",
                         "--bundle", str(bundle_path()), "--checkpoint", str(checkpoint_path()),
                         "--work-dir", str(tmp_path / "work")])
    assert rc == 0
    files = {p.name for p in out.glob("*.json")}
    assert {"env.json", "backend.json", "throughput.json", "bench_run.json", "summary.json"} <= files
    for p in out.glob("*.json"):
        _strict_json(p)  # plain JSON: no NaN / Infinity

    summary = _strict_json(out / "summary.json")
    assert summary["cuda"] is False and summary["cuda_skipped"].startswith("no CUDA device")
    by_id = {a["id"]: a for a in summary["acceptance"]}
    for id_ in ("parity", "graphs_vs_eager_b1", "concurrency", "gpu_memory", "throughput", "amp_training",
                "nccl_ddp", "bench_cuda"):
        assert by_id[id_]["verdict"] == "NOT MEASURED", id_
        assert by_id[id_]["value"] is None, id_  # no GPU figure is reported
    for sec, name in (("backend", "backend"), ("throughput", "throughput"), ("bench", "bench_run")):
        rec = _strict_json(out / f"{name}.json")
        assert rec["status"] == "skipped" and rec["reason"].startswith("no CUDA device"), sec

    dry = _strict_json(out / "backend.json")["cpu_dry_run"]
    assert dry["device"] == "cpu"
    for part in ("grid", "off_grid"):
        assert dry["parity"][part]["modes"] > 0
        assert dry["parity"][part]["worst_abs_diff"] <= gpu_check.PARITY_TOL
        assert dry["parity"][part]["worst_top1"] == 1.0
    conc = dry["concurrency"]
    assert conc["ok"] and conc["frames"] == gpu_check.SIZES["frames"][1] and conc["switches"] > 0
    assert dry["batches"] == [1, 8] and dry["batches_outside_bundle_profile"] == [32]  # the bundle's max is 16
    rows = {(r["variant"], r["batch"]) for r in dry["latency"]["rows"]}
    assert rows == {(v, b) for v in ("runtime_cpu", "pytorch_model_eager") for b in (1, 8)}
    assert dry["switch"]["set_mode_grid_or_baked_us"]["n"] == gpu_check.SIZES["switch_calls"][1]

    md = (out / "summary.md").read_text()
    assert "No CUDA device on this machine" in md and "not a GPU figure" in md
    env = _strict_json(out / "env.json")
    assert env["torch"]["cuda_available"] is False and env["torch"]["version"] == torch.__version__


@needs_no_cuda
def test_one_process_torchrun_joins_a_process_group(tmp_path):
    """A one-process torchrun runs the DDP code (gloo here; nccl on a GPU) — with WORLD_SIZE 1
    the trainer used to skip the process group, so the nccl path could not be checked on one GPU."""
    out = tmp_path / "out"
    rc = gpu_check.main([str(out), "--only", "ddp", "--work-dir", str(tmp_path / "work")])
    rec = _strict_json(out / "ddp.json")
    assert rc == 0, rec
    assert rec["status"] == "skipped" and "nccl not exercised" in rec["reason"]
    dry = rec["cpu_dry_run"]
    assert dry["status"] == "ok", dry["run"]["tail"]
    assert dry["process_group"] and dry["backend"] == "gloo" and dry["world_size"] == 1 and dry["ddp_wrapped"]
    assert dry["checkpoint_written"] and math.isfinite(dry["history"][0]["loss"])


@needs_no_cuda
def test_shell_script_runs_without_install_and_rejects_bad_use(tmp_path):
    script = REPO / "scripts" / "gpu_check.sh"
    env = dict(os.environ, NO_INSTALL="1", PYTHON=sys.executable)
    bad = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "usage" in bad.stderr
    out = tmp_path / "out"
    ok = subprocess.run(["bash", str(script), str(out), "--only", "env", "throughput", "--suite", "none"],
                        capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "C++ extension:" in ok.stdout
    summary = _strict_json(out / "summary.json")
    assert [s["section"] for s in summary["sections"]] == ["env", "throughput"]
    assert (out / "logs" / "gpu_check.log").read_text().count("[gpu_check]") >= 3


def test_device_cuda_without_one_is_one_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit, match="--device cuda, but no CUDA device"):
        gpu_check.main([str(tmp_path / "out"), "--device", "cuda", "--only", "env"])


@pytest.mark.parametrize("argv,message", [
    (["--bundle", "x"], "--bundle and --checkpoint go together"),
    (["--budget-s", "0"], "--budget-s must be > 0"),
])
def test_bad_arguments_are_one_clear_error(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        gpu_check.parse_args([str(tmp_path / "out"), *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def _run(loss, sa0, ra1):
    return {"history": [{"loss": loss}], "eval": [{"lam": 0.0, "width": 1.0, "sa": sa0, "ra": {"pgd7": 0.0}},
                                                  {"lam": 1.0, "width": 1.0, "sa": 0.5, "ra": {"pgd7": ra1}}]}


def test_cuda_vs_cpu_training_sanity_catches_a_broken_run():
    cpu = _run(2.0, 0.90, 0.40)
    assert gpu_check.compare_runs(_run(2.2, 0.85, 0.45), cpu)["ok"]
    assert not gpu_check.compare_runs(_run(float("nan"), 0.90, 0.40), cpu)["ok"]  # NaN loss
    assert not gpu_check.compare_runs(_run(2.0, 0.10, 0.40), cpu)["ok"]  # learned nothing
    assert not gpu_check.compare_runs(_run(2.0, 0.90, 0.05), cpu)["ok"]  # no robustness


def test_graph_speedup_is_eager_over_graphs_per_batch():
    lat = {"rows": [{"variant": "runtime_graphs", "batch": 1, "cuda_events_ms": {"p50": 0.1}},
                    {"variant": "runtime_eager", "batch": 1, "cuda_events_ms": {"p50": 0.5}},
                    {"variant": "runtime_graphs", "batch": 8, "cuda_events_ms": {"p50": 0.2}}]}
    assert gpu_check.graph_speedup(lat, "cuda_events_ms") == {"1": pytest.approx(5.0), "8": None}


def _lat_row(variant, batch, p50):
    stats = {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.5, "mean": p50, "min": p50 * 0.9, "n": 10}
    return {"variant": variant, "batch": batch, "cuda_events_ms": stats, "host_ms": stats}


def _parity(worst):
    return {"modes": 3, "images": 64, "worst_abs_diff": worst, "worst_top1": 1.0,
            "worst_mode": {"lam": 0.5, "width": 1.0, "path": "a_w1"}, "rows": []}


def test_summary_of_a_cuda_run_renders_every_acceptance_figure(tmp_path):
    """The summary code for CUDA results cannot run here for real: feed it records shaped like
    the CUDA sections' (same keys) and check verdicts and the markdown."""
    from types import SimpleNamespace

    pct = {"p50": 1.0, "p90": 1.0, "p99": 2.0, "mean": 1.0, "min": 1.0, "n": 5}
    rows = [_lat_row(v, b, p) for b in (1, 8, 32) for v, p in
            (("runtime_graphs", 0.1 * b), ("runtime_eager", 0.5 + 0.05 * b), ("pytorch_model_eager", 0.8))]
    latency = {"rows": rows, "mode": {"lam": 0.5, "width": 1.0, "path": "a_w1"}, "inputs": "CUDA tensors in and out"}
    latency["graphs_speedup_p50"] = gpu_check.graph_speedup(latency, "cuda_events_ms")
    history = [{"epoch": 1, "loss": 2.0, "clean_acc": 0.5, "adv_acc": 0.2, "seconds": 1.0, "images_per_s": 900.0}]
    evals = _run(2.0, 0.9, 0.4)["eval"]
    train_run = {"device": "cuda:0", "amp": "bfloat16", "channels_last": True, "history": history, "eval": evals}
    results = {
        "env": {"status": "ok", "oat_edge": "0.1.0", "git": {"commit": "0123456789abc"},
                "nvidia_smi": [{"name": "NVIDIA H200", "driver_version": "580.159.03"}],
                "torch": {"version": "2.11.0+cu130", "cuda": "13.0", "device": "NVIDIA H200",
                          "compute_capability": "9.0", "memory_gib": 139.8, "cudnn": 91002, "nccl": "2.27.7"}},
        "train": {"status": "ok", "cuda": train_run, "cpu": {**train_run, "device": "cpu", "amp": "off"},
                  "sanity": {"ok": True, "checks": {}},
                  "bundle": {"paths": 6, "baked_paths": 6, "widths": [0.5, 0.75, 1.0], "baked": [0.0, 1.0],
                             "seconds": 9.0, "from": "cuda", "ops": ["Conv"]}},
        "backend": {"status": "ok", "device": "cuda", "batches": [1, 8, 32],
                    "parity": {"grid": _parity(3e-5), "off_grid": _parity(6e-5), "tf32_off_grid": _parity(2e-6)},
                    "concurrency": {"ok": True, "frames": 4000, "threads": 2, "switches": 9000, "modes": 18,
                                    "modes_seen": 18, "frames_matching_no_mode": 0, "frames_with_wrong_mode": 0,
                                    "inputs": "numpy and CUDA tensors alternating"},
                    "latency": latency,
                    "switch": {"set_mode_grid_or_baked_us": pct, "set_mode_off_grid_us": pct,
                               "first_infer_after_switch_ms": pct, "steady_infer_ms": pct, "timer": "CUDA events"},
                    "memory": {"runtime_allocated_mb": 42.0, "after_construct_graphs": {"allocated_mb": 50.0,
                                                                                         "max_allocated_mb": 60.0}}},
        "ddp": {"status": "ok", "process_group": True, "backend": "nccl", "world_size": 1, "ddp_wrapped": True,
                "device": "cuda:0", "amp": "bfloat16", "checkpoint_written": True},
        "throughput": {"status": "ok", "batch_size": 128, "amp": "auto: bf16", "ratios": {"oat vs pgd-at": 1.05,
                                                                                         "oats vs pgd-ats": 1.2},
                       "results": [{"pair": "oat vs pgd-at", "cost_ratio": 1.05,
                                    "images_per_s": {"oat": {"median": 950.0}, "pgd-at": {"median": 1000.0}}},
                                   {"pair": "oats vs pgd-ats", "cost_ratio": 1.2,
                                    "images_per_s": {"oats": {"median": 250.0}, "pgd-ats": {"median": 300.0}}}]},
        "bench": {"status": "ok", "memory": {"gpu_max_allocated_mb": 123.4}},
    }
    ctx = SimpleNamespace(cuda=True, cuda_reason=None, cuda_why=None, results=results)
    by_id = {a["id"]: a for a in gpu_check.acceptance(ctx)}
    assert by_id["device"]["verdict"] == "RECORDED" and "driver 580.159.03" in by_id["device"]["value"]
    assert by_id["parity"]["verdict"] == "PASS" and by_id["parity"]["value"] == 6e-5
    assert by_id["graphs_vs_eager_b1"]["verdict"] == "PASS" and by_id["graphs_vs_eager_b1"]["value"] == pytest.approx(5.5)
    assert by_id["graphs_vs_eager_b32"]["value"] == pytest.approx(2.1 / 3.2)  # recorded, no goal
    assert by_id["throughput oat vs pgd-at"]["verdict"] == "PASS"
    assert by_id["throughput oats vs pgd-ats"]["verdict"] == "MISS"
    assert by_id["nccl_ddp"]["verdict"] == "PASS" and by_id["amp_training"]["verdict"] == "PASS"
    assert by_id["gpu_memory"]["value"] == 42.0 and by_id["bench_cuda"]["value"] == 123.4
    ddp = results["ddp"]
    results["ddp"] = {"status": "failed", "reason": "torchrun exit 1"}
    assert {a["id"]: a for a in gpu_check.acceptance(ctx)}["nccl_ddp"]["verdict"] == "FAILED"
    del results["ddp"]  # a run with --only that leaves the section out: not measured, not failed
    row = {a["id"]: a for a in gpu_check.acceptance(ctx)}["nccl_ddp"]
    assert row["verdict"] == "NOT MEASURED" and row["detail"] == "section did not run"
    results["ddp"] = ddp

    summary = {"created": "now", "command": "gpu_check.py out", "wall_s": 300.0, "acceptance": gpu_check.acceptance(ctx),
               "sections": [{"section": k, "status": v["status"], "seconds": 1.0} for k, v in results.items()]}
    md = gpu_check.markdown(ctx, summary)
    assert "**Device:** NVIDIA H200" in md and "driver 580.159.03" in md and "NCCL 2.27.7" in md
    assert "| runtime_graphs | 1 | 0.1000 |" in md and "not a GPU figure" not in md
    assert "| oats vs pgd-ats | 250.0 | 300.0 | 1.200 |" in md


def test_summary_survives_a_cuda_check_that_raised():
    """On the one GPU run a check may raise: the others' figures and the summary must survive."""
    from types import SimpleNamespace

    broken = {"status": "failed", "reason": "RuntimeError: operation not permitted when stream is capturing"}
    results = {"backend": {"status": "failed", "reason": "latency raised", "device": "cuda", "batches": [1, 8, 32],
                           "errors": ["latency", "grid"], "parity": {"grid": broken}, "latency": broken,
                           "concurrency": broken, "memory": {}}}
    ctx = SimpleNamespace(cuda=True, cuda_reason=None, cuda_why=None, results=results)
    rows = gpu_check.acceptance(ctx)
    by_id = {a["id"]: a for a in rows}
    assert by_id["parity"]["verdict"] == "FAILED" and "stream is capturing" in by_id["parity"]["detail"]
    assert by_id["graphs_vs_eager_b1"]["verdict"] == "FAILED" and by_id["concurrency"]["verdict"] == "FAILED"
    md = gpu_check.markdown(ctx, {"created": "now", "command": "c", "wall_s": 1.0, "acceptance": rows, "sections": []})
    assert "**latency raised:** RuntimeError: operation not permitted" in md


def test_a_pytest_run_cut_short_still_reports_its_failures(tmp_path):
    # The GPU run's fast suite hit its budget before pytest wrote the JUnit file, and the
    # record said nothing about which tests had failed. The -v log says it.
    log = tmp_path / "pytest_fast.log"
    log.write_text("[gw1] [ 10%] PASSED tests/test_a.py::t1 \n[gw2] [ 11%] FAILED tests/test_a.py::t2[x-1] \n"
                   "tests/test_b.py::t3 SKIPPED (no CUDA)\ntests/test_b.py::t4 PASSED [50%]\nFatal Python error\n")
    counts = gpu_check._log_counts(log)
    assert counts["partial"] and counts["tests"] == 4 and counts["passed"] == 2 and counts["skipped"] == 1
    assert counts["failing"] == ["tests/test_a.py::t2[x-1]"]
    log.write_text("bringing up nodes...\n")
    assert gpu_check._log_counts(log) is None
