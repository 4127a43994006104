"""Check an exported graph against TensorRT's ONNX parser support list — without TensorRT.

The list (``data/tensorrt_onnx_ops.json``) is transcribed from onnx-tensorrt's
``docs/operators.md``. A graph with an op the parser does not support would only fail on the
robot, at ``build-engines`` time; we fail at export instead, naming the op.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from oat_edge.errors import BundleError

DATA = Path(__file__).with_name("data") / "tensorrt_onnx_ops.json"


@lru_cache(maxsize=1)
def tensorrt_op_table() -> dict:
    with open(DATA, encoding="utf-8") as f:
        return json.load(f)


def check_ops(model, where: str = "graph") -> list[str]:
    """Raise BundleError naming every op (or restriction) TensorRT's ONNX parser rejects;
    return warnings for ops that need a TensorRT newer than JetPack 6's."""
    table = tensorrt_op_table()
    supported = set(table["supported"])
    old = set(table["supported_since_tensorrt_8_5"])
    constant_inputs = table["constant_inputs"]
    lo, hi = table["opset_range"]
    problems, warnings = [], []

    opset = next((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), None)
    if opset is None or not lo <= opset <= hi:
        problems.append(f"opset {opset} is outside TensorRT {table['tensorrt_version']}'s range {lo}..{hi}")
    elif opset > table["opset_max_tensorrt_10_0"]:
        warnings.append(
            f"{where}: opset {opset} needs TensorRT ≥ 10.x with opset {opset} support "
            f"(TensorRT 10.0 parses up to opset {table['opset_max_tensorrt_10_0']}); use --opset 17 for Jetson"
        )

    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    # Explicit quantization (int8 QDQ graphs): a weight is DequantizeLinear(constant int8 tensor,
    # constant scale); TensorRT folds that into the layer's weights, so it counts as a constant.
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.domain in ("", "ai.onnx") and all(
                x in constants for x in n.input if x):
            constants.update(n.output)
    for node in model.graph.node:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.name or op}: custom-domain op {node.domain}::{op} (TensorRT needs a plugin)")
            continue
        if op not in supported:
            why = "listed as unsupported" if op in table["unsupported"] else "not in its support list"
            problems.append(f"op {op} ({node.name}) is {why} by TensorRT's ONNX parser")
            continue
        if op not in old:
            warnings.append(f"{where}: op {op} needs a recent TensorRT ONNX parser (not in TensorRT 8.5's list)")
        for pos in constant_inputs.get(op, []):
            if pos < len(node.input) and node.input[pos] and node.input[pos] not in constants:
                problems.append(f"op {op} ({node.name}): input {pos} must be a constant for TensorRT")
    if problems:
        raise BundleError(
            f"{where} cannot be parsed by TensorRT ({table['tensorrt_version']} support list, "
            f"{DATA.name}): " + "; ".join(sorted(set(problems)))
        )
    return sorted(set(warnings))


def describe_table() -> dict:
    t = tensorrt_op_table()
    return {"tensorrt_version": t["tensorrt_version"], "source": t["source"], "file": f"oat_edge/export/data/{DATA.name}"}
