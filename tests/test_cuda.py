"""CUDA paths, on a machine with a GPU (marked ``gpu``; skipped elsewhere). ``pytest -m gpu``
runs these in scripts/gpu_check.sh, beside the checker's own measurements (docs/gpu.md)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from oat_edge.runtime import Runtime

from runtime_support import OFF_GRID_LAMBDAS, WIDTHS, bundle_path, sample_images

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
MODES = [(lam, w) for lam in (0.0, 0.2, 1.0, OFF_GRID_LAMBDAS[1]) for w in WIDTHS]  # BN_c, baked, BN_a, off-grid
# Same graphs, other kernels (TF32 convolutions by default on Ampere and later): not bit-equal,
# but far closer than two modes are (logits of order 1 that differ by > 0.1 between modes).
# scripts/gpu_check.py records the exact figure.
CUDA_TOL = 2e-2


@pytest.mark.parametrize("graphs", [True, False], ids=["cuda_graphs", "eager"])
def test_torch_backend_on_cuda_matches_onnxruntime(graphs):
    ref = Runtime(bundle_path(), backend="onnxruntime", threads=1)
    rt = Runtime(bundle_path(), backend="torch", device="cuda", backend_options={"cuda_graphs": graphs})
    assert rt.backend.describe()["cuda_graphs"] is graphs
    for batch in (1, 3, 16):  # 3: not captured at construction, so captured on first use
        x = sample_images(batch, seed=batch)
        x_gpu = torch.from_numpy(x).cuda()
        for mode in MODES:
            ref.set_mode(*mode)
            rt.set_mode(*mode)
            want = ref.infer(x)
            out_np = rt.infer(x)
            out_gpu = rt.infer(x_gpu)
            assert isinstance(out_np, np.ndarray) and out_gpu.is_cuda
            np.testing.assert_allclose(out_np, want, atol=CUDA_TOL, rtol=0)
            np.testing.assert_allclose(out_gpu.cpu().numpy(), out_np, atol=1e-6, rtol=0)


def test_cuda_graph_outputs_are_not_overwritten_by_the_next_replay():
    rt = Runtime(bundle_path(), backend="torch", device="cuda")
    rt.set_mode(0.0, 1.0)
    first = rt.infer(torch.from_numpy(sample_images(1, seed=1)).cuda())
    keep = first.clone()
    second = rt.infer(torch.from_numpy(sample_images(1, seed=2)).cuda())  # same graph, other input
    assert not torch.equal(second, keep)
    torch.testing.assert_close(first, keep, atol=0, rtol=0)


def test_lazy_capture_while_other_threads_infer():
    """A batch met for the first time is captured while other threads run inferences."""
    rt = Runtime(bundle_path(), backend="torch", device="cuda", backend_options={"graph_batches": [1]})
    x1 = sample_images(1, seed=3)
    rt.set_mode(0.2, 0.75)
    want1 = rt.infer(x1)
    errors, stop = [], threading.Event()

    def busy():
        try:
            while not stop.is_set():
                np.testing.assert_array_equal(rt.infer(x1), want1)
                torch.from_numpy(x1).cuda().sum().item()  # this thread's own CUDA work too
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=busy) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for b in (2, 5, 7, 11):
            assert rt.infer(sample_images(b, seed=b)).shape == (b, 10)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors


def test_one_training_step_on_cuda_uses_amp_and_channels_last(tmp_path):
    from oat_edge.training.config import TrainConfig
    from oat_edge.training.trainers import Trainer

    cfg = TrainConfig(dataset="digits", method="oats", epochs=1, batch_size=32, max_train_images=64,
                      arch_kwargs={"channels": [8, 16, 32]}, device="cuda", progress=False,
                      out=str(tmp_path / "ckpt.pt"))
    trainer = Trainer(cfg)
    try:
        assert trainer.device.type == "cuda"
        assert trainer.amp_dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        conv = max((p for p in trainer.model.parameters() if p.dim() == 4), key=lambda p: p.numel())
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
        before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        stats = trainer.train_step(0, 0)
        assert np.isfinite(stats.loss) and stats.loss > 0
        changed = [k for k, v in trainer.model.state_dict().items() if v.is_floating_point()
                   and not torch.equal(v, before[k])]
        assert any(k.endswith("weight") for k in changed)
        trainer.fit()
        assert (tmp_path / "ckpt.pt").exists()
    finally:
        trainer.ctx.close()
