"""Rich tables for ``oat-edge inspect`` (rich only; ``verify``'s are in ``oat_edge.runtime.verify``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from oat_edge.mode import fmt_width


def _size(n) -> str:
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _flops(n) -> str:
    n = float(n or 0)
    return f"{n / 1e9:.3f} G" if n >= 1e8 else f"{n / 1e6:.2f} M"


def describe_preprocessing(pre) -> str:
    """One line: the bundle's raw → input transform (docs/bundle.md "Preprocessing")."""
    if not pre:
        return "preprocessing: not recorded (an older bundle): float [0, 1] images of the input size"
    steps = [f"{pre.get('source_dtype', 'float32')} {pre.get('source_range', [0, 1])}", pre.get("color") or "rgb"]
    if pre.get("resize"):
        crop = pre.get("crop") or {}
        steps.append(f"shorter side → {pre['resize']['size']} ({pre['resize']['interpolation']}), "
                     f"centre crop {'×'.join(str(v) for v in crop.get('size', []))}")
    steps.append(f"× {pre.get('scale', 1.0):.6g}")
    names = pre.get("class_names")
    text = "preprocessing: " + ", ".join(steps) + " (mean/std inside the model)"
    if names:
        text += f"; classes {', '.join(names[:10])}{' …' if len(names) > 10 else ''}"
    return text


def render_inspect(bundle, manifest: Dict[str, Any], verified: bool = True, console=None) -> None:
    from rich.console import Console

    console = console or Console()
    _print_header(console, bundle, manifest, verified)
    console.print(_paths_table(manifest["paths"]))
    baked = manifest.get("baked") or []
    if baked:
        console.print(_baked_table(baked))
    film = manifest["film"]
    console.print(f"FiLM tables {film['file']}: {len(film['grid'])} grid λ ({film['grid'][0]:g}..{film['grid'][-1]:g}), "
                  f"code dim {film['code_dim']} ({film.get('lambda_encoding', 'ro')} λ encoding), LeakyReLU slope {film['negative_slope']:g}, "
                  f"sizes {film['sizes']}; any other λ is computed exactly from the stored generators")
    ops = sorted({op for e in manifest["paths"] + baked for op in e.get("ops", [])})
    oc = manifest.get("opcheck", {})
    console.print(f"ops: {', '.join(ops)} — all in TensorRT {oc.get('tensorrt_version', '?')}'s ONNX parser list")
    cal = manifest.get("calibration")
    if cal:
        console.print(_calibration_table(cal))
    else:
        console.print("calibration: none (export with --calibrate to let the runtime pick modes by accuracy)")
    engines = manifest.get("engines") or []
    if engines:
        console.print(_engines_table(engines))
    else:
        console.print("engines: none (build them on the target with `oat-edge build-engines BUNDLE`)")
    latency = sorted((Path(bundle) / "latency").glob("*.json")) if (Path(bundle) / "latency").is_dir() else []
    if latency:
        console.print("latency profiles: " + ", ".join(p.stem for p in latency))
    for note in manifest.get("notes") or []:
        console.print(f"[yellow]note:[/yellow] {note}")


def _print_header(console, bundle, manifest: Dict[str, Any], verified: bool) -> None:
    model, tools = manifest["model"], manifest["tools"]
    src = manifest.get("source", {})
    console.print(f"[bold]{bundle}[/bold]  schema {manifest['schema']} v{manifest['schema_version']}"
                  f"  ({'all file hashes verified' if verified else 'hashes not checked'})")
    console.print(
        f"model {model['arch']} ({src.get('method', '?')}, epoch {src.get('epoch', '?')}), {model['num_classes']} classes, "
        f"input {model['input_shape']} in {model['value_range']}, widths {[fmt_width(w) for w in model['widths']]}, "
        f"training λ {model['train_lambdas']}; batch {manifest['batch']['min']}..{manifest['batch']['max']} "
        f"(opt {manifest['batch']['opt']})"
    )
    console.print("tools: " + ", ".join(f"{k} {v}" for k, v in tools.items() if v is not None))
    console.print(describe_preprocessing(manifest.get("preprocessing")))


def _paths_table(paths):
    from rich.table import Table

    t = Table(title="paths: paths/<id>.onnx, run with `images` + flat `film`")
    for col in ("id", "BN", "size", "MACs/img", "params", "film", "parity max|Δ|", "top-1", "#λ"):
        t.add_column(col, overflow="fold" if col == "id" else "ellipsis")  # ids carry the precision: keep them whole
    for e in paths:
        par = e.get("parity", {})
        t.add_row(e["id"], "clean" if e["bn"] == "c" else "adv", _size(e.get("bytes")), _flops(e.get("flops")),
                  f"{e.get('params', 0):,}", str(e.get("film_size")),
                  f"{par.get('max_abs_diff', float('nan')):.1e}", f"{par.get('top1_agreement', 0):.0%}",
                  str(len(par.get("lambdas", []))))
    return t


def _baked_table(baked):
    from rich.table import Table

    t = Table(title="baked modes: baked/<id>.onnx, BN + FiLM folded, `images` only")
    for col in ("id", "λ", "width", "size", "MACs/img", "parity max|Δ|"):
        t.add_column(col, overflow="fold" if col == "id" else "ellipsis")
    for e in baked:
        t.add_row(e["id"], f"{e['lam']:g}", fmt_width(e["width"]), _size(e.get("bytes")),
                  _flops(e.get("flops")), f"{e['parity']['max_abs_diff']:.1e}")
    return t


def _calibration_table(cal):
    from rich.table import Table

    attacks = list(cal.get("attacks", {}))
    t = Table(title=f"calibration on {cal['dataset']}/{cal['split']} ({cal['n_images']} images)")
    for col in ["λ", "width", "SA"] + [f"RA {a}" for a in attacks]:
        t.add_column(col)
    for r in cal["records"]:
        t.add_row(f"{r['lam']:g}", fmt_width(r["width"]), f"{r['sa']:.1%}", *[f"{r['ra'].get(a, float('nan')):.1%}" for a in attacks])
    return t


def _engines_table(engines):
    from rich.table import Table

    t = Table(title="TensorRT engines")
    for col in ("path", "precision", "device", "TensorRT", "GPU", "sm", "profile", "size"):
        t.add_column(col)
    for e in engines:
        p = e.get("profile", {})
        t.add_row(e["path_id"], e["precision"], e.get("device", ""), e["tensorrt_version"], e["gpu_name"],
                  str(e["compute_capability"]), f"{p.get('min')}:{p.get('opt')}:{p.get('max')}", _size(e.get("bytes")))
    return t
