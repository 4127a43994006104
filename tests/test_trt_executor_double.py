"""The REAL TensorRT executor (runtime/csrc/trt_executor.cpp) driven on the CPU.

TensorRT and CUDA cannot be installed on the development machine, so the executor is compiled
here against a link-time TEST DOUBLE of exactly the TensorRT and CUDA calls it makes
(tests/trt_double/: fake IRuntime/ICudaEngine/IExecutionContext, fake streams, events, graphs and
device memory that record every call). The double is a stand-in for unavailable dependencies;
these tests passing does not mean TensorRT ran. What they pin is the executor's own logic, under
the rules the double models (listed at the top of tests/trt_double/fake_trt_cuda.cpp): work runs
only when the host waits for it, freeing memory or destroying a context that pending work uses
is a violation, a graph replayed while its context holds another shape or addresses is a
violation, the CUDA device is per host thread.
"""

import ctypes
import functools
import re
import threading

import numpy as np
import pytest

from runtime_support import run_switcher_and_clients
from trt_standins import ExecError, build_executor_double, expected_logits, fake_engine_spec

CHW = (1, 8, 8)
CLASSES = 10


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    try:
        return build_executor_double(tmp_path_factory.mktemp("trt_double"))
    except FileNotFoundError:
        pytest.skip("no C++ compiler to build the executor against the test double")


class Executor:
    def __init__(self, double, handle):
        self.d, self.h = double, handle

    def infer_host(self, path, images, film=None):
        images = np.ascontiguousarray(images, np.float32)
        out = np.full((images.shape[0], CLASSES), -1.0, np.float32)
        self.d.infer_host(self.h, path, images.ctypes.data, images.shape[0], None if film is None else film.ctypes.data,
                          0 if film is None else film.size, out.ctypes.data)
        return out

    def infer_device(self, path, images_ptr, batch, film_ptr, out_ptr, stream):
        self.d.infer_device(self.h, path, images_ptr, batch, film_ptr, out_ptr, stream)

    def close(self):
        if self.h:
            self.d.destroy(self.h)
            self.h = None


def make(d, specs, film_sizes, max_batch=8, device=0, names=("images", "film", "logits")):
    return Executor(d, d.create(specs, film_sizes, CHW, CLASSES, max_batch, device, names))


def spec(tag, film=0, batch="1:8", scratch=4096, **extra):
    return fake_engine_spec(CHW, CLASSES, film, tuple(int(b) for b in batch.split(":")), scratch, tag, **extra)


def expected(images, film, tag):
    return expected_logits(images, film, tag, CLASSES)


RNG = np.random.default_rng(0)
FILM = 12
SPECS = [spec(1, film=FILM), spec(2, film=FILM, scratch=9000), spec(3)]  # two FiLM paths, one baked
FILM_SIZES = [FILM, FILM, 0]
TAGS = [1, 2, 3]


def images(batch):
    return RNG.random((batch, *CHW), dtype=np.float32)


def film_for(path):
    return RNG.random(FILM, dtype=np.float32) if FILM_SIZES[path] else None


@pytest.fixture
def d(lib):
    lib.reset()
    yield lib
    lib.reset()


def check(out, x, film, path):
    np.testing.assert_allclose(out, expected(x, film, TAGS[path]), rtol=1e-5, atol=1e-5)


def assert_clean(d):
    assert d.violations() == []


# --- one run per call; graph replay --------------------------------------------------------
def test_each_call_runs_the_engine_exactly_once(d):
    ex = make(d, SPECS, FILM_SIZES)
    x, f = images(4), film_for(0)
    check(ex.infer_host(0, x, f), x, f, 0)
    assert d.executions() == 1  # the first call: one plain enqueue (its result), then a capture that does not run
    assert d.calls("cudaGraphInstantiate") == 1 and d.calls("cudaGraphLaunch") == 0
    for n in range(2, 5):
        x, f = images(4), film_for(0)
        check(ex.infer_host(0, x, f), x, f, 0)
        assert d.executions() == n and d.calls("cudaGraphLaunch") == n - 1
    assert d.calls("cudaGraphInstantiate") == 1
    ex.close()
    assert_clean(d)


def test_shape_and_addresses_are_set_before_every_replay(d):
    """A replayed (path, batch) graph after the context ran another batch, and after
    infer_device bound the caller's pointers: the context must hold the graph's shape and the
    executor's buffers again at each cudaGraphLaunch (the double records a violation and writes
    NaN otherwise)."""
    ex = make(d, SPECS, FILM_SIZES)
    stream = d.lib.fake_user_stream(0)
    for batch in (4, 2, 4, 2, 4):
        x, f = images(batch), film_for(1)
        check(ex.infer_host(1, x, f), x, f, 1)
    # the caller's device buffers bound directly, then a replay of batch 4 again
    x, f = images(3), film_for(1)
    dx, df, dout = (d.lib.fake_user_malloc(n * 4, 0) for n in (x.size, FILM, 3 * CLASSES))
    ctypes.memmove(dx, x.ctypes.data, x.nbytes)
    ctypes.memmove(df, f.ctypes.data, f.nbytes)
    ex.infer_device(1, dx, 3, df, dout, stream)
    assert d.lib.fake_user_sync(stream, 0) == 0
    out = np.frombuffer(ctypes.string_at(dout, 3 * CLASSES * 4), np.float32).reshape(3, CLASSES)
    check(out, x, f, 1)
    x, f = images(4), film_for(1)
    check(ex.infer_host(1, x, f), x, f, 1)
    assert d.calls("cudaGraphLaunch") == 4
    log = d.log()
    launches = [i for i, line in enumerate(log) if line.startswith("cudaGraphLaunch")]
    for i in launches:  # within the same call (since its image copy): shape and all three addresses set again
        start = max(j for j in range(i) if log[j].startswith("cudaMemcpyAsync"))
        calls = [line.split()[0] + " " + line.split()[2] for line in log[start + 1:i]]
        assert calls == ["setInputShape images", "setTensorAddress images", "setTensorAddress film",
                         "setTensorAddress logits"], log[start:i + 1]
    ex.close()
    assert_clean(d)


def test_graph_cache_per_path_and_batch(d):
    ex = make(d, SPECS, FILM_SIZES)
    plan = [(p, b) for b in (1, 3, 8) for p in range(3)] * 2
    for p, b in plan:
        x, f = images(b), film_for(p)
        check(ex.infer_host(p, x, f), x, f, p)
    assert d.calls("cudaGraphInstantiate") == 9  # one capture per (path, batch)
    assert d.calls("cudaGraphLaunch") == 9  # the second round replays each once
    assert d.executions() == len(plan)
    ex.close()
    assert_clean(d)


def test_engine_that_cannot_be_captured_runs_plain_enqueues(d):
    ex = make(d, [spec(5, capture=0)], [0])
    for n in range(1, 4):
        x = images(2)
        np.testing.assert_allclose(ex.infer_host(0, x), expected(x, None, 5), rtol=1e-5)
        assert d.executions() == n
    assert d.calls("cudaGraphLaunch") == 0 and d.calls("cudaStreamBeginCapture") == 1  # not retried
    ex.close()
    assert_clean(d)


# --- teardown ----------------------------------------------------------------------------------
def test_teardown_waits_for_work_in_flight_then_releases_in_order(d):
    ex = make(d, SPECS, FILM_SIZES)
    x = images(2)
    ex.infer_host(2, x)
    stream = d.lib.fake_user_stream(0)
    dx, dout = d.lib.fake_user_malloc(x.nbytes, 0), d.lib.fake_user_malloc(2 * CLASSES * 4, 0)
    ctypes.memmove(dx, x.ctypes.data, x.nbytes)
    ex.infer_device(2, dx, 2, 0, dout, stream)  # returns with the work enqueued, not done
    assert int(d.live()["pending"]) > 0
    ex.close()  # no sync by the caller first
    assert_clean(d)  # nothing freed or destroyed under pending work
    live = d.live()
    assert {k: live[k] for k in ("events", "graphs", "execs", "runtimes", "engines", "contexts")} == {
        k: "0" for k in ("events", "graphs", "execs", "runtimes", "engines", "contexts")}
    assert live["allocs"] == "2" and live["streams"] == "1"  # only the caller's two buffers and its stream
    log = d.log()
    sync = max(i for i, line in enumerate(log) if line.startswith("cudaStreamSynchronize"))
    first_release = min(i for i, line in enumerate(log) if line.startswith(("destroy", "cudaGraphExecDestroy", "cudaFree")))
    assert sync < first_release
    order = [line.split()[0] + " " + line.split()[1][:3] for line in log[first_release:]
             if line.startswith(("destroy", "cudaStreamDestroy", "cudaEventDestroy", "cudaFree", "cudaGraphExecDestroy"))]
    kinds = [o.split()[0] if not o.startswith("destroy") else o for o in order]
    assert kinds.index("destroy ctx") < kinds.index("destroy eng") < kinds.index("destroy run")
    assert max(i for i, k in enumerate(kinds) if k == "cudaGraphExecDestroy") < kinds.index("destroy ctx")
    assert kinds.index("destroy run") < kinds.index("cudaEventDestroy") < kinds.index("cudaStreamDestroy") < kinds.index("cudaFree")
    assert d.lib.fake_user_sync(stream, 0) == 0
    np.testing.assert_allclose(np.frombuffer(ctypes.string_at(dout, 2 * CLASSES * 4), np.float32).reshape(2, CLASSES),
                               expected(x, None, 3), rtol=1e-5)
    assert_clean(d)


@pytest.mark.parametrize("call,nth,kind,pattern", [
    ("createInferRuntime", 1, 2, "createInferRuntime failed"),
    ("deserializeCudaEngine", 2, 1, "engine 1 failed to deserialize"),
    ("createExecutionContext", 3, 2, "createExecutionContext failed for engine 2"),
    ("cudaMalloc", 3, 2, r"cudaMalloc\(film\): out of memory"),
    ("cudaStreamCreateWithFlags", 1, 2, "cudaStreamCreateWithFlags"),
    ("cudaEventCreateWithFlags", 1, 2, "cudaEventCreateWithFlags"),
])
def test_a_constructor_failing_partway_releases_everything(d, call, nth, kind, pattern):
    d.fail(call, nth)
    with pytest.raises(ExecError) as e:
        make(d, SPECS, FILM_SIZES)
    assert e.value.kind == kind and re.search(pattern, e.value.msg), e.value
    assert "\n" not in e.value.msg
    live = d.live()
    assert all(live[k] == "0" for k in ("allocs", "streams", "events", "runtimes", "engines", "contexts")), live
    assert_clean(d)  # the runtime outlived its engines, engines their contexts


# --- return values ------------------------------------------------------------------------------
@pytest.mark.parametrize("call,nth,pattern", [
    ("setTensorAddress", 1, r"setTensorAddress\(images\) failed"),
    ("setTensorAddress", 2, r"setTensorAddress\(film\) failed"),
    ("setTensorAddress", 3, r"setTensorAddress\(logits\) failed"),
    ("setInputShape", 1, r"setInputShape\(images, batch 4\) failed"),
    ("enqueueV3", 1, "enqueueV3 failed"),
    ("cudaMemcpyAsync", 1, r"cudaMemcpyAsync\(images\)"),
    ("cudaGraphLaunch", 1, "cudaGraphLaunch"),
    ("cudaStreamSynchronize", 1, "cudaStreamSynchronize"),
])
def test_a_failing_tensorrt_or_cuda_call_is_an_error_not_garbage(d, call, nth, pattern):
    ex = make(d, SPECS, FILM_SIZES)
    x, f = images(4), film_for(0)
    if call == "cudaGraphLaunch":
        ex.infer_host(0, x, f)  # capture first; the replay fails
    d.fail(call, nth)
    with pytest.raises(ExecError) as e:
        ex.infer_host(0, x, f)
    assert e.value.kind == 2 and re.search(pattern, e.value.msg), e.value
    # the next call sets everything again and is right
    check(ex.infer_host(0, x, f), x, f, 0)
    ex.close()
    assert_clean(d)


def test_infer_device_failures_are_errors(d):
    ex = make(d, SPECS, FILM_SIZES)
    stream = d.lib.fake_user_stream(0)
    x = images(2)
    dx, dout = d.lib.fake_user_malloc(x.nbytes, 0), d.lib.fake_user_malloc(2 * CLASSES * 4, 0)
    for call in ("setTensorAddress", "setInputShape", "enqueueV3", "cudaEventRecord"):
        d.fail(call)
        with pytest.raises(ExecError, match=call) as e:
            ex.infer_device(2, dx, 2, 0, dout, stream)
        assert e.value.kind == 2
    # afterwards the executor's own buffers are bound again for graph replays
    check(ex.infer_host(2, x), x, None, 2)
    check(ex.infer_host(2, x), x, None, 2)
    ex.close()
    assert_clean(d)


# --- engine checks at load ----------------------------------------------------------------------
@pytest.mark.parametrize("engine,film_size,pattern", [
    (spec(1, film=FILM, images_dtype="half"), FILM, "'images' is not float32"),
    (spec(1, film=FILM, logits_dtype="half"), FILM, "'logits' is not float32"),
    (spec(1, film=FILM, film_dtype="half"), FILM, "'film' is not float32"),
    (spec(1, film=FILM), 16, "'film' has shape \\[12\\], the bundle's FiLM vector has 16 values"),
    (spec(1, film=FILM, film_shape=9), FILM, "'film' has shape \\[9\\]"),
    (spec(1), FILM, "lacks the 'film' tensor"),
    (spec(1, film=FILM), 0, "I/O tensor 'film' the bundle does not describe"),
    (spec(1, extra="mask"), 0, "I/O tensor 'mask'"),
    (spec(1).replace("chw=1x8x8", "chw=3x8x8"), 0, "'images' has shape \\[-1,3,8,8\\]"),
    (spec(1).replace(f"classes={CLASSES}", "classes=7"), 0, "'logits' has shape \\[-1,7\\]"),
    (spec(1, batch="9:16"), 0, "accepts batches 9..8"),
    ("garbage", 0, "failed to deserialize"),
])
def test_engines_that_do_not_match_the_bundle_are_refused_at_load(d, engine, film_size, pattern):
    with pytest.raises(ExecError) as e:
        make(d, [spec(3), engine], [0, film_size])
    assert e.value.kind == 1 and re.search(pattern, e.value.msg), e.value
    assert e.value.msg.startswith("tensorrt executor: engine 1")
    assert_clean(d)


def test_bad_calls_are_refused(d):
    ex = make(d, SPECS, FILM_SIZES)
    x = images(2)
    for path, xs, film, pattern in [(0, x, None, "takes a FiLM vector of size 12, got none"),
                                    (0, x, np.zeros(FILM + 1, np.float32), "size 12, got 13"),
                                    (3, x, None, "path index 3 out of range"),
                                    (2, images(9), None, "batch 9 outside the engine profile 1..8")]:
        with pytest.raises(ExecError, match=pattern) as e:
            ex.infer_host(path, xs, film)
        assert e.value.kind == 1
    assert d.executions() == 0
    # the shared scratch block is the largest engine's need
    assert d.lib.oat_exec_scratch_bytes(ex.h) == 9000
    ex.close()
    assert_clean(d)


def test_profile_narrower_than_max_batch(d):
    ex = make(d, [spec(4, batch="2:4")], [0], max_batch=8)
    with pytest.raises(ExecError, match="batch 1 outside the engine profile 2..4"):
        ex.infer_host(0, images(1))
    with pytest.raises(ExecError, match="batch 5 outside"):
        ex.infer_host(0, images(5))
    x = images(4)
    np.testing.assert_allclose(ex.infer_host(0, x), expected(x, None, 4), rtol=1e-5)
    ex.close()
    assert_clean(d)


# --- device -------------------------------------------------------------------------------------
def test_calls_from_other_threads_run_on_the_executors_device(d):
    """The CUDA device is per host thread: an executor on device 1 called from a new thread
    (whose current device is 0) must select its device on every call."""
    ex = make(d, SPECS, FILM_SIZES, device=1)
    results = []

    def worker():
        try:
            for b in (2, 2, 5):
                x, f = images(b), film_for(0)
                results.append((ex.infer_host(0, x, f), x, f))
        except ExecError as e:  # pragma: no cover - reported below
            results.append(e)

    for _ in range(2):
        t = threading.Thread(target=worker)
        t.start()
        t.join()
    assert len(results) == 6 and not [r for r in results if isinstance(r, Exception)], results
    for out, x, f in results:
        check(out, x, f, 0)
    ex.close()
    assert_clean(d)


def test_device_calls_and_teardown_from_other_threads_select_the_executors_device(d):
    """infer_device and the destructor, each from a new thread (current device 0), on an
    executor of device 1 with the caller's buffers and stream on device 1."""
    ex = make(d, SPECS, FILM_SIZES, device=1)
    stream = d.lib.fake_user_stream(1)
    x = images(2)
    dx, dout = d.lib.fake_user_malloc(x.nbytes, 1), d.lib.fake_user_malloc(2 * CLASSES * 4, 1)
    ctypes.memmove(dx, x.ctypes.data, x.nbytes)
    errors = []

    def on_new_thread(fn):
        def run():
            try:
                fn()
            except ExecError as e:  # reported below
                errors.append(e)
        t = threading.Thread(target=run)
        t.start()
        t.join()

    on_new_thread(lambda: ex.infer_device(2, dx, 2, 0, dout, stream))
    assert errors == [] and d.lib.fake_user_sync(stream, 1) == 0
    np.testing.assert_allclose(np.frombuffer(ctypes.string_at(dout, 2 * CLASSES * 4), np.float32).reshape(2, CLASSES),
                               expected(x, None, 3), rtol=1e-5)
    on_new_thread(ex.close)
    assert errors == []
    assert_clean(d)


def test_a_device_call_waits_for_the_inputs_the_callers_stream_writes(d):
    """The caller's stream still has the copy of the images pending when infer_device is called;
    a host call right after drains the executor's stream: the engine must have run after that copy."""
    ex = make(d, SPECS, FILM_SIZES)
    stream = d.lib.fake_user_stream(0)
    x = images(2)
    dx, dout = d.lib.fake_user_malloc(x.nbytes, 0), d.lib.fake_user_malloc(2 * CLASSES * 4, 0)
    copy = d.lib.cudaMemcpyAsync
    copy.argtypes = [ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_size_t]
    assert copy(dx, x.ctypes.data, x.nbytes, 1, stream) == 0  # host to device, on the caller's stream
    ex.infer_device(2, dx, 2, 0, dout, stream)
    y = images(3)
    check(ex.infer_host(2, y), y, None, 2)  # waits for the executor's stream
    np.testing.assert_allclose(np.frombuffer(ctypes.string_at(dout, 2 * CLASSES * 4), np.float32).reshape(2, CLASSES),
                               expected(x, None, 3), rtol=1e-5)
    ex.close()
    assert d.lib.fake_user_sync(stream, 0) == 0
    assert_clean(d)


def test_the_first_enqueue_after_a_shape_change_is_not_captured(d):
    """Every new (path, batch) runs one plain enqueue before its capture, also when the context
    last ran, or replayed, another batch."""
    ex = make(d, SPECS, FILM_SIZES)
    for b in (2, 3, 2, 5, 3, 5):
        x = images(b)
        check(ex.infer_host(2, x), x, None, 2)
    ex.close()
    assert_clean(d)


# --- concurrency ----------------------------------------------------------------------------------
def test_concurrent_mode_switching_and_inference(d):
    """Threads infer with whatever path a switching thread last published (what set_mode does),
    at several batches, host and device calls mixed: every result is the one of the path it ran,
    the engine ran once per call, and nothing touched freed memory or a replay's stale state."""
    ex = make(d, SPECS, FILM_SIZES)
    mode = {"path": 0}
    stop = threading.Event()
    errors, done = [], []

    def switcher():
        i = 0
        while not stop.is_set():
            mode["path"] = i % 3
            i += 1

    def client(seed, use_device):
        rng = np.random.default_rng(seed)
        stream = d.lib.fake_user_stream(0)
        try:
            for it in range(60):
                path = mode["path"]
                b = int(rng.integers(1, 9))
                x = rng.random((b, *CHW), dtype=np.float32)
                f = rng.random(FILM, dtype=np.float32) if FILM_SIZES[path] else None
                if use_device and it % 3 == 0:
                    dx, dout = d.lib.fake_user_malloc(x.nbytes, 0), d.lib.fake_user_malloc(b * CLASSES * 4, 0)
                    df = d.lib.fake_user_malloc(FILM * 4, 0) if f is not None else 0
                    ctypes.memmove(dx, x.ctypes.data, x.nbytes)
                    if f is not None:
                        ctypes.memmove(df, f.ctypes.data, f.nbytes)
                    ex.infer_device(path, dx, b, df, dout, stream)
                    assert d.lib.fake_user_sync(stream, 0) == 0
                    out = np.frombuffer(ctypes.string_at(dout, b * CLASSES * 4), np.float32).reshape(b, CLASSES)
                else:
                    out = ex.infer_host(path, x, f)
                np.testing.assert_allclose(out, expected(x, f, TAGS[path]), rtol=1e-5, atol=1e-5)
                done.append(1)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    run_switcher_and_clients(switcher, [functools.partial(client, s, s % 2 == 1) for s in range(4)], stop)
    assert errors == [] and len(done) == 240
    assert d.executions() == 240
    ex.close()
    assert_clean(d)


# --- a process that already holds real CUDA ------------------------------------------------
POISON = r"""
#include <cstdio>
#include <cstdlib>
#define TRAP(name) extern "C" int name() { std::fprintf(stderr, "real %s called\n", #name); std::abort(); }
TRAP(cudaMalloc) TRAP(cudaFree) TRAP(cudaMemcpyAsync) TRAP(cudaStreamSynchronize) TRAP(cudaStreamCreateWithFlags)
TRAP(cudaGraphLaunch) TRAP(cudaSetDevice) TRAP(cudaGetDevice) TRAP(getInferLibVersion)
"""

INSIDE_A_CUDA_PROCESS = r"""
import ctypes, os, sys
import numpy as np
sys.path.insert(0, sys.argv[3])
ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)  # as torch loads libcudart: global scope
from pathlib import Path
from trt_standins import build_executor_double, fake_engine_spec, expected_logits
d = build_executor_double(Path(sys.argv[2]))
h = d.create([fake_engine_spec((1, 8, 8), 10, 0, (1, 8), 4096, 3)], [0], (1, 8, 8), 10, 8)
x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
out = np.zeros((4, 10), np.float32)
d.infer_host(h, 0, x.ctypes.data, 4, None, 0, out.ctypes.data)
np.testing.assert_allclose(out, expected_logits(x, None, 3, 10), rtol=1e-5, atol=1e-5)
d.destroy(h)
print("ok")
"""


def test_double_keeps_its_own_cuda_when_real_cuda_is_loaded_globally(tmp_path, lib):
    # On the GPU machine torch had put the real libcudart in the global scope and every test
    # here segfaulted: the executor's calls went to real CUDA with the double's fake pointers.
    # A library of trapping CUDA / TensorRT symbols loaded RTLD_GLOBAL stands in for it.
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    cxx = shutil.which("g++") or shutil.which("c++")
    (tmp_path / "poison.cpp").write_text(POISON)
    so = tmp_path / "libpoison.so"
    subprocess.run([cxx, "-shared", "-fPIC", str(tmp_path / "poison.cpp"), "-o", str(so)], check=True)
    build = tmp_path / "build"
    build.mkdir()
    r = subprocess.run([sys.executable, "-c", INSIDE_A_CUDA_PROCESS, str(so), str(build), str(Path(__file__).parent)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
