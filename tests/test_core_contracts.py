"""Checkpoint contract, atomic files, FLOPs against the paper, packaging boundaries."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from oat_edge.checkpoint import FORMAT, build_model, load_checkpoint, load_model, save_checkpoint
from oat_edge.errors import CheckpointError
from oat_edge.fileio import atomic_directory, atomic_write_json, sha256_file
from oat_edge.flops import count_path
from oat_edge.models import create_model


def make_payload(model, **extra):
    kwargs = {"channels": [8, 16, 32], "widths": list(model.widths), "train_lambdas": list(model.train_lambdas)}
    payload = {
        "arch": "resnet_tiny",
        "arch_kwargs": kwargs,
        "model": model.state_dict(),
        "method": "oats",
        "dataset": {"name": "digits", "num_classes": 10, "input_shape": [1, 8, 8]},
        "epoch": 1,
    }
    payload.update(extra)
    return payload


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return create_model("resnet_tiny", channels=(8, 16, 32))


def test_checkpoint_roundtrip_with_weights_only(tmp_path, tiny):
    path = save_checkpoint(tmp_path / "ckpt.pt", make_payload(tiny))
    raw = torch.load(path, weights_only=True)  # the contract: plain data only
    assert raw["format"] == FORMAT
    model, payload = load_model(path)
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(model(x, 0.3), tiny.eval()(x, 0.3))
    # The stored code matrix is used, never regenerated from the seed.
    payload["model"]["code_matrix"] = payload["model"]["code_matrix"].flip(0)
    assert torch.equal(build_model(payload).code_matrix, tiny.code_matrix.flip(0))


def test_checkpoint_write_is_atomic(tmp_path, tiny, monkeypatch):
    target = tmp_path / "ckpt.pt"
    save_checkpoint(target, make_payload(tiny))
    before = target.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(CheckpointError, match="could not write checkpoint"):  # one line, not a traceback
        save_checkpoint(target, make_payload(tiny, epoch=2))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp files left


def test_corrupt_and_truncated_checkpoints_are_one_clear_error(tmp_path, tiny):
    good = save_checkpoint(tmp_path / "good.pt", make_payload(tiny))
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    for path in (truncated, garbage, tmp_path / "missing.pt"):
        with pytest.raises(CheckpointError):
            load_checkpoint(path)


def test_foreign_checkpoints_are_refused(tmp_path, tiny):
    plain = tmp_path / "plain_state_dict.pt"
    torch.save(tiny.state_dict(), plain)
    with pytest.raises(CheckpointError, match="not an oat-edge checkpoint"):
        load_checkpoint(plain)
    future = tmp_path / "future.pt"
    torch.save({**make_payload(tiny), "format": FORMAT, "format_version": 99}, future)
    with pytest.raises(CheckpointError, match="version"):
        load_checkpoint(future)


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_with_code_objects_is_never_unpickled(tmp_path, tiny):
    evil = tmp_path / "evil.pt"
    torch.save({**make_payload(tiny), "format": FORMAT, "format_version": 1, "x": Exploit()}, evil)
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(evil)


def test_weights_that_do_not_fit_the_architecture(tmp_path, tiny):
    payload = make_payload(tiny)
    payload["arch_kwargs"]["channels"] = [8, 16, 64]
    path = save_checkpoint(tmp_path / "bad.pt", payload)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(path)


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "bundle"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            atomic_write_json(tmp / "manifest.json", {"a": 1})
            raise RuntimeError("parity failed")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(target) as tmp:
        atomic_write_json(tmp / "manifest.json", {"a": 1})
    assert json.loads((target / "manifest.json").read_text()) == {"a": 1}
    assert len(sha256_file(target / "manifest.json")) == 64
    with pytest.raises(FileExistsError):
        with atomic_directory(target):
            pass


def test_resnet34_flops_match_the_paper():
    """Paper (Wang et al. 2020): ResNet-34 OATS ≈ 1.18 GFLOPs vs 1.16 for the plain slimmable
    net at 32×32 (multiply-accumulates)."""
    cond = create_model("resnet34")
    plain = create_model("resnet34", film=False)
    full = count_path(cond, (3, 32, 32), 1.0)
    assert abs(count_path(plain, (3, 32, 32), 1.0)["total_flops"] / 1.16e9 - 1) < 0.02
    assert abs(full["total_flops"] / 1.18e9 - 1) < 0.02
    half = count_path(cond, (3, 32, 32), 0.5)
    # Slimming to half the channels quarters the convolution cost.
    assert abs(half["conv_linear_flops"] / full["conv_linear_flops"] - 0.25) < 0.01


def run_py(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")


def test_import_oat_edge_does_not_import_torch():
    r = run_py("import sys, oat_edge, oat_edge.cli, oat_edge.lambda_code; print('torch' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


@pytest.mark.slow
def test_wheel_installs_one_package_and_no_generic_top_level_names(tmp_path):
    """`pip install .` must put training/, export/ and runtime/ under oat_edge/ only: no
    `training` or `runtime` package may land in site-packages. (An editable install adds the
    repo root to sys.path by scikit-build-core's design; the wheel is the contract.)"""
    import zipfile

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(root), "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "-q"],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = tmp_path.glob("oat_edge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert all(t == "oat_edge" or t.endswith(".dist-info") for t in tops), tops
    for stage in ("training", "export", "runtime"):
        assert f"oat_edge/{stage}/__init__.py" in names
    assert not any("/csrc/" in n for n in names), "C++ sources must not ship in the wheel"
    if os.environ.get("OATEDGE_REQUIRE_EXT") == "1":
        assert any(n.startswith("oat_edge/runtime/_ext") for n in names), "the C++ extension was not built"


def test_cli_help_works_for_every_subcommand():
    from oat_edge.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:
        r = subprocess.run([sys.executable, "-m", "oat_edge", name, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage" in r.stdout, (name, r.stderr)
