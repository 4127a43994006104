"""Shared set-up for the runtime tests: a small OATS checkpoint with non-trivial BN statistics and
FiLM generators, exported once per test session by the real export stage.

Imported by tests/test_runtime*.py, test_policy.py, test_concurrency.py and
test_extension.py. Each builder caches its result per process, so the export (~30 s on two
cores) happens once however many test modules use it.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from oat_edge.lambda_code import S1, S3_UNSEEN

CHANNELS = (8, 16, 32)
WIDTHS = (0.5, 0.75, 1.0)
INPUT_SHAPE = (1, 8, 8)
BAKED = (0.2,)  # a grid λ baked at every width
PARITY_LAMBDAS = tuple(sorted(set(S1) | set(S3_UNSEEN)))
OFF_GRID_LAMBDAS = (0.0123, 0.123, 0.456, 0.987)  # not on the bundle's 0.05 grid: computed exactly
IMPLS = ("ext", "python")


def require_ext() -> bool:
    return os.environ.get("OATEDGE_REQUIRE_EXT", "").strip().lower() in ("1", "true", "yes", "on")


def impl_params():
    """pytest params over the two implementations; the extension's is skipped when it is not
    built, unless OATEDGE_REQUIRE_EXT=1 (CI), where its absence fails the test."""
    from oat_edge.runtime._native import ext_import_error

    err = ext_import_error()
    marks = [pytest.mark.skip(reason=f"C++ extension not built: {err}")] if err and not require_ext() else []
    return [pytest.param("ext", marks=marks, id="ext"), pytest.param("python", id="python")]


def backend_params(*names: str):
    """pytest params over CPU backends; openvino (an optional extra) is skipped, with the
    reason, where it is not installed."""
    from oat_edge.runtime import backends

    out = []
    for name in names or ("onnxruntime", "torch", "openvino"):
        ok, why = backends.get(name).loader().available()
        out.append(pytest.param(name, id=name, marks=[] if ok else [pytest.mark.skip(reason=why)]))
    return out


@functools.lru_cache(maxsize=None)
def _workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="oat-edge-runtime-tests-"))
    # Removed when the test process exits (the folder is shared by many modules of one run).
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _make_model(seed: int = 0):
    """resnet_tiny with mixed-λ train-mode passes (so BN_c and BN_a get different running
    statistics) and generator weights scaled up so FiLM vectors really depend on λ."""
    import torch

    from oat_edge.models import create_model

    torch.manual_seed(seed)
    model = create_model("resnet_tiny", channels=CHANNELS, widths=WIDTHS)
    with torch.no_grad():
        for site in model.film_sites():
            for gen in site.generators:
                gen.fc2.weight.mul_(4.0)  # FiLM clearly λ-dependent without training
        for p in model.classifier.parameters():
            p.mul_(20.0)  # logits of order 1, so modes differ by far more than float error
        model.train()
        rng = np.random.default_rng(seed)
        for step in range(4):
            x = torch.rand(32, *INPUT_SHAPE, generator=torch.Generator().manual_seed(step))
            lams = torch.from_numpy(rng.choice(np.array(S1), size=32))
            for w in WIDTHS:
                model.set_width(w)
                model(x * (0.5 + 0.25 * step), lams)
    return model.eval()


@functools.lru_cache(maxsize=None)
def checkpoint_path() -> Path:
    from oat_edge.checkpoint import save_checkpoint

    model = _make_model()
    path = _workdir() / "ckpt.pt"
    save_checkpoint(path, {
        "arch": "resnet_tiny",
        "arch_kwargs": {"channels": list(CHANNELS), "widths": list(WIDTHS), "train_lambdas": list(S1),
                        "num_classes": 10, "in_chans": 1, "mean": [0.5], "std": [0.5], "code_dim": 128,
                        "code_seed": 0, "film": True, "dual_bn": True, "film_slope": 0.01, "film_shared": True,
                        "film_init": "default"},
        "model": model.state_dict(),
        "method": "oats",
        "dataset": {"name": "digits", "num_classes": 10, "input_shape": list(INPUT_SHAPE), "mean": [0.5],
                    "std": [0.5], "split": "train"},
        "config": {"note": "runtime test fixture"},
        "epoch": 1,
    })
    return path


@functools.lru_cache(maxsize=None)
def bundle_path() -> Path:
    """The exported bundle (grid: every 0.05 + training λ; λ=0.2 baked at every width)."""
    from oat_edge.export import export_bundle

    out = _workdir() / "bundle"
    export_bundle(checkpoint_path(), out, batch=(1, 4, 16), bake=BAKED, tensorrt="off", progress=False,
                  parity_images=16)
    return out


@functools.lru_cache(maxsize=None)
def precision_bundle_path() -> Path:
    """The checkpoint at width 1 with fp16 and int8 files beside the fp32 ones (no baked modes)."""
    from oat_edge.export import export_bundle

    out = _workdir() / "precision-bundle"
    export_bundle(checkpoint_path(), out, widths=[1.0], batch=(1, 4, 16), tensorrt="off", progress=False,
                  parity_images=16, precisions=["int8", "fp16"], quant_images=64)
    return out


@functools.lru_cache(maxsize=None)
def reference_model():
    from oat_edge.checkpoint import load_model

    model, _ = load_model(checkpoint_path())
    return model


def reference_logits(images: np.ndarray, lam: float, width: float) -> np.ndarray:
    """PyTorch logits of the checkpoint's model at (λ, width)."""
    import torch

    model = reference_model()
    model.set_width(width)
    with torch.no_grad():
        return model(torch.from_numpy(images), float(lam)).numpy()


def sample_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n,) + INPUT_SHAPE, dtype=np.float32)


def copy_bundle(tmp_path: Path) -> Path:
    """A private copy of the session bundle for tests that modify it."""
    import shutil

    dst = tmp_path / "bundle"
    shutil.copytree(bundle_path(), dst)
    return dst


def run_switcher_and_clients(switcher, clients, stop) -> None:
    """The concurrency tests' harness: start ``switcher`` (loops until ``stop`` is set) and every
    callable in ``clients`` on threads, wait for the clients, then stop and join the switcher."""
    import threading

    threads = [threading.Thread(target=switcher)] + [threading.Thread(target=c) for c in clients]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    stop.set()
    threads[0].join()
