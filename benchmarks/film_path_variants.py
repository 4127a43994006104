"""FiLM-as-input path variants on one width of a bundle (issue 12, docs/benchmarking.md
"FiLM-as-input path: alternatives measured"): the exported path (flat ``film`` input, Slice +
Reshape per site) under each ONNX Runtime graph-optimisation level; per-site γ/β inputs shaped
[1, C, 1, 1] (no Slice/Reshape); FiLM applied to the conv weights in the graph instead of the
activations; and the baked export of a mode as the floor. Interleaved rounds (order reversed
every other round), one intra-op thread, median across rounds of each round's p50.

    python benchmarks/film_path_variants.py BUNDLE WIDTH [ROUNDS]
"""
import sys, time, json, numpy as np, onnx, onnxruntime as ort
from onnx import helper, TensorProto, numpy_helper
from oat_edge.bundle.film import film_vector
from oat_edge.safe_files import load_npz
B = sys.argv[1]; width = float(sys.argv[2]); lam = 0.5
arr = load_npz(B + '/film.npz')
vec = film_vector(arr, lam, width)
m = onnx.load(f'{B}/paths/a_w{width:g}.onnx')
man = json.load(open(B + '/manifest.json'))
baked_file = next((e['file'] for e in man['baked'] if e['width'] == width and e['lam'] > 0), None)

def per_site(model):
    m2 = onnx.ModelProto(); m2.CopyFrom(model); g = m2.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    feeds = {}; drop = set()
    for n in list(g.node):
        if n.op_type == 'Reshape' and n.input[0] in prod and prod[n.input[0]].op_type == 'Slice' and prod[n.input[0]].input[0] == 'film':
            s = prod[n.input[0]]
            st, en = int(inits[s.input[1]][0]), int(inits[s.input[2]][0])
            name = f'film_{st}'
            feeds[name] = (st, en)
            for u in g.node:
                for k, i in enumerate(u.input):
                    if i == n.output[0]: u.input[k] = name
            drop.add(id(n)); drop.add(id(s))
            g.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, en - st, 1, 1]))
    keep = [n for n in g.node if id(n) not in drop]
    del g.node[:]; g.node.extend(keep)
    ins = [i for i in g.input if i.name != 'film']; del g.input[:]; g.input.extend(ins)
    return m2, feeds

def weight_scaled(model):
    """FiLM on the conv weights: W' = γ·W, b' = γ·b + β computed in the graph per inference."""
    m2 = onnx.ModelProto(); m2.CopyFrom(model); g = m2.graph
    prod = {o: n for n in g.node for o in n.output}
    cons = {}
    for n in g.node:
        for i in n.input: cons.setdefault(i, []).append(n)
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    new_nodes = []; drop = set(); k = 0
    for n in list(g.node):
        if n.op_type != 'Mul': continue
        conv = prod.get(n.input[0])
        if conv is None or conv.op_type != 'Conv' or len(cons[n.input[0]]) != 1: continue
        add = cons[n.output[0]][0]
        if add.op_type != 'Add': continue
        gam, bet = n.input[1], add.input[1]
        C = inits[conv.input[1]].shape[0]
        shp = f'ws_shape4_{k}'; g.initializer.append(numpy_helper.from_array(np.array([C, 1, 1, 1], np.int64), shp))
        shp1 = f'ws_shape1_{k}'; g.initializer.append(numpy_helper.from_array(np.array([C], np.int64), shp1))
        g4, g1, b1 = f'ws_g4_{k}', f'ws_g1_{k}', f'ws_b1_{k}'
        new_nodes += [helper.make_node('Reshape', [gam, shp], [g4]), helper.make_node('Reshape', [gam, shp1], [g1]),
                      helper.make_node('Reshape', [bet, shp1], [b1]),
                      helper.make_node('Mul', [conv.input[1], g4], [f'ws_w_{k}']),
                      helper.make_node('Mul', [conv.input[2], g1], [f'ws_bg_{k}']),
                      helper.make_node('Add', [f'ws_bg_{k}', b1], [f'ws_b_{k}'])]
        conv.input[1] = f'ws_w_{k}'; conv.input[2] = f'ws_b_{k}'
        for u in cons[add.output[0]]:
            for j, i in enumerate(u.input):
                if i == add.output[0]: u.input[j] = conv.output[0]
        drop.add(id(n)); drop.add(id(add)); k += 1
    keep = [n for n in g.node if id(n) not in drop]
    del g.node[:]; g.node.extend(new_nodes + keep)
    # topological order: film-derived nodes (Slice/Reshape) must precede; simple sort by dependencies
    order, done = [], set([i.name for i in g.input] + [i.name for i in g.initializer])
    pending = list(g.node)
    while pending:
        rest = []
        for n in pending:
            if all((not i) or i in done for i in n.input): order.append(n); done.update(n.output)
            else: rest.append(n)
        if len(rest) == len(pending): raise RuntimeError('cycle')
        pending = rest
    del g.node[:]; g.node.extend(order)
    return m2

def so(level):
    o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL; o.graph_optimization_level = level; o.log_severity_level = 3
    return o
L = ort.GraphOptimizationLevel
ps, pfeeds = per_site(m)
variants = {}
for lvl in ('ORT_ENABLE_ALL', 'ORT_ENABLE_EXTENDED', 'ORT_ENABLE_BASIC', 'ORT_DISABLE_ALL'):
    s = ort.InferenceSession(m.SerializeToString(), so(getattr(L, lvl)))
    variants[f'flat film, {lvl}'] = (s, lambda x, s=s: s.run(['logits'], {'images': x, 'film': vec}))
for lvl in ('ORT_ENABLE_ALL', 'ORT_ENABLE_BASIC'):
    s = ort.InferenceSession(ps.SerializeToString(), so(getattr(L, lvl)))
    base = {k: vec[a:b].reshape(1, -1, 1, 1) for k, (a, b) in pfeeds.items()}
    def f(x, s=s, base=base):
        d = dict(base); d['images'] = x
        return s.run(['logits'], d)
    variants[f'per-site γ/β inputs, {lvl}'] = (s, f)
wsm = weight_scaled(m)
s = ort.InferenceSession(wsm.SerializeToString(), so(L.ORT_ENABLE_ALL))
variants['weights scaled in-graph, ORT_ENABLE_ALL'] = (s, lambda x, s=s: s.run(['logits'], {'images': x, 'film': vec}))
if baked_file:
    s = ort.InferenceSession(f'{B}/{baked_file}', so(L.ORT_ENABLE_ALL))
    variants['baked export'] = (s, lambda x, s=s: s.run(['logits'], {'images': x}))
shape = tuple(man['model']['input_shape'])
# parity of the per-site variant
x = np.random.default_rng(0).random((4,) + shape, dtype=np.float32)
ref = variants['flat film, ORT_ENABLE_ALL'][1](x)[0]
print('per-site max|Δ|', float(np.abs(variants['per-site γ/β inputs, ORT_ENABLE_ALL'][1](x)[0] - ref).max()))
print('weight-scaled max|Δ|', float(np.abs(variants['weights scaled in-graph, ORT_ENABLE_ALL'][1](x)[0] - ref).max()))
res = {}
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 7
for batch in (1, 8, 32):
    x = np.random.default_rng(batch).random((batch,) + shape, dtype=np.float32)
    med = {k: [] for k in variants}
    for r in range(rounds):
        keys = list(variants) if r % 2 == 0 else list(reversed(variants))
        for k in keys:
            f = variants[k][1]
            for _ in range(3): f(x)
            ts = []
            t_end = time.perf_counter() + 0.15
            while time.perf_counter() < t_end or len(ts) < 20:
                t = time.perf_counter_ns(); f(x); ts.append(time.perf_counter_ns() - t)
            med[k].append(np.median(ts) / 1e3)
    res[batch] = {k: float(np.median(v)) for k, v in med.items()}
base = 'baked export'
print(f"width {width:g}: median over {rounds} interleaved rounds of per-round p50 (µs), and ÷ baked")
for k in variants:
    print(f"| {k} | " + " | ".join(f"{res[b][k]:.1f} ({res[b][k]/res[b][base]:.2f}×)" for b in (1, 8, 32)) + " |")
