"""The results dict of one benchmark run (the JSON file, docs/benchmarking.md): configuration,
environment, and one table per figure, from the blocks' aggregated statistics."""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from oat_edge.bench.host import current_rss_mb, library_versions, peak_rss_mb
from oat_edge.bench.stats import find_row, ms_summary, ratio, throughput, us_summary

if TYPE_CHECKING:
    from oat_edge.bench.run import BenchRun

SCHEMA = "oat-edge/bench"
SCHEMA_VERSION = 1


def _latency_rows(blocks, stats):
    """Rows of the latency tables: {"runtime": [...], "path": [...], "eager": [...]}."""
    tables = {"runtime": [], "path": [], "eager": []}
    for b in blocks:
        meta = b.meta
        if meta["kind"] not in tables:
            continue
        s = stats[b.key]["latency"]
        row = {k: meta[k] for k in ("lam", "width", "batch")}
        if meta.get("precision", "fp32") != "fp32":
            row["precision"] = meta["precision"]
        if "path" in meta:
            row["path"] = meta["path"]
            row["path_id"] = meta["path_id"]
        row.update({k: s[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "n", "rounds",
                                      "round_p50_ms")})
        row["throughput_ips"] = throughput(meta["batch"], s)
        # max/min of the per-round medians: > stats.UNSTABLE_SPREAD means the host moved under us
        row["round_spread"] = ratio(max(s["round_p50_ms"]), min(s["round_p50_ms"]))
        tables[meta["kind"]].append(row)
    return tables


def _film_vs_baked(paths):
    out = []
    for r in paths:
        if r["path"] != "film":
            continue
        prec = r.get("precision") or "fp32"
        bk = find_row(paths, r["lam"], r["width"], r["batch"], "baked", prec)
        out.append({"lam": r["lam"], "width": r["width"], "batch": r["batch"], "film_p50_ms": r["p50_ms"],
                    "baked_p50_ms": bk["p50_ms"], "film_over_baked": ratio(r["p50_ms"], bk["p50_ms"]),
                    **({"precision": prec} if prec != "fp32" else {})})
    return out


def _eager_vs_runtime(eager, latency) -> None:
    for r in eager:
        rr = find_row(latency, r["lam"], r["width"], r["batch"])
        r["runtime_p50_ms"] = rr["p50_ms"] if rr else None
        r["runtime_path"] = rr["path"] if rr else None
        r["eager_over_runtime"] = ratio(r["p50_ms"], rr["p50_ms"] if rr else None)


def _switch(blocks, stats) -> dict:
    sw = stats["switch"]
    swm = next(b.meta for b in blocks if b.key == "switch")
    # The headline is the switch to a grid λ or baked mode (a lookup); off-grid λ compute their
    # FiLM vector in set_mode and are reported apart (or alone, when no grid mode was asked for).
    grid_key = "set_mode" if "set_mode" in sw else "set_mode_offgrid"
    switch = {
        "batch": swm["batch"],
        "cycle": swm["cycle"],
        "offgrid_modes": swm["offgrid"],
        "set_mode_scope": "grid/baked modes" if grid_key == "set_mode" else "off-grid λ only",
        "set_mode_us": us_summary(sw[grid_key]),
        "set_mode_offgrid_us": us_summary(sw["set_mode_offgrid"]) if "set_mode_offgrid" in sw else None,
        "set_mode_plus_first_infer_ms": ms_summary(sw["set_mode_plus_first_infer"]),
        "first_infer_after_switch_ms": ms_summary(sw["first_infer_after_switch"]),
        "steady_infer_ms": ms_summary(sw["steady_infer"]),
    }
    switch["first_infer_overhead_ms"] = (switch["set_mode_plus_first_infer_ms"]["p50_ms"]
                                         - switch["steady_infer_ms"]["p50_ms"])
    if "naive" in stats:
        nv = stats["naive"]
        switch["naive"] = {"path_ids": next(b.meta["path_ids"] for b in blocks if b.key == "naive"),
                           "open_ms": ms_summary(nv["naive_open"]),
                           "open_plus_first_infer_ms": ms_summary(nv["naive_open_plus_first_infer"])}
        switch["naive_over_set_mode_p50"] = ratio(nv["naive_open"]["p50_ms"], sw[grid_key]["p50_ms"])
        switch["naive_over_set_mode_p99"] = ratio(nv["naive_open"]["p50_ms"], sw[grid_key]["p99_ms"])
        switch["naive_over_fast_first_infer_p50"] = ratio(nv["naive_open_plus_first_infer"]["p50_ms"],
                                                          sw["set_mode_plus_first_infer"]["p50_ms"])
    else:
        switch["naive"] = None
    return switch


def _load_and_memory(run: BenchRun, stats):
    load = {"first_construct_s": run.first_load_s, "construct_ms": ms_summary(stats["load"]["load"])}
    memory = {"bench_process_peak_rss_mb": peak_rss_mb(), "bench_process_rss_mb": current_rss_mb(),
              "gpu_max_allocated_mb": run.gpu_peak}
    fp = run.footprint
    if fp is not None:
        load["cold_start"] = fp
        memory["runtime_process_peak_rss_mb"] = fp.get("peak_rss_mb")
        if fp.get("gpu_max_allocated_mb") is not None:
            memory["runtime_gpu_max_allocated_mb"] = fp["gpu_max_allocated_mb"]
    return load, memory


def assemble(run: BenchRun, rt, blocks, stats) -> dict:
    """The results dict (the JSON file): configuration, environment, and one table per figure."""
    tables = _latency_rows(blocks, stats)
    latency, paths, eager = tables["runtime"], tables["path"], tables["eager"]
    _eager_vs_runtime(eager, latency)
    load, memory = _load_and_memory(run, stats)
    manifest = run.manifest
    paths_by_id = {p["id"]: p for p in manifest.get("paths", [])}
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": run.command,
        "wall_s": round(time.time() - run.started, 2),
        "bundle": {
            "path": str(run.bundle), "arch": manifest["model"]["arch"], "widths": manifest["model"]["widths"],
            "input_shape": manifest["model"]["input_shape"], "batch_profile": manifest.get("batch"),
            "source": manifest.get("source"),
            "baked": [{"lam": e["lam"], "width": e["width"], "id": e["id"]} for e in manifest.get("baked") or []],
            "path_flops": {pid: p.get("flops") for pid, p in paths_by_id.items()},
            "has_calibration": bool(manifest.get("calibration")),
        },
        "config": {"backend": rt.backend_name, "backend_requested": run.backend, "device": run.device,
                   "threads": run.threads, "pinned_cpus": run.pinned, "batches": list(run.batches),
                   "modes": [[m.lam, m.width] for m in run.modes], "warmup_s": run.warmup_s,
                   "duration_s": run.duration_s, "rounds": run.rounds,
                   "checkpoint": str(run.checkpoint) if run.checkpoint else None,
                   "providers": run.providers},
        "device_key": rt.device_key,
        "runtime": {"impl": rt.impl, "backend": rt.backend.describe(), "backend_reason": rt.backend_reason},
        "device": {**run.device_info, "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "versions": library_versions(),
        "timer": run.overhead,
        "latency": latency,
        "film_vs_baked": _film_vs_baked(paths),
        "film_vs_baked_paths": paths,
        "eager": eager,
        "eager_info": run.eager_info,
        "switch": _switch(blocks, stats),
        "load": load,
        "memory": memory,
        "calibration": manifest.get("calibration"),
    }
