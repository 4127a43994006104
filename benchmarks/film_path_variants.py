"""FiLM-as-input path variants on one width of a bundle (docs/benchmarking.md
"FiLM-as-input path: alternatives measured"): the exported path (flat ``film`` input, Slice +
Reshape per site) under each ONNX Runtime graph-optimisation level; per-site γ/β inputs shaped
[1, C, 1, 1] (no Slice/Reshape); FiLM applied to the conv weights in the graph instead of the
activations; and the baked export of a mode as the floor. Interleaved rounds (order reversed
every other round), one intra-op thread, median across rounds of each round's p50.

    python benchmarks/film_path_variants.py BUNDLE WIDTH [ROUNDS]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

LAM = 0.5
BATCHES = (1, 8, 32)
LEVELS = ("ORT_ENABLE_ALL", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_BASIC", "ORT_DISABLE_ALL")


def per_site_inputs(model):
    """Each site's Slice + Reshape of ``film`` replaced by its own input [1, C, 1, 1]; returns
    (model, {input name: (start, end) in the flat vector})."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    ranges, drop = {}, set()
    for n in list(g.node):
        src = producer.get(n.input[0]) if n.op_type == "Reshape" else None
        if src is None or src.op_type != "Slice" or src.input[0] != "film":
            continue
        start, end = int(inits[src.input[1]][0]), int(inits[src.input[2]][0])
        name = f"film_{start}"
        ranges[name] = (start, end)
        for user in g.node:
            for k, i in enumerate(user.input):
                if i == n.output[0]:
                    user.input[k] = name
        drop.update((id(n), id(src)))
        g.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, end - start, 1, 1]))
    keep = [n for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(keep)
    inputs = [i for i in g.input if i.name != "film"]
    del g.input[:]
    g.input.extend(inputs)
    return m, ranges


def weights_scaled(model):
    """FiLM on the conv weights: conv → Mul(γ) → Add(β) becomes Conv(x, γ·W, γ·b + β), the
    scaled weights computed in the graph on every call."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    producer = {o: n for n in g.node for o in n.output}
    users = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    new, drop = [], set()
    for k, mul in enumerate([n for n in g.node if n.op_type == "Mul"]):
        conv = producer.get(mul.input[0])
        if conv is None or conv.op_type != "Conv" or len(users[mul.input[0]]) != 1:
            continue
        add = users[mul.output[0]][0]
        if add.op_type != "Add":
            continue
        channels = inits[conv.input[1]].shape[0]
        g.initializer.extend([numpy_helper.from_array(np.array([channels, 1, 1, 1], np.int64), f"ws_s4_{k}"),
                              numpy_helper.from_array(np.array([channels], np.int64), f"ws_s1_{k}")])
        new += [helper.make_node("Reshape", [mul.input[1], f"ws_s4_{k}"], [f"ws_g4_{k}"]),
                helper.make_node("Reshape", [mul.input[1], f"ws_s1_{k}"], [f"ws_g1_{k}"]),
                helper.make_node("Reshape", [add.input[1], f"ws_s1_{k}"], [f"ws_b1_{k}"]),
                helper.make_node("Mul", [conv.input[1], f"ws_g4_{k}"], [f"ws_w_{k}"]),
                helper.make_node("Mul", [conv.input[2], f"ws_g1_{k}"], [f"ws_bg_{k}"]),
                helper.make_node("Add", [f"ws_bg_{k}", f"ws_b1_{k}"], [f"ws_b_{k}"])]
        conv.input[1], conv.input[2] = f"ws_w_{k}", f"ws_b_{k}"
        for user in users[add.output[0]]:
            for j, i in enumerate(user.input):
                if i == add.output[0]:
                    user.input[j] = conv.output[0]
        drop.update((id(mul), id(add)))
    nodes = new + [n for n in g.node if id(n) not in drop]
    done = {i.name for i in g.input} | {i.name for i in g.initializer}
    ordered = []
    while nodes:  # topological order (the new nodes read film-derived tensors)
        rest = []
        for n in nodes:
            if all(not i or i in done for i in n.input):
                ordered.append(n)
                done.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(nodes):
            raise RuntimeError("cycle in the rewritten graph")
        nodes = rest
    del g.node[:]
    g.node.extend(ordered)
    return m


def session(data, level: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def variants(bundle: Path, width: float):
    import onnx

    from oat_edge.bundle.film import film_vector
    from oat_edge.bundle.safe_files import load_npz

    vec = film_vector(load_npz(bundle / "film.npz"), LAM, width)
    model = onnx.load(str(bundle / f"paths/a_w{width:g}.onnx"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    out = {}
    for level in LEVELS:
        s = session(model.SerializeToString(), level)
        out[f"flat film, {level}"] = lambda x, s=s: s.run(["logits"], {"images": x, "film": vec})[0]
    split, ranges = per_site_inputs(model)
    for level in ("ORT_ENABLE_ALL", "ORT_ENABLE_BASIC"):
        s = session(split.SerializeToString(), level)
        feeds = {k: vec[a:b].reshape(1, -1, 1, 1) for k, (a, b) in ranges.items()}
        out[f"per-site γ/β inputs, {level}"] = lambda x, s=s, feeds=feeds: s.run(["logits"], {**feeds, "images": x})[0]
    s = session(weights_scaled(model).SerializeToString(), "ORT_ENABLE_ALL")
    out["weights scaled in-graph, ORT_ENABLE_ALL"] = lambda x, s=s: s.run(["logits"], {"images": x, "film": vec})[0]
    baked = next(e["file"] for e in manifest["baked"] if e["width"] == width and e["lam"] > 0)
    s = session(str(bundle / baked), "ORT_ENABLE_ALL")
    out["baked export"] = lambda x, s=s: s.run(["logits"], {"images": x})[0]
    return out, tuple(manifest["model"]["input_shape"])


def main(argv) -> int:
    bundle, width = Path(argv[0]), float(argv[1])
    rounds = int(argv[2]) if len(argv) > 2 else 7
    fns, shape = variants(bundle, width)
    x = np.random.default_rng(0).random((4,) + shape, dtype=np.float32)
    ref = fns["flat film, ORT_ENABLE_ALL"](x)
    for name in ("per-site γ/β inputs, ORT_ENABLE_ALL", "weights scaled in-graph, ORT_ENABLE_ALL"):
        print(f"{name}: max |Δ| vs the exported path {float(np.abs(fns[name](x) - ref).max()):.2g}")
    result = {}
    for batch in BATCHES:
        x = np.random.default_rng(batch).random((batch,) + shape, dtype=np.float32)
        per_round = {k: [] for k in fns}
        for r in range(rounds):
            for name in (list(fns) if r % 2 == 0 else list(reversed(fns))):
                f = fns[name]
                for _ in range(3):  # the previous variant evicted this one's working set
                    f(x)
                times, end = [], time.perf_counter() + 0.15
                while time.perf_counter() < end or len(times) < 20:
                    t0 = time.perf_counter_ns()
                    f(x)
                    times.append(time.perf_counter_ns() - t0)
                per_round[name].append(np.median(times) / 1e3)
        result[batch] = {k: float(np.median(v)) for k, v in per_round.items()}
    print(f"width {width:g}: median over {rounds} interleaved rounds of each round's p50 (µs), and ÷ baked export")
    for name in fns:
        cells = [f"{result[b][name]:.1f} ({result[b][name] / result[b]['baked export']:.2f}×)" for b in BATCHES]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
