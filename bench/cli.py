"""``oat-edge bench``. Importing this module is cheap (argparse only)."""

from __future__ import annotations


def register(subparsers) -> None:
    from oat_edge import cliargs
    from oat_edge.bench import DEFAULT_BATCHES
    from oat_edge.runtime import backends

    p = cliargs.bundle_command(
        subparsers, "bench", help="latency per mode, switch cost and baselines on this device; writes the latency profile",
        description="Benchmark a bundle on this device: p50/p90/p99 latency and throughput per (λ, width) "
        "and batch, the mode-switch cost against a naive session-per-switch, Runtime load time, peak "
        "memory, and (with --checkpoint) PyTorch eager of the conditional model — all interleaved in one "
        "run. Writes BUNDLE/latency/<device>.json for Runtime.select(max_latency_ms=...). "
        "Method: docs/benchmarking.md.")
    cliargs.add_runtime(p, backends.names(), device_what="; cuda needs --backend torch or tensorrt")
    cliargs.add_batch(p, many=True, default=list(DEFAULT_BATCHES),
                      what=" (default 1 8 32; must lie in the bundle's batch profile)")
    cliargs.add_modes(p, what="; λ:W:P for precision P (fp16, int8) (default: the calibration grid, or the training λ ∪ {0.15, 0.5, 0.9} × every width, at every precision of the bundle)")
    p.add_argument("--warmup", type=float, default=0.2, metavar="S", help="warm-up seconds per variant (default 0.2)")
    p.add_argument("--duration", type=float, default=0.5, metavar="S",
                   help="seconds per variant and round (default 0.5)")
    p.add_argument("--rounds", type=int, default=5, metavar="N", help="interleaved rounds (default 5)")
    cliargs.add_providers(p)
    p.add_argument("--pin", action="store_true", help="pin the process to the first N allowed CPUs (sched_setaffinity)")
    p.add_argument("--checkpoint", default=None, metavar="CKPT",
                   help="checkpoint the bundle came from: adds the PyTorch-eager baseline")
    p.add_argument("--no-naive", action="store_true", help="skip the naive session-per-switch baseline")
    p.add_argument("--bake", action="store_true",
                   help="also measure background baking: held modes once baked against baked exports, set_mode → "
                   "baked-live transition, set_mode and inference while a bake runs, RSS with K baked modes")
    p.add_argument("--tune-threads", action="store_true",
                   help="also measure every path at each candidate intra-op thread count (1, 2, 4, ... CPUs) and the "
                   "CPU's sgemm peak: records each path's best count in the latency profile (Runtime(threads=\"tuned\")) "
                   "and GMAC/s per path against the peak")
    p.add_argument("--micro", action="store_true",
                   help="measure the runtime's hot path instead of the standard benchmark: set_mode per kind of mode "
                   "(grid, off-grid sync and async, baked) with the C++ extension and its Python twin, set_mode while "
                   "a bake runs, and Runtime.infer against the bare call of its path at batch 1; prints a table "
                   "(--json: the figures) and writes no latency profile")
    cliargs.add_json(p)
    p.add_argument("--report", default=None, metavar="DIR", help="write report.md, bench.json and PNG charts here")
    p.add_argument("--no-write-profile", action="store_true",
                   help="do not write BUNDLE/latency/<device>.json")
    p.add_argument("--note", default=None, help="free text recorded in the JSON and the report (e.g. machine state)")
    cliargs.add_progress(p, old="--quiet")
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:
    from oat_edge.bench import report
    from oat_edge.bench.run import run_benchmark, write_outputs
    from oat_edge.cliargs import check_json_target
    from oat_edge.fileio import check_output_dir

    check_json_target(args.json, bundle=args.bundle)  # before minutes of measuring
    if args.micro:
        return _run_micro(args)
    if args.report:
        check_output_dir(args.report, "--report folder")
    result = run_benchmark(
        args.bundle, backend=args.backend, device=args.device, batches=args.batch, modes=args.modes,
        warmup_s=args.warmup, duration_s=args.duration, rounds=args.rounds, threads=args.threads,
        checkpoint=args.checkpoint, pin=args.pin, naive=not args.no_naive, progress=not args.no_progress,
        command=_command_line(args), providers=args.providers, bake=args.bake,
        tune_threads=args.tune_threads)
    if args.note:
        result["note"] = args.note
    to_stdout = args.json == "-"
    outputs = write_outputs(result, json_path=None if to_stdout else args.json, report_dir=args.report,
                            write_profile=not args.no_write_profile)
    if to_stdout:
        from oat_edge.cliargs import json_out

        json_out("-", result)
        return 0
    report.print_summary(result)
    for what in ("profile", "json", "report"):
        v = outputs.get(what)
        if v:
            print(f"{what}: {v['path'] if isinstance(v, dict) else v}")
    return 0


# options of the standard benchmark that --micro does not take
_NOT_MICRO = (("--checkpoint", "checkpoint"), ("--modes", "modes"), ("--bake", "bake"), ("--tune-threads", "tune_threads"),
              ("--report", "report"), ("--pin", "pin"), ("--providers", "providers"), ("--device", "device"))


def _run_micro(args) -> int:
    from oat_edge.bench.microbench import print_micro, run_micro
    from oat_edge.cliargs import json_out
    from oat_edge.errors import ConfigError
    from oat_edge.progress import progress_bar

    given = [flag for flag, name in _NOT_MICRO if getattr(args, name, None)]
    if given:
        raise ConfigError(f"--micro measures the hot path on the CPU alone: it does not take {', '.join(given)}")
    with progress_bar(not args.no_progress and args.json != "-", "[bold]bench --micro[/] ") as prog:
        result = run_micro(args.bundle, backend=args.backend, threads=args.threads, warmup_s=args.warmup,
                           duration_s=args.duration, rounds=args.rounds, progress=prog)
    if args.note:
        result["note"] = args.note
    if args.json:
        json_out(args.json, result)
    if args.json != "-":
        print_micro(result)
    return 0


def _command_line(args) -> str:
    """The command as a user would retype it (from the parsed arguments, not sys.argv)."""
    import shlex

    parts = ["oat-edge", "bench", args.bundle, "--backend", args.backend, "--batch", *map(str, args.batch),
             "--warmup", str(args.warmup), "--duration", str(args.duration), "--rounds", str(args.rounds)]
    for flag, value in (("--device", args.device), ("--threads", args.threads), ("--checkpoint", args.checkpoint),
                        ("--json", args.json), ("--report", args.report)):
        if value is not None:
            parts += [flag, str(value)]
    if args.modes:
        parts += ["--modes", *args.modes]
    for flag, on in (("--pin", args.pin), ("--no-naive", args.no_naive), ("--no-write-profile", args.no_write_profile),
                     ("--bake", args.bake), ("--tune-threads", args.tune_threads)):
        if on:
            parts.append(flag)
    return " ".join(shlex.quote(p) for p in parts)
