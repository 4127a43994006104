"""Runtime subcommands of ``oat-edge``.

    oat-edge run BUNDLE --images x.npy [--lam 0.3 --width 0.75 | --min-robust-acc 0.4 ...]
    oat-edge verify BUNDLE [--backend tensorrt]

Importing this module is cheap (no numpy, no onnxruntime): the work happens in the run
functions. ``--backend`` choices come from the backend registry (which imports no backend).
"""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    from oat_edge import cliargs
    from oat_edge.runtime import backends

    p = cliargs.bundle_command(
        subparsers, "run", help="run a bundle on images in one (λ, width) mode and print the predictions",
        description="Run an exported bundle on a batch of images in one mode: given with --lam/--width, or "
        "chosen by the budget policy (--min-robust-acc / --min-clean-acc / --max-latency-ms, --prefer). "
        "Images: a .npy file float32 [N, C, H, W] in [0, 1] (or uint8 with --scale 255), or 'digits' for "
        "scikit-learn's digits (8×8 bundles), or 'random'.")
    p.add_argument("--images", default="digits", help=".npy file, 'digits' or 'random' (default digits)")
    p.add_argument("--count", type=cliargs.positive_int, default=8, metavar="N",
                   help="number of images from digits/random (default 8)")
    cliargs.alias(p, "--n", "--count", "count", type=cliargs.positive_int)
    p.add_argument("--scale", type=float, default=None, metavar="S",
                   help="divide the images by S first (e.g. 255 for uint8 pixels)")
    cliargs.add_mode(p)
    p.add_argument("--min-robust-acc", type=float, default=None, metavar="A", help="select: robust accuracy ≥ A")
    p.add_argument("--min-clean-acc", type=float, default=None, metavar="A", help="select: clean accuracy ≥ A")
    p.add_argument("--max-latency-ms", type=float, default=None, metavar="MS",
                   help="select: latency at --latency-quantile ≤ MS")
    p.add_argument("--latency-quantile", choices=("p50", "p90", "p99"), default="p99",
                   help="select: the latency quantile --max-latency-ms bounds (default p99)")
    p.add_argument("--prefer", choices=("robust", "accurate", "fast"), default="robust",
                   help="select: what to maximise among feasible modes (default robust)")
    cliargs.add_runtime(p, backends.names())
    cliargs.add_providers(p)
    cliargs.add_batch(p, many=False, what=" (the images are split into batches of N; default: the bundle's largest)")
    cliargs.add_json(p, "mode, predictions and logits")
    cliargs.add_key(p, "run only a bundle signed by one of them")
    p.set_defaults(func=run_run)

    p = cliargs.bundle_command(
        subparsers, "verify", help="check a bundle's files (sha256) and rerun its paths against the export-time logits",
        description="Run after copying a bundle to a device: checks every file's sha256, then runs every path "
        "and baked path at the stored λ values on the chosen backend (the runtime's own runner, TensorRT "
        "included) and compares with the PyTorch logits recorded at export (no torch needed). Exit status 0 "
        "when everything matches.",
    )
    cliargs.add_runtime(p, backends.names() + ["none"], default="onnxruntime",
                        backend_what="; none checks hashes and structure only")
    cliargs.add_json(p, "the report")
    cliargs.add_key(p, "the bundle must be signed by one of them")
    p.add_argument("--min-signed-at", metavar="WHEN",
                   help="with --key: refuse a bundle signed before WHEN (ISO 8601 date/time or seconds since 1970), "
                   "an older bundle copied back (rollback)")
    p.set_defaults(func=run_verify)

    # Bundle signatures (core: oat_edge.bundle.signature) are made and checked where bundles are run.
    from oat_edge.runtime import signing_cli

    signing_cli.register(subparsers)


def run_verify(args) -> int:
    from oat_edge.runtime.verify import render_verify, verify_bundle

    import sys

    from oat_edge.cliargs import check_json_target

    check_json_target(args.json, bundle=args.bundle)
    report = verify_bundle(args.bundle, backend=args.backend, threads=args.threads, device=args.device,
                           trusted_keys=args.key, min_signed_at=args.min_signed_at)
    if args.json:
        from oat_edge.cliargs import json_out

        json_out(args.json, report)
        if args.json == "-":
            return 0
    render_verify(report)
    signer = report.get("signer")
    if signer is None:
        print(f"warning: {args.bundle} is unsigned: hashes catch corruption, not tampering "
              "(`oat-edge sign`, then `oat-edge verify --key KEY.pub`)", file=sys.stderr)
    else:
        print(f"signed by key {signer['key_id']}" + (" (trusted)" if signer["trusted"] else
                                                      " (no --key given: not checked against a trusted key)"))
    return 0


def _load_images(args, input_shape):
    import numpy as np

    from oat_edge.errors import ConfigError, DependencyError, InputError
    from oat_edge.fileio import describe_load_error

    if args.images == "random":
        return np.random.default_rng(0).random((args.count,) + tuple(input_shape), dtype=np.float32)
    if args.images == "digits":
        if tuple(input_shape) != (1, 8, 8):
            raise ConfigError(f"'digits' images are 1×8×8; this bundle takes {list(input_shape)}: pass a .npy file")
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise DependencyError("--images digits needs scikit-learn; pass a .npy file instead") from None
        data = load_digits()
        x = (data.images[-args.count:] / 16.0).astype(np.float32)[:, None]
        return x
    path = Path(args.images)
    if not path.is_file():
        raise ConfigError(f"images file {path} does not exist")
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{path} is not a readable .npy array: {describe_load_error(e)}") from None
    if not isinstance(x, np.ndarray):
        raise InputError(f"{path} is an .npz archive; pass one .npy array [N, {', '.join(map(str, input_shape))}]")
    if x.ndim == 0 or x.size == 0:
        raise InputError(f"{path} holds {'a single number' if x.ndim == 0 else 'no images'} (shape {list(x.shape)}); "
                         f"pass an array [N, {', '.join(map(str, input_shape))}] with N ≥ 1")
    if args.scale:
        x = x.astype(np.float32) / float(args.scale)
    return x


def run_run(args) -> int:
    import numpy as np

    from oat_edge.errors import ConfigError
    from oat_edge.runtime import Runtime

    budgets = (args.min_robust_acc, args.min_clean_acc, args.max_latency_ms)
    explicit = args.lam is not None or args.width is not None
    if explicit and any(b is not None for b in budgets):
        raise ConfigError("give either --lam/--width or selection budgets, not both")
    if explicit and (args.lam is None or args.width is None):
        raise ConfigError("--lam and --width go together")
    if args.scale is not None and not (args.scale > 0 and args.scale == args.scale and args.scale != float("inf")):
        raise ConfigError(f"--scale must be a positive number, got {args.scale}")
    from oat_edge.cliargs import check_json_target

    check_json_target(args.json, bundle=args.bundle)  # before loading anything
    rt = Runtime(args.bundle, backend=args.backend, threads=args.threads, device=args.device, trusted_keys=args.key,
                 providers=args.providers)
    if explicit:
        rt.set_mode(args.lam, args.width)
    elif any(b is not None for b in budgets) or args.prefer != "robust":
        rt.set_mode(rt.select(*budgets, prefer=args.prefer, latency_quantile=args.latency_quantile))
    images = _load_images(args, rt.input_shape)
    size = args.batch or min(len(images), rt.io.batch_max)
    chunks = [rt.infer(images[i:i + size]) for i in range(0, len(images), size)]
    logits = np.concatenate(chunks) if chunks else np.zeros((0, rt.num_classes), np.float32)
    pred = logits.argmax(axis=1)
    mode = rt.mode
    if args.json != "-":  # JSON on standard output replaces the table
        _print(rt, mode, pred, logits)
    if args.json:
        from oat_edge.cliargs import json_out

        json_out(args.json, {"bundle": str(rt.bundle_dir), "backend": rt.backend_name,
                             "mode": {"lam": mode.lam, "width": mode.width}, "path": rt.path_for(mode.lam, mode.width),
                             "predictions": pred.tolist(), "logits": logits.tolist()})
    return 0


def _print(rt, mode, pred, logits) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is a dependency, but keep the command usable without it
        print(f"mode {mode} on {rt.backend_name}: predictions {pred.tolist()}")
        return
    console = Console()
    table = Table(title=f"{rt.bundle_dir.name}: mode {mode}, path {rt.path_for(mode.lam, mode.width)}, "
                        f"backend {rt.backend_name}")
    table.add_column("image", justify="right")
    table.add_column("prediction", justify="right")
    table.add_column("top logit", justify="right")
    for i, (p, row) in enumerate(zip(pred.tolist(), logits)):
        table.add_row(str(i), str(p), f"{float(row[p]):.3f}")
    console.print(table)
