"""CPU inference engines side by side on the same frozen paths: ONNX Runtime (the runtime's
default), OpenVINO's CPU plugin (latency and throughput hints, fp32 inference precision) and
torch.compile with the inductor CPU backend, for the digits model and ResNet-34 OATS.

    python scripts/cpu_peers.py --digits-ckpt demo_out/ckpt.pt [--resnet34-ckpt r34.pt]

Per model it exports (or reuses) a bundle at widths 0.5 and 1 with the mode λ = ``--lam`` baked,
then measures, for every width, batch (1, 8, 32) and path — ``baked`` (one mode, FiLM folded
into the weights) and ``film`` (the BN_a path, FiLM vector as a graph input) — each engine at
each candidate thread count (1, 2, 4 ... up to the CPUs this process may use). ONNX Runtime and
OpenVINO run the bundle's ONNX file; inductor compiles the frozen torch module the file was
exported from (``export.freeze.freeze_path``). All variants run in one interleaved schedule
(``oat_edge.bench.scheduling``: warm-up, then rounds in rotated order); a variant's figure is
the median across rounds of each round's p50 / p99.

Reported per (model, width, batch, path): each engine at its best thread count (the tuned one),
p50 and p99, the ratio to the best engine and to ONNX Runtime, GMAC/s and the share of this
CPU's fp32 sgemm peak at that thread count (``oat_edge.bench.threads.measure_sgemm_peak``), and
max |Δlogit| against ONNX Runtime. Per engine, the FiLM path ÷ baked ratio. An engine that
cannot run here (OpenVINO not installed, inductor without a working C++ compiler) is recorded
with its error instead of stopping the run. Without ``--resnet34-ckpt`` ResNet-34 has random
weights (latency only). The OpenVINO throughput hint is measured the same way, one synchronous
call at a time: it sets up several streams, which only pay off with concurrent requests.

Writes benchmarks/results/cpu_peers/cpu_peers.{json,md} (``--out-dir``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

ENGINES = ("onnxruntime", "openvino-latency", "openvino-throughput", "inductor")
REFERENCE = "onnxruntime"


# --- bundles ---------------------------------------------------------------------------------------
def bundle_for(name: str, ckpt: Path, work: Path, lam: float, widths) -> Path:
    from oat_edge.export import export_bundle

    out = work / f"{name}_bundle"
    if (out / "manifest.json").is_file() and (out / "manifest.json").stat().st_mtime > ckpt.stat().st_mtime:
        print(f"reusing {out}", flush=True)
        return out
    export_bundle(ckpt, out, widths=list(widths), batch=(1, 8, 32), bake=[lam], tensorrt="off", force=True,
                  progress=False, parity_images=16)
    return out


def resnet34_checkpoint(work: Path) -> Path:
    import bench_suite

    path = work / "resnet34_random.pt"
    if not path.is_file():
        bench_suite.save_random_checkpoint(path, "resnet34", {}, [3, 32, 32], [0.5, 1.0], "cifar10")
    return path


def paths_of(bundle: Path, ckpt: Path, lam: float, widths):
    """[(width, kind, manifest entry, onnx bytes, film vector or None, frozen torch module)]."""
    from oat_edge.bundle.names import baked_id, path_id
    from oat_edge.checkpoint import load_model
    from oat_edge.export.freeze import freeze_path
    from oat_edge.mode import bn_branch
    from oat_edge.runtime import Runtime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rt = Runtime(bundle, backend="onnxruntime", threads=1)
    model, _ = load_model(ckpt)
    entries = {e["id"]: e for e in rt.manifest["paths"] + (rt.manifest.get("baked") or [])}
    out = []
    for w in widths:
        film = np.ascontiguousarray(rt.film_vector(lam, w), dtype=np.float32)
        bn = bn_branch(lam)
        for kind, eid in (("baked", baked_id(lam, w)), ("film", path_id(bn, w))):
            e = entries[eid]
            frozen = freeze_path(model.eval(), w, bn, film_vector=film if kind == "baked" else None)
            out.append((w, kind, e, (bundle / e["file"]).read_bytes(), None if kind == "baked" else film, frozen))
    rt.close()
    return out, rt.input_shape


# --- engines: each returns f(images) -> logits for one path at one thread count --------------------
def open_engine(engine: str, onnx_bytes: bytes, film, frozen, threads: int, batch: int):
    if engine == "onnxruntime":
        from oat_edge.onnxrt import session_options
        import onnxruntime as ort

        sess = ort.InferenceSession(onnx_bytes, session_options(threads), providers=["CPUExecutionProvider"])
        feeds = {} if film is None else {"film": film}
        return lambda x: sess.run(["logits"], {"images": x, **feeds})[0]
    if engine.startswith("openvino"):
        from oat_edge.runtime.backends.openvino.loader import compile_bytes, config

        compiled = compile_bytes(onnx_bytes, config(threads, engine.split("-")[1]), "path")
        req = compiled.create_infer_request()
        feeds = {} if film is None else {"film": film}
        return lambda x: req.infer({"images": x, **feeds})["logits"]
    if engine == "inductor":
        import torch
        import torch._dynamo

        # one compiled graph per (path, batch, thread count): more than dynamo's default of 8
        # recompiles per module, past which it would silently run the module eagerly
        torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
        torch.set_num_threads(threads)  # inductor's C++ kernels take the thread count at compile time
        fn = torch.compile(frozen, backend="inductor", dynamic=False)
        film_t = None if film is None else torch.from_numpy(film)

        def call(x):
            torch.set_num_threads(threads)  # one process-wide setting: set by each variant before its calls
            with torch.inference_mode():
                xt = torch.from_numpy(x)
                return (fn(xt) if film_t is None else fn(xt, film_t)).numpy()

        return call
    raise SystemExit(f"unknown engine {engine}")


def build_blocks(models, engines, batches, thread_counts, errors):
    from oat_edge.bench.scheduling import Block, timed_calls

    blocks, parity = [], {}
    for mname, paths, input_shape in models:
        rng = np.random.default_rng(0)
        for w, kind, entry, data, film, frozen in paths:
            for b in batches:
                x = rng.random((b, *input_shape), dtype=np.float32)
                ref = None
                for engine in engines:
                    for t in thread_counts:
                        key = f"{mname}|{engine}|t{t}|w{w:g}|b{b}|{kind}"
                        try:
                            fn = open_engine(engine, data, film, frozen, t, b)
                            out = np.asarray(fn(x))  # compiles (inductor) and checks it runs
                        except Exception as e:  # record why an engine cannot run here, keep the others
                            errors.setdefault(engine, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:400] if str(e).strip() else ''}")
                            continue
                        if engine == REFERENCE and ref is None:
                            ref = out
                        parity[key] = None if ref is None else float(np.abs(out - ref).max())
                        meta = {"model": mname, "engine": engine, "threads": t, "width": w, "batch": b, "path": kind,
                                "path_id": entry["id"], "macs_per_image": entry.get("flops")}
                        blocks.append(Block(key, lambda d, fn=fn, x=x: {"latency": timed_calls(lambda: fn(x), d)}, meta))
    return blocks, parity


# --- summary ---------------------------------------------------------------------------------------
def summarize(blocks, stats, parity, peaks):
    from oat_edge.bench.stats import ratio

    groups = {}
    for blk in blocks:
        m = blk.meta
        s = stats[blk.key]["latency"]
        row = {**m, "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"], "round_p50_ms": s["round_p50_ms"],
               "max_abs_diff_vs_onnxruntime": parity.get(blk.key)}
        groups.setdefault((m["model"], m["width"], m["batch"], m["path"]), {}).setdefault(m["engine"], []).append(row)
    table = []
    for (model, w, b, kind), by_engine in sorted(groups.items()):
        tuned = {e: min(rows, key=lambda r: r["p50_ms"]) for e, rows in by_engine.items()}
        best = min(tuned.values(), key=lambda r: r["p50_ms"])
        ort = tuned.get(REFERENCE)
        for e, r in tuned.items():
            macs = r.get("macs_per_image")
            gmacs = macs * b / (r["p50_ms"] * 1e-3) / 1e9 if macs else None
            peak = (peaks.get(r["threads"]) or {}).get("best_gmacs")
            table.append({"model": model, "width": w, "batch": b, "path": kind, "engine": e,
                          "threads": r["threads"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                          "ratio_to_best": ratio(r["p50_ms"], best["p50_ms"]),
                          "ratio_to_onnxruntime": ratio(r["p50_ms"], ort["p50_ms"]) if ort else None,
                          "gmacs": gmacs, "share_of_peak": ratio(gmacs, peak) if gmacs else None,
                          "max_abs_diff_vs_onnxruntime": r["max_abs_diff_vs_onnxruntime"],
                          "p50_ms_by_threads": {str(q["threads"]): q["p50_ms"] for q in by_engine[e]},
                          "best": e == best["engine"]})
    film_ratio = []
    for r in table:
        if r["path"] == "film":
            base = next((q for q in table if q["path"] == "baked" and q["engine"] == r["engine"]
                         and (q["model"], q["width"], q["batch"]) == (r["model"], r["width"], r["batch"])), None)
            if base:
                film_ratio.append({k: r[k] for k in ("model", "width", "batch", "engine")}
                                  | {"film_over_baked": ratio(r["p50_ms"], base["p50_ms"])})
    return table, film_ratio


def _f(v, fmt="{:.3g}"):
    return "—" if v is None else fmt.format(v)


def write_markdown(res: dict, path: Path) -> None:
    from oat_edge.fileio import atomic_write_text

    lines = ["# CPU engines side by side", "", f"Created {res['created']}; `{res['command']}`.", "",
             f"Device: {res['device'].get('cpu_model')} ({res['device'].get('logical_cpus')} logical CPUs). "
             f"Rounds {res['rounds']} × {res['duration_s']} s per variant, interleaved; thread counts "
             f"{res['thread_counts']}, each engine at its best (\"t\"). sgemm peak (GMAC/s): "
             + ", ".join(f"{t} thr {_f(p.get('best_gmacs'))}" for t, p in sorted(res["sgemm_peak"].items())) + ".", ""]
    if res.get("note"):
        lines += [f"Note: {res['note']}", ""]
    if res["errors"]:
        lines += ["Engines that could not run here:", ""] + [f"- {e}: `{msg}`" for e, msg in res["errors"].items()] + [""]
    lines += ["| model | width | batch | path | engine | t | p50 ms | p99 ms | ÷ best | ÷ ORT | share of sgemm peak | max abs Δ vs ORT |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["table"]:
        name = f"**{r['engine']}**" if r["best"] else r["engine"]
        lines.append(f"| {r['model']} | {r['width']:g} | {r['batch']} | {r['path']} | {name} | {r['threads']} | "
                     f"{_f(r['p50_ms'], '{:.4g}')} | {_f(r['p99_ms'], '{:.4g}')} | {_f(r['ratio_to_best'], '{:.2f}')} | "
                     f"{_f(r['ratio_to_onnxruntime'], '{:.2f}')} | {_f(r['share_of_peak'], '{:.1%}')} | "
                     f"{_f(r['max_abs_diff_vs_onnxruntime'], '{:.1e}')} |")
    lines += ["", "FiLM-as-input path ÷ baked path (p50, each engine at its best thread count):", "",
              "| model | width | batch | engine | film ÷ baked |", "|---|---|---|---|---|"]
    for r in res["film_over_baked"]:
        lines.append(f"| {r['model']} | {r['width']:g} | {r['batch']} | {r['engine']} | {_f(r['film_over_baked'], '{:.2f}')} |")
    atomic_write_text(path, "\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--digits-ckpt", type=Path, default=ROOT / "demo_out" / "ckpt.pt")
    p.add_argument("--resnet34-ckpt", type=Path, default=None, help="a trained ResNet-34 OATS checkpoint (default: random weights)")
    p.add_argument("--models", nargs="+", default=["digits", "resnet34"], choices=["digits", "resnet34"])
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    p.add_argument("--widths", nargs="+", type=float, default=[0.5, 1.0])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--threads", nargs="+", type=int, default=None, help="candidate thread counts (default 1, 2, 4 ... all CPUs)")
    p.add_argument("--lam", type=float, default=0.5, help="the mode λ measured (baked, and through the BN path)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--duration", type=float, default=0.5, help="seconds per variant and round")
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--work-dir", type=Path, default=ROOT / "out" / "cpu_peers")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_peers")
    p.add_argument("--note", default="")
    args = p.parse_args(argv)

    from oat_edge.bench import threads as T
    from oat_edge.bench.host import library_versions, probe_device
    from oat_edge.bench.scheduling import run_interleaved
    from oat_edge.bench.stats import aggregate
    from oat_edge.fileio import atomic_write_json
    from oat_edge.host import default_threads

    if REFERENCE not in args.engines:
        args.engines.insert(0, REFERENCE)  # the parity and ratio reference
    args.work_dir.mkdir(parents=True, exist_ok=True)
    thread_counts = args.threads or T.candidate_threads(default_threads())
    models = []
    for name in args.models:
        ckpt = args.digits_ckpt if name == "digits" else (args.resnet34_ckpt or resnet34_checkpoint(args.work_dir))
        bundle = bundle_for(name, ckpt, args.work_dir, args.lam, args.widths)
        paths, input_shape = paths_of(bundle, ckpt, args.lam, args.widths)
        models.append((name, paths, input_shape))
    errors = {}
    blocks, parity = build_blocks(models, args.engines, args.batches, thread_counts, errors)
    print(f"{len(blocks)} variants, {args.rounds} rounds", flush=True)
    raw = run_interleaved(blocks, args.rounds, args.duration, args.warmup)
    stats = {k: aggregate(v) for k, v in raw.items()}
    peaks = {t: T.measure_sgemm_peak(t) for t in thread_counts}
    table, film_ratio = summarize(blocks, stats, parity, peaks)
    versions = library_versions()
    for mod in ("openvino", "torch"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    res = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "command": shlex.join(["python", "scripts/cpu_peers.py", *(argv if argv is not None else sys.argv[1:])]),
           "note": args.note, "device": probe_device(), "versions": versions, "lam": args.lam,
           "rounds": args.rounds, "duration_s": args.duration, "thread_counts": thread_counts,
           "sgemm_peak": {str(t): v for t, v in peaks.items()}, "errors": errors, "table": table,
           "film_over_baked": film_ratio}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out_dir / "cpu_peers.json", res)
    write_markdown(res, args.out_dir / "cpu_peers.md")
    print(f"wrote {args.out_dir / 'cpu_peers.md'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
