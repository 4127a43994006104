"""Hardening, round 2: a red-team pass as a hostile bundle author, a careless user and a robot
under load. One test (or one parametrised family) per finding; the FiLM site tables are in
tests/test_film_twins.py and tests/test_hardening_fuzz.py."""

from __future__ import annotations

import shutil

import numpy as np

import pytest

from hardening_support import bundle, checkpoint, copy_bundle
from oat_edge.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::oat_edge.signing.UnsignedBundleWarning")


def one_error_line(capsys, command):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"oat-edge {command}: error:"), err
    return err[0]


def _tree(path):
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else None) for p in path.rglob("*"))


# --- export --force replaces only a bundle ---------------------------------------------------------------
def test_force_keeps_a_folder_of_user_files(tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    (d / "thesis.txt").write_text("precious")
    assert main(["export", str(checkpoint()), "-o", str(d), "--force", "--no-progress"]) == 2
    assert "not an oat-edge bundle" in one_error_line(capsys, "export")
    assert (d / "thesis.txt").read_text() == "precious" and sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_force_keeps_a_bundle_with_user_files_beside_it(tmp_path, capsys):
    b = copy_bundle(tmp_path)
    (b / "notes.txt").write_text("mine")
    before = _tree(b)
    assert main(["export", str(checkpoint()), "-o", str(b), "--force", "--no-progress"]) == 2
    assert "notes.txt" in one_error_line(capsys, "export")
    assert _tree(b) == before


@pytest.mark.parametrize("where", ["parent", "bundle"])
def test_force_never_deletes_its_input_checkpoint(tmp_path, capsys, where):
    if where == "parent":  # export parent/sub/ckpt.pt -o parent --force
        out = tmp_path / "parent"
        (out / "sub").mkdir(parents=True)
        ckpt = out / "sub" / "ckpt.pt"
    else:  # the checkpoint kept inside the bundle it was exported to
        out = copy_bundle(tmp_path)
        ckpt = out / "ckpt.pt"
    shutil.copy(checkpoint(), ckpt)
    before = _tree(out)
    assert main(["export", str(ckpt), "-o", str(out), "--force", "--no-progress"]) == 2
    assert "input checkpoint" in one_error_line(capsys, "export")
    assert _tree(out) == before


def test_force_into_a_folder_of_a_bundle_keeps_the_bundle(tmp_path, capsys):
    b = copy_bundle(tmp_path)
    before = _tree(b)
    assert main(["export", str(checkpoint()), "-o", str(b / "paths"), "--force", "--no-progress"]) == 2
    assert "not an oat-edge bundle" in one_error_line(capsys, "export")
    assert _tree(b) == before


def test_force_replaces_an_older_bundle(tmp_path):
    from oat_edge.bundle.manifest import load_manifest
    from oat_edge.export import export_bundle

    b = copy_bundle(tmp_path)
    (b / "latency").mkdir()
    (b / "latency" / "old-device.json").write_text("{}")
    export_bundle(checkpoint(), b, widths=[1.0], force=True, tensorrt="off", progress=False, parity_images=8)
    assert [e["id"] for e in load_manifest(b)["paths"]] == ["c_w1", "a_w1"] and not (b / "latency").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


# --- baking keeps precisions apart -----------------------------------------------------------------------
def _precision_runtimes():
    from oat_edge.runtime import Runtime

    from runtime_support import precision_bundle_path

    b = precision_bundle_path()
    return Runtime(b, backend="onnxruntime", threads=1, bake=True), Runtime(b, backend="onnxruntime", threads=1)


def test_bake_serves_each_precision_from_its_own_path():
    from runtime_support import sample_images

    rt, ref = _precision_runtimes()
    x = sample_images(4, seed=3)
    try:
        want = {}
        for p in ("fp32", "fp16", "int8"):
            ref.set_mode(0.3, 1.0, p)
            want[p] = ref.infer(x)
        rt.set_mode(0.3, 1.0)
        assert rt.wait_baked(0.3, 1.0, timeout=120) and rt.baked_now()
        for p in ("int8", "fp16"):
            assert np.abs(want[p] - want["fp32"]).max() > 1e-3  # the precisions are told apart
            rt.set_mode(0.3, 1.0, p)
            baked = rt.wait_baked(0.3, 1.0, timeout=120, precision=p)  # baked or failed: either way settled
            y, mode = rt.infer_with_mode(x)
            assert mode.precision == p and rt.baked_now() == baked
            np.testing.assert_allclose(y, want[p], rtol=0, atol=1e-4)
    finally:
        rt.close()
        ref.close()


def test_a_failed_int8_bake_does_not_block_the_fp32_mode():
    rt, ref = _precision_runtimes()
    ref.close()
    try:
        rt.set_mode(0.6, 1.0, "int8")
        rt.wait_baked(0.6, 1.0, timeout=120, precision="int8")
        rt.set_mode(0.6, 1.0)
        assert rt.wait_baked(0.6, 1.0, timeout=120) and rt.baked_now()
    finally:
        rt.close()
