"""Hardening, round 2: a red-team pass as a hostile bundle author, a careless user and a robot
under load. One test (or one parametrised family) per finding; the FiLM site tables are in
tests/test_film_twins.py and tests/test_hardening_fuzz.py."""

from __future__ import annotations

import shutil

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
