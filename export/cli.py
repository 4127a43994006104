"""``oat-edge export``, ``build-engines`` and ``inspect`` (``verify`` runs the runtime's
backends: ``oat_edge.runtime.cli``).

Nothing heavy at import time (no torch, onnx or TensorRT): ``oat-edge --help`` must stay fast
on a robot that only has the runtime.
"""

from __future__ import annotations

import argparse
import sys

EXPORT_EPILOG = """examples:
  oat-edge export ckpt.pt --widths 0.5 0.75 1.0 -o bundle/
  oat-edge export ckpt.pt -o bundle/ --bake-lambdas 0 0.1 0.2 0.3 0.4 1 --calibrate --calib-max-images 500
  oat-edge export ckpt.pt -o bundle/ --batch-profile 1:8:64 --opset 17 --tensorrt off --force
"""

ENGINES_EPILOG = """examples (on the target device, e.g. a Jetson with JetPack 6):
  oat-edge build-engines bundle/                       # fp16, the bundle's batch profile
  oat-edge build-engines bundle/ --precision fp32 --batch-profile 1:1:8 --timing-cache ~/.cache/oat.tc
"""


def register(subparsers) -> None:
    from oat_edge import cliargs

    p = subparsers.add_parser(
        "export", help="checkpoint -> bundle: ONNX paths per (BN × width), FiLM tables, parity-checked",
        description="Freeze every (BN branch × width) path of an OAT/OATS checkpoint into ONNX (slimmed weights, "
        "BN folded, FiLM γ/β as the `film` input), write FiLM tables for any λ, optionally bake hot modes and "
        "calibrate SA/RA, and check every file against the PyTorch model (max |Δlogit| ≤ 1e-4, 100 % top-1). "
        "The bundle appears completely or not at all.",
        epilog=EXPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CKPT", help="an OAT/OATS checkpoint written by `oat-edge train`")
    cliargs.add_out(p, "BUNDLE", "bundle folder to create", required=True, short=True)
    cliargs.add_widths(p, "widths to export (default: all trained)")
    cliargs.add_lambdas(p, "grid", "λ values of the FiLM tables (default 0..1 step 0.05; training λ always added)",
                        old="--lambda-grid")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17; TensorRT 10 parses 9..20)")
    cliargs.add_batch_profile(p, "1:8:64", " of the paths and the TensorRT profile")
    cliargs.add_lambdas(p, "bake", "also write baked paths (BN+FiLM folded, no film input) for these λ at every width",
                        old="--bake")
    p.add_argument("--calibrate", action="store_true",
                   help="measure SA and worst-case RA per (λ, width) on held-out data (the validation split, or "
                   "test where there is none) and store them with their standard errors (runtime policy)")
    cliargs.add_lambdas(p, "calib", "λ values to calibrate (default: training λ ∪ S3 = .15 .25 .35 .5 .7 .9)")
    p.add_argument("--calib-attacks", nargs="+", default=None, metavar="ATTACK",
                   help="the attack ensemble whose per-image worst case is the RA (default: pgd7 apgd-ce apgd-dlr square)")
    p.add_argument("--calib-max-images", type=int, metavar="N", help="calibrate on the first N test images")
    cliargs.add_data_dir(p, "for calibration and parity images")
    p.add_argument("--parity-images", type=int, default=64, metavar="N", help="images for the parity gate (default 64)")
    cliargs.add_precision(p, ("fp32", "fp16", "int8"), ["fp32"], many=True,
                          what="precisions to export: fp32 (always), fp16, int8 (QDQ, calibrated); e.g. --precision fp32 fp16 int8")
    p.add_argument("--quant-images", type=int, default=None, metavar="N",
                   help="held-out images for int8 range calibration (default 256; val split, else the training split's last N)")
    p.add_argument("--int8-activations", choices=("auto", "s8", "u8"), default="auto",
                   help="int8 format: auto = S8S8 when TensorRT engines are built, else U8S8 (default); "
                        "s8 = S8S8 (symmetric int8 activations, what TensorRT reads; slower than fp32 in "
                        "onnxruntime on x86); u8 = U8S8 (asymmetric uint8 activations, onnxruntime's fast CPU form)")
    p.add_argument("--tensorrt", choices=("auto", "on", "off"), default="auto",
                   help="build TensorRT engines into the bundle: auto = when TensorRT is importable (default)")
    cliargs.add_force(p, "replace an existing bundle folder")
    cliargs.add_progress(p)
    p.set_defaults(func=run_export)
    _register_bundle_tools(subparsers)


def _register_bundle_tools(subparsers) -> None:
    """``build-engines`` and ``inspect``: commands on an exported bundle."""
    from oat_edge import cliargs

    p = cliargs.bundle_command(
        subparsers, "build-engines", help="build TensorRT engines for a bundle on this device (fp16/fp32)",
        description="Build one TensorRT engine per path and baked path with the TensorRT Python API "
        "(10.x: BuilderFlag.FP16; 11.x: strongly typed fp16 graph) and record them in the manifest with the "
        "TensorRT version, GPU and source ONNX hash. Current engines are kept, stale or foreign ones rebuilt.",
        epilog=ENGINES_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cliargs.add_precision(p, ("fp32", "fp16"), "fp16", many=False, what="engine precision (default fp16)")
    cliargs.add_batch_profile(p, None, " of the engines' `images` input (default: the bundle's)")
    p.add_argument("--timing-cache", metavar="FILE", help="TensorRT timing cache to reuse and update")
    p.add_argument("--workspace", type=int, metavar="MB", help="builder workspace limit in MiB (default: min(1024, RAM/8) on Jetson, TensorRT's own elsewhere)")
    cliargs.add_force(p, "rebuild engines that are still current")
    cliargs.add_progress(p)
    p.set_defaults(func=run_build_engines)

    p = cliargs.bundle_command(subparsers, "inspect",
                               help="show a bundle: paths, modes, files, versions, parity, calibration, engines",
                               description="Print what a bundle holds (hashes are checked unless --no-verify).")
    p.add_argument("--no-verify", action="store_true", help="do not check sha256 of the files")
    cliargs.add_json(p, "the manifest (instead of tables)")
    cliargs.add_key(p, "show whether one of them signed the bundle")
    p.set_defaults(func=run_inspect)


def run_export(args) -> int:
    from oat_edge.export.pipeline import export_bundle

    out = export_bundle(
        args.checkpoint, args.out, widths=args.widths, lambda_grid=args.grid_lambdas, opset=args.opset,
        batch=args.batch_profile, calibrate=args.calibrate, bake=args.bake_lambdas or (), tensorrt=args.tensorrt,
        force=args.force,
        progress=not args.no_progress, parity_images=args.parity_images, calib_lambdas=args.calib_lambdas,
        calib_attacks=args.calib_attacks, calib_max_images=args.calib_max_images, data_dir=args.data_dir,
        precisions=args.precision, quant_images=args.quant_images, int8_activations=args.int8_activations,
    )
    from oat_edge.bundle import load_manifest

    manifest = load_manifest(out, verify_hashes=False)
    _print_summary(out, manifest)
    return 0


def run_build_engines(args) -> int:
    from oat_edge.export.targets.tensorrt import build_engines

    results = build_engines(args.bundle, precision=args.precision, batch=args.batch_profile,
                            timing_cache=args.timing_cache,
                            workspace_mb=args.workspace, force=args.force, progress=not args.no_progress)
    built = sum(r["action"] == "built" for r in results)
    print(f"{args.bundle}: {built} engine(s) built, {len(results) - built} current engine(s) kept ({args.precision})")
    return 0


def run_inspect(args) -> int:
    from oat_edge.bundle import load_manifest
    from oat_edge.cliargs import json_out

    from oat_edge.bundle.signature import describe_signer

    manifest = load_manifest(args.bundle, verify_hashes=not args.no_verify, trusted_keys=args.key)
    signer = describe_signer(args.bundle, args.key)
    if args.json:
        json_out(args.json, manifest)
        return 0
    from oat_edge.export.report import render_inspect

    render_inspect(args.bundle, manifest, verified=not args.no_verify)
    print(f"signed by: {signer}")
    return 0


def _print_summary(out, manifest) -> None:
    n_paths, n_baked = len(manifest["paths"]), len(manifest.get("baked") or [])
    worst = max([e["parity"]["max_abs_diff"] for e in manifest["paths"] + (manifest.get("baked") or [])] or [0.0])
    print(f"wrote {out}: {n_paths} paths, {n_baked} baked paths, parity max |Δlogit| {worst:.2e} "
          f"(inputs: {manifest['parity_inputs']['source']}); `oat-edge inspect {out}` for details", file=sys.stdout)
