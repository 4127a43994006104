"""The precision knob: fp16 and int8 (QDQ) files beside the fp32 ones, their parity
bars, precision in the manifest, the runtime and the policy, and the fake-quantized twin the
white-box calibration attacks through."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from oat_edge.errors import BundleError, ConfigError, ModeError
from oat_edge.mode import Mode
from oat_edge.runtime import policy
from oat_edge.runtime._native import load

from export_helpers import digits_images, tiny_checkpoint
from runtime_support import impl_params


@pytest.fixture(scope="module")
def prec_bundle(tmp_path_factory):
    """resnet_tiny at width 1, λ = 0.4 baked, at fp32, fp16 and int8."""
    from oat_edge.export import export_bundle

    ckpt = tiny_checkpoint(tmp_path_factory)
    return export_bundle(ckpt, tmp_path_factory.mktemp("prec") / "b", widths=[1.0], bake=[0.4], tensorrt="off",
                         progress=False, parity_images=32, precisions=["int8", "fp16"], quant_images=64)


def _manifest(b):
    return json.loads((b / "manifest.json").read_text())


def test_export_writes_a_file_per_precision_with_its_parity(prec_bundle):
    import onnx

    m = _manifest(prec_bundle)
    ids = {e["id"]: e for e in m["paths"] + m["baked"]}
    for base in ("c_w1", "a_w1", "lam0.4_w1"):
        assert "precision" not in ids[base]  # fp32 entries are written as before
        for p in ("fp16", "int8"):
            e = ids[f"{base}_{p}"]
            assert e["precision"] == p and e["derived_from"] == base
            assert e["parity"]["tolerance"]["top1_min"] >= 0.95
            assert e["parity"]["max_rel_diff"] <= e["parity"]["tolerance"]["max_rel_diff"]
    # fp16 is close, int8 further off but still agreeing on top-1
    assert ids["a_w1_fp16"]["parity"]["max_rel_diff"] < 1e-2
    assert 1e-4 < ids["a_w1_int8"]["parity"]["max_abs_diff"]
    int8 = onnx.load(prec_bundle / ids["a_w1_int8"]["file"])
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # exported without TensorRT engines: the CPU's U8S8 form (uint8 activations with zero points,
    # int8 weights), which onnxruntime runs faster than S8S8 on x86
    zps = [onnx.numpy_helper.to_array(i) for i in int8.graph.initializer if i.name.endswith("zero_point")]
    assert any(z.dtype == np.uint8 and z.any() for z in zps)
    weights = [onnx.numpy_helper.to_array(i) for i in int8.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert weights  # int8 weights
    assert m["precisions"]["int8"]["int8_format"] == "U8S8"
    assert m["precisions"]["int8"]["tensorrt_explicit_quantization"] is False
    fp16 = onnx.load(prec_bundle / ids["a_w1_fp16"]["file"])
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer)
    cal = m["precisions"]["int8"]["calibration"]
    assert cal["method"] == "MinMax" and cal["n_images"] == 64 and cal["source"].startswith("digits:train")
    assert m["precisions"]["fp16"]["parity_tolerance"]["top1_min"] == 0.99


def test_runtime_runs_each_precision(prec_bundle):
    from oat_edge.runtime import Runtime

    rt = Runtime(prec_bundle, backend="onnxruntime", threads=1, verify=False)
    assert rt.precisions == ["fp32", "fp16", "int8"]
    x = digits_images(32)
    rt.set_mode(0.3, 1.0)
    ref = rt.infer(x)
    # fp16 computes the fp32 function to about 1e-3 of the logits' scale: a bar at 1 % catches
    # the int8 file, a wrong FiLM vector or a wrong path behind "fp16"; int8 is looser.
    bars = {"fp16": (1e-2, 1.0), "int8": (0.25, 0.9)}
    for p, (rel, top1) in bars.items():
        rt.set_mode(0.3, 1.0, p)
        out, mode = rt.infer_with_mode(x)
        assert mode == Mode(0.3, 1.0, p) and rt.path_for(0.3, 1.0, p) == f"a_w1_{p}"
        assert 0 < np.abs(out - ref).max() <= rel * np.abs(ref).max(), (p, np.abs(out - ref).max())
        assert np.mean(out.argmax(1) == ref.argmax(1)) >= top1, p
    rt.set_mode(Mode(0.4, 1.0, "int8"))
    assert rt.mode == Mode(0.4, 1.0, "int8") and rt.path_for(0.4, 1.0, "int8") == "lam0.4_w1_int8"
    assert str(rt.mode) == "(λ=0.4, width=1, int8)"
    with pytest.raises(ModeError, match="precision must be one of"):
        rt.set_mode(0.3, 1.0, "int4")
    # the torch backend has no QDQ ops: it runs the fp32 files and says so
    rt_t = Runtime(prec_bundle, backend="torch", threads=1, verify=False)
    assert rt_t.precisions == ["fp32"] and "fp32 files only" in rt_t.backend_reason
    with pytest.raises(ModeError, match="int8"):
        rt_t.set_mode(0.3, 1.0, "int8")


def test_old_bundles_are_fp32(tmp_path):
    from pathlib import Path

    from oat_edge.runtime import Runtime

    legacy = Path(__file__).parent / "fixtures" / "legacy_bundle"
    rt = Runtime(legacy, backend="onnxruntime", threads=1)
    assert rt.precisions == ["fp32"] and rt.mode.precision == "fp32"
    with pytest.raises(ModeError, match="no int8"):
        rt.set_mode(0.5, 1.0, "int8")


def test_schema_checks_precision(prec_bundle, tmp_path):
    from oat_edge.bundle import load_manifest

    b = tmp_path / "b"
    shutil.copytree(prec_bundle, b)
    m = _manifest(b)
    m["paths"][-1]["precision"] = "int4"
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="precision"):
        load_manifest(b, verify_hashes=False)
    m = _manifest(prec_bundle)
    twin = next(e for e in m["paths"] if e["id"] == "a_w1_int8")
    twin_fp16 = next(e for e in m["paths"] if e["id"] == "a_w1_fp16")
    twin_fp16["precision"] = "int8"  # a second int8 BN_a path at width 1
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="second 'a' int8 path"):
        load_manifest(b, verify_hashes=False)
    assert twin["precision"] == "int8"


def test_int8_parity_gate_can_fail(prec_bundle, tmp_path_factory, monkeypatch):
    from oat_edge.bundle.film import film_vector, load_film_tables
    from oat_edge.export import export_bundle
    from oat_edge.export import parity as P
    from oat_edge.export import precision as Q

    from export_helpers import load_ckpt_model

    model = load_ckpt_model(tiny_checkpoint(tmp_path_factory))
    tables = load_film_tables(prec_bundle / "film.npz")
    args = (model, prec_bundle / "paths" / "a_w1_int8.onnx", 1.0, [0.4], digits_images(32),
            lambda t: film_vector(tables, t, 1.0))
    assert P.check_file(*args, precision="int8")["failures"] == []
    monkeypatch.setitem(Q.TOLERANCES, "int8", {"top1_min": 0.95, "max_rel_diff": 1e-6, "decisive_margin": 0.05})
    rec = P.check_file(*args, precision="int8")
    assert rec["failures"] and rec["tolerance"]["max_rel_diff"] == 1e-6
    assert "int8: top-1 ≥ 95%" in str(P.parity_failure({"a_w1_int8": rec["failures"]}))
    out = tmp_path_factory.mktemp("fail") / "b"
    with pytest.raises(ConfigError, match="precision"):
        export_bundle(tiny_checkpoint(tmp_path_factory), out, precisions=["int4"], tensorrt="off", progress=False)
    with pytest.raises(ConfigError, match="int8_activations"):
        export_bundle(tiny_checkpoint(tmp_path_factory), out, precisions=["int8"], int8_activations="u4",
                      tensorrt="off", progress=False)
    assert not out.exists()


def test_int8_format_follows_the_target():
    from oat_edge.export import precision as Q

    assert Q.resolve_activations("auto", tensorrt_wanted=False) == "u8"  # onnxruntime on the CPU: U8S8
    assert Q.resolve_activations("auto", tensorrt_wanted=True) == "s8"  # TensorRT engines: S8S8
    assert Q.resolve_activations("s8", tensorrt_wanted=False) == "s8"
    assert Q.describe("int8", {}, "s8")["int8_format"] == "S8S8"
    with pytest.raises(ConfigError, match="int8_activations"):
        Q.resolve_activations("u4", tensorrt_wanted=False)


def test_fake_quant_twin_follows_the_int8_file(prec_bundle, tmp_path_factory):
    import torch

    from oat_edge.bundle.film import film_vector, load_film_tables
    from oat_edge.export import precision as Q
    from oat_edge.export.freeze import freeze_path
    from oat_edge.export.quant_eval import _AsModel, fake_quant_twin
    from oat_edge.onnxrt import open_session

    from export_helpers import load_ckpt_model

    model = load_ckpt_model(tiny_checkpoint(tmp_path_factory))
    tables = load_film_tables(prec_bundle / "film.npz")
    quant, _src = Q.calibration_images(model_dataset(), [1, 8, 8], 64)
    lams = [t for t in model.train_lambdas if t > 0]
    feeds = Q.calibration_feeds(quant, lams, lambda t: film_vector(tables, t, 1.0))
    twin = _AsModel(fake_quant_twin(freeze_path(model, 1.0, "a"), feeds), film_vector(tables, 0.4, 1.0))
    x = torch.from_numpy(digits_images(64)).requires_grad_(True)
    out = twin(x)
    sess = open_session(prec_bundle / "paths" / "a_w1_int8.onnx")
    ref = sess.run(["logits"], {"images": digits_images(64), "film": film_vector(tables, 0.4, 1.0)})[0]
    assert np.mean(out.detach().numpy().argmax(1) == ref.argmax(1)) >= 0.9
    assert np.abs(out.detach().numpy() - ref).max() < 0.1 * np.abs(ref).max()
    out[:, 0].sum().backward()  # straight-through rounding: gradients reach the input
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def model_dataset():
    return {"name": "digits"}


# --- the policy over precisions -----------------------------------------------------------------
# (λ, width, precision, SA, RA, latency ms): int8 is 2× faster and loses a little robustness
PTABLE = [
    (1.0, 1.0, "fp32", 0.80, 0.55, 4.0), (1.0, 1.0, "int8", 0.79, 0.52, 2.0),
    (1.0, 0.5, "fp32", 0.70, 0.45, 2.5), (1.0, 0.5, "int8", 0.69, 0.40, 1.2),
    (0.0, 1.0, "fp32", 0.95, 0.10, 4.0), (0.0, 1.0, "int8", 0.95, 0.10, 4.0),
]


def _pchoose(impl, **budgets):
    cands = [policy.Candidate(Mode(l, w, p), sa, ra, lat, "film", "profile") for l, w, p, sa, ra, lat in PTABLE]
    b = policy.check_budgets(budgets.get("min_ra"), budgets.get("min_sa"), budgets.get("max_lat"),
                             budgets.get("prefer", "robust"), 1)
    return policy.choose(cands, b[0], b[1], b[2], b[3], load(impl), True, 1).mode


@pytest.mark.parametrize("impl", impl_params())
def test_select_picks_int8_when_latency_needs_it_and_robustness_allows(impl):
    assert _pchoose(impl) == Mode(1.0, 1.0, "fp32")  # no latency budget: the most robust
    # 3 ms: only int8 at width 1 fits among the most robust
    assert _pchoose(impl, min_ra=0.5, max_lat=3.0) == Mode(1.0, 1.0, "int8")
    # a robustness budget int8 misses: fp32 at width 1 is too slow, nothing fits
    with pytest.raises(ModeError, match="closest"):
        _pchoose(impl, min_ra=0.54, max_lat=3.0)
    # the fastest mode that meets the budgets is an int8 one...
    assert _pchoose(impl, min_ra=0.42, max_lat=2.6, prefer="fast") == Mode(1.0, 1.0, "int8")
    # ...unless the robustness budget rules int8 out: then fp32, slower as it is
    assert _pchoose(impl, min_ra=0.53, max_lat=4.0, prefer="fast") == Mode(1.0, 1.0, "fp32")
    # an exact tie between precisions goes to fp32 (candidates come fp32 first)
    assert _pchoose(impl, prefer="accurate") == Mode(0.0, 1.0, "fp32")


@pytest.mark.parametrize("impl", impl_params())
def test_select_never_takes_an_int8_copy_slower_than_fp32(impl):
    """An int8 file measured slower than its fp32 one (S8S8 on onnxruntime/x86, digits-sized
    models) is no candidate, even where its calibration happens to score a hair higher."""
    table = [(1.0, 1.0, "fp32", 0.80, 0.55, 4.0), (1.0, 1.0, "int8", 0.80, 0.56, 5.5),
             (1.0, 0.5, "fp32", 0.70, 0.45, 2.5), (1.0, 0.5, "int8", 0.70, 0.45, 2.5)]
    cands = [policy.Candidate(Mode(l, w, p), sa, ra, lat, "film", "profile") for l, w, p, sa, ra, lat in table]
    for prefer in ("robust", "accurate", "fast"):
        for max_lat in (6.0, 4.5):
            b = policy.check_budgets(0.4, None, max_lat, prefer, 1)
            mode = policy.choose(cands, *b, load(impl), True, 1).mode
            assert mode.precision == "fp32", (prefer, max_lat, mode)
    assert policy.choose(cands, *policy.check_budgets(0.5, None, 6.0, "robust", 1), load(impl), True, 1).mode \
        == Mode(1.0, 1.0, "fp32")
    # not even where only the slower copy meets the robustness budget
    with pytest.raises(ModeError, match="closest"):
        policy.choose(cands[1:2] + cands[0:1], *policy.check_budgets(0.56, None, 6.0, "robust", 1), load(impl),
                      True, 1)


def test_both_policy_implementations_agree_over_precisions():
    from oat_edge.runtime._native import ext_import_error

    if ext_import_error():
        pytest.skip("C++ extension not built")
    for budgets in (dict(), dict(min_ra=0.5, max_lat=3.0), dict(min_ra=0.42, max_lat=2.6, prefer="fast"),
                    dict(prefer="accurate"), dict(max_lat=1.5, prefer="fast")):
        assert _pchoose("ext", **budgets) == _pchoose("python", **budgets)


def test_runtime_select_over_precisions(prec_bundle, tmp_path):
    from oat_edge.runtime import Runtime

    b = tmp_path / "b"
    shutil.copytree(prec_bundle, b)
    m = _manifest(b)
    recs = []
    for w, ra in ((1.0, 0.50),):
        recs.append({"lam": 1.0, "width": w, "n": 10_000, "sa": 0.8, "ra": {"pgd7": ra, "worst_case": ra}})
        recs.append({"lam": 1.0, "width": w, "precision": "int8", "n": 10_000, "sa": 0.79,
                     "ra": {"transfer": ra - 0.01, "whitebox_twin": ra - 0.03, "worst_case": ra - 0.03}})
    m["calibration"] = {"records": recs, "robust_metric": "worst_case", "n_images": 10_000,
                        "attacks": {"pgd7": {}}}
    (b / "manifest.json").write_text(json.dumps(m))
    probe = Runtime(b, backend="onnxruntime", threads=1, verify=False)
    prof = []
    for w, ms in ((1.0, 4.0),):
        prof.append({"lam": 1.0, "width": w, "batch": 1, "path": "film", "p50_ms": ms, "p99_ms": ms})
        prof.append({"lam": 1.0, "width": w, "batch": 1, "path": "film", "p50_ms": ms / 2, "p99_ms": ms / 2,
                     "precision": "int8"})
    path = b / "latency" / f"{probe.device_key}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"device_key": probe.device_key, "records": prof}))
    rt = Runtime(b, backend="onnxruntime", threads=1, verify=False)
    assert rt.latency_ms(1.0, 1.0, precision="int8") == 2.0
    # width 1 is robust enough but 4 ms at fp32; its int8 file (2 ms, RA 0.47) fits
    assert rt.select(min_robust_acc=0.45, max_latency_ms=2.5) == Mode(1.0, 1.0, "int8")
    assert rt.select(min_robust_acc=0.45) == Mode(1.0, 1.0, "fp32")
    with pytest.raises(ModeError, match="closest"):  # int8's worst case (0.47) is below 0.48
        rt.select(min_robust_acc=0.48, max_latency_ms=2.5)
    # a named attack the int8 records lack: fp32 candidates only, and fp32 is too slow for 2.5 ms
    assert rt.select(attack="pgd7") == Mode(1.0, 1.0, "fp32")
    with pytest.raises(ModeError, match="closest"):
        rt.select(attack="pgd7", max_latency_ms=2.5)


def test_runtime_select_skips_a_slower_int8_file(prec_bundle, tmp_path):
    from oat_edge.runtime import Runtime

    b = tmp_path / "b"
    shutil.copytree(prec_bundle, b)
    m = _manifest(b)
    m["calibration"] = {"records": [
        {"lam": 1.0, "width": 1.0, "n": 10_000, "sa": 0.8, "ra": {"pgd7": 0.50, "worst_case": 0.50}},
        {"lam": 1.0, "width": 1.0, "precision": "int8", "n": 10_000, "sa": 0.8,
         "ra": {"transfer": 0.51, "whitebox_fq": 0.51, "worst_case": 0.51}}],
        "robust_metric": "worst_case", "n_images": 10_000, "attacks": {"pgd7": {}}}
    (b / "manifest.json").write_text(json.dumps(m))
    key = Runtime(b, backend="onnxruntime", threads=1, verify=False).device_key
    prof = [{"lam": 1.0, "width": 1.0, "batch": 1, "path": "film", "p50_ms": 1.0, "p99_ms": 1.0},
            {"lam": 1.0, "width": 1.0, "batch": 1, "path": "film", "p50_ms": 1.4, "p99_ms": 1.4, "precision": "int8"}]
    (b / "latency").mkdir(exist_ok=True)
    (b / "latency" / f"{key}.json").write_text(json.dumps({"device_key": key, "records": prof}))
    rt = Runtime(b, backend="onnxruntime", threads=1, verify=False)
    assert rt.latency_ms(1.0, 1.0, precision="int8", quantile="p99") == 1.4
    for prefer in ("robust", "accurate", "fast"):
        assert rt.select(max_latency_ms=2.0, prefer=prefer) == Mode(1.0, 1.0, "fp32")


def test_bench_modes_take_a_precision():
    from oat_edge.bench.run import parse_modes

    assert parse_modes(["1:1", "0:0.5:int8"], [0.5, 1.0]) == [Mode(1.0, 1.0), Mode(0.0, 0.5, "int8")]
    with pytest.raises(ModeError, match="precision"):
        parse_modes(["0:0.5:int4"], [0.5, 1.0])


def test_u8_activations_twin_and_file(prec_bundle, tmp_path_factory, tmp_path):
    """int8 activations "u8": asymmetric uint8 (onnxruntime's fast x86 form), recorded as not for
    TensorRT; the twin's asymmetric fake quantization follows the file."""
    import onnx
    import torch

    from oat_edge.bundle.film import film_vector, load_film_tables
    from oat_edge.export import precision as Q
    from oat_edge.export.freeze import freeze_path
    from oat_edge.export.quant_eval import _AsModel, fake_quant_twin
    from oat_edge.onnxrt import open_session

    from export_helpers import load_ckpt_model

    info = Q.describe("int8", {}, "u8")
    assert info["activation_type"] == "u8" and info["tensorrt_explicit_quantization"] is False
    model = load_ckpt_model(tiny_checkpoint(tmp_path_factory))
    tables = load_film_tables(prec_bundle / "film.npz")
    quant, _src = Q.calibration_images({"name": "digits"}, [1, 8, 8], 64)
    feeds = Q.calibration_feeds(quant, [0.0], lambda t: film_vector(tables, t, 1.0))
    proto = Q.to_int8(prec_bundle / "paths" / "c_w1.onnx", feeds, "u8")
    zps = [onnx.numpy_helper.to_array(i) for i in proto.graph.initializer if i.name.endswith("zero_point")]
    assert any(z.dtype == np.uint8 and z.any() for z in zps)  # real zero points, not a symmetric file
    onnx.save(proto, tmp_path / "u8.onnx")
    twin = _AsModel(fake_quant_twin(freeze_path(model, 1.0, "c"), feeds, symmetric=False), film_vector(tables, 0.0, 1.0))
    x = digits_images(64)
    with torch.no_grad():
        out = twin(torch.from_numpy(x)).numpy()
    ref = open_session(tmp_path / "u8.onnx").run(["logits"], {"images": x, "film": film_vector(tables, 0.0, 1.0)})[0]
    assert np.mean(out.argmax(1) == ref.argmax(1)) >= 0.9
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max()


def test_reduced_precision_is_scored_with_every_attack_fp32_gets(tmp_path_factory, capsys):
    """`oat-edge export --calibrate --precision fp16 int8`, end to end: every fp16/int8 record is
    the worst case of the fp32 ensemble transferred, the ensemble's gradient attacks through the
    file's twin, and Square against the deployed file itself. A precision scored with fewer
    attacks than fp32 (e.g. transfer only) fails here."""
    from oat_edge.cli import main
    from oat_edge.training.attacks import make_attack

    out = tmp_path_factory.mktemp("calprec") / "b"
    rc = main(["export", str(tiny_checkpoint(tmp_path_factory)), "--out", str(out), "--widths", "0.5",
               "--bake-lambdas", "1", "--calibrate", "--calib-lambdas", "0", "1", "--calib-max-images", "16",
               "--calib-attacks", "pgd7", "square",
               "--precision", "fp32", "fp16", "int8", "--quant-images", "32", "--tensorrt", "off", "--no-progress"])
    assert rc == 0, capsys.readouterr()
    cal = _manifest(out)["calibration"]
    fp32_attacks = list(cal["attacks"])
    gradient = [a for a in fp32_attacks if not getattr(make_attack(a, dataset="digits"), "gradient_free", False)]
    assert gradient == ["pgd7"] and fp32_attacks == ["pgd7", "square"]
    reduced = [r for r in cal["records"] if r.get("precision", "fp32") != "fp32"]
    assert sorted({(r["lam"], r["precision"]) for r in reduced}) == [(0.0, "fp16"), (0.0, "int8"), (1.0, "fp16"),
                                                                     (1.0, "int8")]
    for r in reduced:
        assert r["attacks"]["transfer"] == fp32_attacks, r
        assert r["attacks"]["whitebox_twin"] == gradient, r
        assert r["attacks"]["square_onnx"] and "queries" in r["attacks"]["square_onnx"][0]
        assert set(r["ra"]) == {"transfer", "whitebox_twin", "square_onnx", "worst_case"}
        assert r["twin_agreement"] >= 0.9  # the twin computes what the file computes
        # worst case per image: at most each attack's figure (Square runs on what the others left)
        assert r["ra"]["worst_case"] == r["ra"]["square_onnx"] <= min(r["ra"]["transfer"], r["ra"]["whitebox_twin"])
