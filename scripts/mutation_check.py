#!/usr/bin/env python3
"""Mutation check of the TensorRT/CUDA code: each break below removes one rule that code relies
on. For each, a copy of the tree gets the break and the tests named for it run against that copy;
the check fails unless every break makes them fail. TensorRT cannot run here, so the tests run
against the stand-ins (tests/trt_standins.py, tests/trt_double/): a break they miss is a rule
nothing checks.

    python scripts/mutation_check.py            # every break (a few minutes on 2 cores)
    python scripts/mutation_check.py -k refit   # the breaks whose name contains "refit"

The copy is imported instead of this tree through the editable install's finder (sitecustomize
below), so the venv of this tree must be active.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFIT, RUNNER = "runtime/backends/tensorrt/refit.py", "runtime/backends/tensorrt/runner.py"
BUILD, EXEC = "oat_edge/trt_engine_build.py", "runtime/csrc/trt_executor.cpp"
T_REFIT, T_STAND, T_DOUBLE = "tests/test_tensorrt_refit.py", "tests/test_tensorrt_standins.py", "tests/test_trt_executor_double.py"

# (name, file, text, replacement, tests): the text must occur exactly once.
BREAKS = [
    ("bake: kept FiLM constants left out of `changed`", "runtime/bake.py",
     "        self.changed[name] = value  # its value is the mode's γ or β: a refit must rewrite it too",
     "        pass", [f"{T_REFIT}::test_refit_rewrites_the_constants_of_kept_film_ops"]),
    ("refit: standby copy not taken away from new frames", REFIT,
     "                target = self.standby\n                target.key = None", "                target = self.standby",
     [f"{T_REFIT}::test_a_refit_takes_the_standby_mode_away_from_new_frames_before_it_waits"]),
    ("refit: frames on the standby copy not waited for", REFIT,
     "                    if target.inflight == 0:", "                    if True:",
     [f"{T_REFIT}::test_a_copy_in_use_is_not_refitted_until_its_frames_finish"]),
    ("refit: swap before the check", REFIT,
     "            if check is not None and not check(target.engine, target.context):\n                return False",
     "            if check is not None and not check(target.engine, target.context):\n                pass",
     [f"{T_REFIT}::test_missing_refused_and_vetoed_weights_leave_the_live_mode"]),
    ("refit: missing weights not checked", REFIT,
     "            if missing:\n                raise", "            if False:\n                raise",
     [f"{T_REFIT}::test_missing_refused_and_vetoed_weights_leave_the_live_mode"]),
    ("refit: weights cast to float32 for a float16 engine", REFIT,
     "arr = np.ascontiguousarray(value, dtype=self.weight_dtype)", "arr = np.ascontiguousarray(value, dtype=np.float32)",
     [f"{T_REFIT}::test_a_strongly_typed_fp16_engine_is_refitted_with_float16_weights"]),
    ("refit: no float16 range check", REFIT,
     "                    value = to_fp16(value, f\"refit weights {name!r}\")", "                    pass",
     [f"{T_REFIT}::test_fp16_refit_weights_beyond_the_float16_range_are_one_clear_error"]),
    ("refit: unchecked execution context", REFIT,
     "            if context is None:\n                raise", "            if False:\n                raise",
     [f"{T_REFIT}::test_an_execution_context_trt_does_not_create_is_one_clear_error"]),
    ("refit: standby key read without the lock", REFIT,
     "        with self._lock:\n            return self.standby.key", "        return self.standby.key",
     [f"{T_REFIT}::test_the_standby_key_is_read_under_the_refitters_lock"]),
    ("refit: no cuda.init()", REFIT, "        cuda.init()\n", "",
     [f"{T_REFIT}::test_refit_builds_run_on_the_runners_gpu_with_the_jetson_workspace_and_a_timing_cache"]),
    ("refit: build before the context is pushed", REFIT,
     "            self._ctx.push()  # the build allocates on the current device: this runner's GPU\n            try:\n"
     "                plan = self._build(builder, model.SerializeToString())",
     "            plan = self._build(builder, model.SerializeToString())\n            self._ctx.push()\n            try:",
     [f"{T_REFIT}::test_refit_builds_run_on_the_runners_gpu_with_the_jetson_workspace_and_a_timing_cache"]),
    ("refit: no workspace limit", REFIT, "workspace = default_workspace_mb(self._gpu)", "workspace = None",
     [f"{T_REFIT}::test_refit_builds_run_on_the_runners_gpu_with_the_jetson_workspace_and_a_timing_cache"]),
    ("refit: no timing cache", REFIT,
     "cache = cache_file.read_bytes() if cache_file is not None and cache_file.is_file() else None", "cache = None",
     [f"{T_REFIT}::test_refit_builds_run_on_the_runners_gpu_with_the_jetson_workspace_and_a_timing_cache"]),
    ("refit: a timing cache TensorRT rejects stops every build", REFIT,
     "            if cache is None:\n                raise", "            if True:\n                raise",
     [f"{T_REFIT}::test_a_timing_cache_trt_rejects_is_replaced_not_fatal"]),
    ("refit: batch checked against 1, not the profile minimum", REFIT,
     "if not self.min_batch <= batch <= self.max_batch:", "if not 1 <= batch <= self.max_batch:",
     [f"{T_REFIT}::test_refit_builds_run_on_the_runners_gpu_with_the_jetson_workspace_and_a_timing_cache"]),
    ("refit: one plan counted for two copies", REFIT, "= r, 2 * len(plan)", "= r, len(plan)",
     [f"{T_REFIT}::test_refit_builds_run_on_the_runners_gpu_with_the_jetson_workspace_and_a_timing_cache"]),
    ("refit: pageable host memory in async copies", REFIT,
     "cuda.memcpy_htod_async(self._d_images, h_images, self._stream)",
     "cuda.memcpy_htod_async(self._d_images, np.ascontiguousarray(images, np.float32), self._stream)",
     [f"{T_REFIT}::test_refit_builds_run_on_the_runners_gpu_with_the_jetson_workspace_and_a_timing_cache"]),
    ("refit: no stream sync before reading the logits", REFIT,
     "                cuda.memcpy_dtoh_async(h_logits, self._d_logits, self._stream)\n                self._stream.synchronize()",
     "                cuda.memcpy_dtoh_async(h_logits, self._d_logits, self._stream)",
     [f"{T_REFIT}::test_refit_builds_run_on_the_runners_gpu_with_the_jetson_workspace_and_a_timing_cache"]),
    ("build: REFIT flag not set", BUILD, "            config.set_flag(trt.BuilderFlag.REFIT)", "            pass",
     [f"{T_REFIT}::test_refit_rewrites_the_constants_of_kept_film_ops"]),
    ("build: BuilderFlag.FP16 on a strongly typed network", BUILD,
     "        if precision == \"fp16\" and not strong:", "        if precision == \"fp16\":",
     [f"{T_REFIT}::test_a_strongly_typed_fp16_engine_is_refitted_with_float16_weights"]),
    ("host: no libcuda fallback for the GPU name", "oat_edge/host.py",
     "    devices = cuda_devices()\n    if devices:", "    devices = []\n    if devices:",
     [f"{T_STAND}::test_gpu_identification_asks_the_driver_without_cuda_python_pycuda_or_torch"]),
    ("pycuda: no own-stream sync in infer_device", RUNNER,
     "                self._enqueue(ctx)\n                self._stream.synchronize()  # outputs written",
     "                self._enqueue(ctx)\n                pass  # outputs written",
     [f"{T_STAND}::test_pycuda_executor_on_each_tensorrt_api"]),
    ("pycuda: caller's stream not waited for", RUNNER,
     "                caller_stream.synchronize()  # the caller's stream", "                pass  # the caller's stream",
     [f"{T_STAND}::test_pycuda_executor_on_each_tensorrt_api"]),
    ("pycuda: no batch guard for the buffers", RUNNER,
     "        if not 1 <= int(batch) <= self._max_batch:", "        if False:",
     [f"{T_STAND}::test_pycuda_executor_refuses_a_batch_over_its_buffers"]),
    ("pycuda: pageable host memory in async copies", RUNNER,
     "cuda.memcpy_htod_async(self._d_images, h_images, self._stream)",
     "cuda.memcpy_htod_async(self._d_images, images, self._stream)",
     [f"{T_STAND}::test_pycuda_executor_on_each_tensorrt_api"]),
    ("pycuda: no cuda.init()", RUNNER, "        cuda.init()\n        self._cuda, self._trt", "        self._cuda, self._trt",
     [f"{T_STAND}::test_pycuda_executor_on_each_tensorrt_api"]),
    ("pycuda: set_device_memory assumed on TensorRT 10.0", RUNNER,
     "                if hasattr(ctx, \"set_device_memory\"):  # TensorRT ≥ 10.1", "                if True:",
     [f"{T_STAND}::test_pycuda_executor_on_each_tensorrt_api"]),
    ("pycuda: device_memory_size assumed on TensorRT 11", RUNNER,
     "    if hasattr(engine, \"device_memory_size_v2\"):", "    if False:",
     [f"{T_STAND}::test_pycuda_executor_on_each_tensorrt_api"]),
    ("c++: no event wait on the caller's stream", EXEC,
     "    cuda_check(cudaStreamWaitEvent(stream_.get(), event_.get(), 0), \"cudaStreamWaitEvent(executor)\");\n", "",
     [f"{T_DOUBLE}::test_a_device_call_waits_for_the_inputs_the_callers_stream_writes"]),
    ("c++: no cudaSetDevice in infer_device", EXEC,
     "    std::lock_guard<std::mutex> lock(mu_);\n    cuda_check(cudaSetDevice(device_), \"cudaSetDevice\");\n    auto caller",
     "    std::lock_guard<std::mutex> lock(mu_);\n    auto caller",
     [f"{T_DOUBLE}::test_device_calls_and_teardown_from_other_threads_select_the_executors_device"]),
    ("c++: no cudaSetDevice in the destructor", EXEC,
     "    trt_detail::cuda_warn(cudaSetDevice(device_), \"cudaSetDevice\");\n", "",
     [f"{T_DOUBLE}::test_device_calls_and_teardown_from_other_threads_select_the_executors_device"]),
    ("c++: first enqueue of a new shape made during capture", EXEC,
     "    if (!p.context->enqueueV3(stream_.get())) throw std::runtime_error(\"tensorrt executor: enqueueV3 failed\");\n"
     "    cuda_check(cudaStreamSynchronize(stream_.get()), \"cudaStreamSynchronize\");\n    graphs_.emplace(key, capture(p));",
     "    auto g = capture(p);\n"
     "    if (g) cuda_check(cudaGraphLaunch(g.get(), stream_.get()), \"cudaGraphLaunch\");\n"
     "    else if (!p.context->enqueueV3(stream_.get())) throw std::runtime_error(\"tensorrt executor: enqueueV3 failed\");\n"
     "    graphs_.emplace(key, std::move(g));",
     [f"{T_DOUBLE}::test_the_first_enqueue_after_a_shape_change_is_not_captured"]),
    ("c++: destructor does not wait for work in flight", EXEC,
     "    if (stream_) trt_detail::cuda_warn(cudaStreamSynchronize(stream_.get()), \"cudaStreamSynchronize\");\n", "",
     [T_DOUBLE]),
    ("c++: graph replayed without setting the shape again", EXEC,
     "    set_shape(p, batch);\n    bind(p, d_images_.get(), d_film_.get(), d_logits_.get());\n    const auto key",
     "    const auto key", [T_DOUBLE]),
]

SITECUSTOMIZE = '''import sys
for _f in sys.meta_path:  # the editable install's finder: map this tree's files to the copy
    if hasattr(_f, "known_source_files"):
        _f.known_source_files = {{k: v.replace({orig!r}, {copy!r}, 1) for k, v in _f.known_source_files.items()}}
'''


def copy_tree(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def run_tests(brk, tests, base: Path, log: Path) -> int:
    """pytest's exit status for ``tests`` on a copy of the tree with ``brk`` (None: unbroken)."""
    copy = Path(tempfile.mkdtemp(prefix="mut-", dir=base))
    shutil.copytree(base / "tree", copy / "tree", symlinks=True)
    tree = copy / "tree"
    if brk is not None:
        name, rel, text, repl = brk
        target = tree / rel
        src = target.read_text()
        if src.count(text) != 1:
            raise SystemExit(f"mutation check: the break {name!r} no longer matches {rel} exactly once: update its text")
        target.write_text(src.replace(text, repl))
    site = copy / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(orig=str(ROOT), copy=str(tree)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-x", "-q", "--no-header", *tests],
                       cwd=tree, env=env, capture_output=True, text=True)
    log.write_text(r.stdout + r.stderr)
    shutil.rmtree(copy, ignore_errors=True)
    if "compiling the executor against the double failed" in r.stdout + r.stderr:
        raise SystemExit(f"mutation check: {brk[0] if brk else 'the unbroken tree'} does not compile; fix the break's text")
    return r.returncode


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="only the breaks whose name contains this")
    args = ap.parse_args(argv)
    chosen = [b for b in BREAKS if args.k in b[0]]
    base = Path(tempfile.mkdtemp(prefix="oat-mutation-"))
    t0 = time.monotonic()
    try:
        copy_tree(base / "tree")
        # the unbroken tree must pass the same tests, or a "caught" break means nothing
        tests = sorted({t for b in chosen for t in b[4]})
        if run_tests(None, tests, base, base / "baseline.log") != 0:
            print((base / "baseline.log").read_text()[-3000:], file=sys.stderr)
            print("mutation check: the tests fail on the unbroken tree", file=sys.stderr)
            return 1
        missed = []
        for i, (name, rel, text, repl, tests_) in enumerate(chosen, 1):
            # 1: tests ran and one failed (not 2-5: interrupted, usage or collection errors)
            caught = run_tests((name, rel, text, repl), tests_, base, base / f"break{i}.log") == 1
            print(f"[{i:2d}/{len(chosen)}] {'caught' if caught else 'MISSED'}: {name}", flush=True)
            if not caught:
                missed.append(name)
                print((base / f"break{i}.log").read_text()[-1500:], file=sys.stderr)
        print(f"mutation check: {len(chosen) - len(missed)}/{len(chosen)} breaks caught in {time.monotonic() - t0:.0f} s")
        return 1 if missed else 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
