// TensorRT engine executor (compiled only when CMake finds TensorRT >= 10 and CUDA:
// OATEDGE_WITH_TENSORRT).
//
// One execution context per path, all sharing ONE block of device scratch memory (user-managed
// allocation, sized by the largest engine): switching paths costs nothing and memory is that of
// the largest path, not the sum. I/O buffers are allocated once for the largest batch; each
// (path, batch) is captured once into a CUDA graph and replayed.
//
// Rules this file keeps (docs/tensorrt.md has the reasons):
// - Contexts share the scratch memory, so ALL work goes to one stream (stream_) under one mutex;
//   callers' streams are ordered with events in both directions.
// - Before every enqueue and every graph replay the context gets that call's input shape and
//   tensor addresses again: another call may have left it holding another batch or pointers.
// - A (path, batch) runs exactly once per call: the first call's plain enqueue is its result,
//   the graph captured right after it is replayed from the second call on.
// - Every TensorRT and CUDA return value is checked. Bad input or an engine that does not match
//   the bundle throws std::invalid_argument; a TensorRT/CUDA failure throws std::runtime_error
//   (the Python runner turns both into one-line OatEdgeError messages).
// - cudaSetDevice(device) at the start of every call: the CUDA device is per host thread and
//   calls come from any thread.
// - Ownership is RAII in declaration order: the destructor synchronises the stream, then graphs,
//   contexts, engines, the runtime, events, the stream and device memory go in that order (also
//   when the constructor throws partway).
//
// Written against TensorRT 10.x/11.x (createExecutionContext(kUSER_MANAGED); setDeviceMemoryV2
// and getDeviceMemorySizeV2 from 10.1, setDeviceMemory/getDeviceMemorySize on 10.0) and the CUDA
// runtime API. Define OATEDGE_TRT_CORE_ONLY to compile the executor without its Python binding
// (the CPU tests compile it that way against a recorded stand-in of TensorRT and CUDA).

#ifndef OATEDGE_TRT_CORE_ONLY
#include <nanobind/nanobind.h>
namespace nb = nanobind;
#endif

#ifdef OATEDGE_WITH_TENSORRT

#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if NV_TENSORRT_MAJOR < 10
#error "the oat-edge TensorRT executor needs TensorRT >= 10 (CMake builds the extension without it for older versions)"
#endif

namespace oatedge {

namespace trt_detail {

inline void cuda_check(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess) throw std::runtime_error(std::string("tensorrt executor: CUDA error in ") + what + ": " + cudaGetErrorString(rc));
}

// Destructors cannot throw: a failed release is reported on stderr.
inline void cuda_warn(cudaError_t rc, const char* what) noexcept {
  if (rc != cudaSuccess) std::fprintf(stderr, "[oat-edge tensorrt] %s failed at teardown: %s\n", what, cudaGetErrorString(rc));
}

struct FreeDevice {
  void operator()(void* p) const noexcept { cuda_warn(cudaFree(p), "cudaFree"); }
};
struct DestroyStream {
  void operator()(cudaStream_t s) const noexcept { cuda_warn(cudaStreamDestroy(s), "cudaStreamDestroy"); }
};
struct DestroyEvent {
  void operator()(cudaEvent_t e) const noexcept { cuda_warn(cudaEventDestroy(e), "cudaEventDestroy"); }
};
struct DestroyGraph {
  void operator()(cudaGraph_t g) const noexcept { cuda_warn(cudaGraphDestroy(g), "cudaGraphDestroy"); }
};
struct DestroyGraphExec {
  void operator()(cudaGraphExec_t g) const noexcept { cuda_warn(cudaGraphExecDestroy(g), "cudaGraphExecDestroy"); }
};

using DevicePtr = std::unique_ptr<void, FreeDevice>;
using StreamPtr = std::unique_ptr<std::remove_pointer_t<cudaStream_t>, DestroyStream>;
using EventPtr = std::unique_ptr<std::remove_pointer_t<cudaEvent_t>, DestroyEvent>;
using GraphPtr = std::unique_ptr<std::remove_pointer_t<cudaGraph_t>, DestroyGraph>;
using GraphExecPtr = std::unique_ptr<std::remove_pointer_t<cudaGraphExec_t>, DestroyGraphExec>;

inline DevicePtr device_alloc(size_t bytes, const char* what) {
  void* p = nullptr;
  cuda_check(cudaMalloc(&p, std::max<size_t>(bytes, 256)), what);
  return DevicePtr(p);
}

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::fprintf(stderr, "[oat-edge tensorrt] %s\n", msg);
  }
};

// Members in this order: the context is destroyed before its engine.
struct Path {
  std::unique_ptr<nvinfer1::ICudaEngine> engine;
  std::unique_ptr<nvinfer1::IExecutionContext> context;
  int64_t film_size = 0;  // 0: no FiLM input (baked path)
  int64_t min_batch = 1, max_batch = 1;
};

inline std::string dims_str(const nvinfer1::Dims& d) {
  std::string s = "[";
  for (int32_t i = 0; i < d.nbDims; ++i) s += (i ? "," : "") + std::to_string(d.d[i]);
  return s + "]";
}

}  // namespace trt_detail

// A serialized engine: bytes owned by the caller for the duration of the constructor.
struct EngineBlob {
  const void* data;
  size_t size;
};

class TrtExecutor {
  using Path = trt_detail::Path;

 public:
  // engines: serialized engine bytes per path (the runtime checked they match this GPU and TensorRT).
  // film_sizes: per path, the FiLM vector length its engine takes (0 for a baked path).
  TrtExecutor(const std::vector<EngineBlob>& engines, std::string images_name, std::string film_name,
              std::string logits_name, std::vector<int64_t> image_chw, int64_t num_classes, int64_t max_batch,
              std::vector<int64_t> film_sizes, int device)
      : images_(std::move(images_name)), film_(std::move(film_name)), logits_(std::move(logits_name)),
        chw_(std::move(image_chw)), classes_(num_classes), max_batch_(max_batch), device_(device) {
    using namespace trt_detail;
    if (chw_.size() != 3 || chw_[0] < 1 || chw_[1] < 1 || chw_[2] < 1)
      throw std::invalid_argument("tensorrt executor: image shape must be [C, H, W] with positive sizes");
    if (classes_ < 1 || max_batch_ < 1) throw std::invalid_argument("tensorrt executor: num_classes and max_batch must be >= 1");
    if (engines.empty()) throw std::invalid_argument("tensorrt executor: no engines");
    if (film_sizes.size() != engines.size())
      throw std::invalid_argument("tensorrt executor: one film size per engine is needed (0 for a baked path)");
    cuda_check(cudaSetDevice(device_), "cudaSetDevice");
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw std::runtime_error("tensorrt executor: createInferRuntime failed");
    int64_t scratch = 0;
    for (size_t i = 0; i < engines.size(); ++i) {
      Path p;
      p.film_size = film_sizes[i];
      p.engine.reset(runtime_->deserializeCudaEngine(engines[i].data, engines[i].size));
      if (!p.engine)
        throw std::invalid_argument("tensorrt executor: engine " + std::to_string(i) +
                                    " failed to deserialize (foreign, corrupt or from another TensorRT version)");
      check_engine(p, i);
      p.context.reset(p.engine->createExecutionContext(nvinfer1::ExecutionContextAllocationStrategy::kUSER_MANAGED));
      if (!p.context) throw std::runtime_error("tensorrt executor: createExecutionContext failed for engine " + std::to_string(i));
#if NV_TENSORRT_MAJOR > 10 || NV_TENSORRT_MINOR >= 1
      const int64_t need = p.engine->getDeviceMemorySizeV2();
#else
      const int64_t need = static_cast<int64_t>(p.engine->getDeviceMemorySize());
#endif
      if (need < 0) throw std::runtime_error("tensorrt executor: engine " + std::to_string(i) + " reports a negative scratch size");
      scratch = std::max(scratch, need);
      paths_.push_back(std::move(p));
    }
    scratch_bytes_ = scratch;
    const size_t image_elems = static_cast<size_t>(chw_[0] * chw_[1] * chw_[2]);
    int64_t max_film = 1;
    for (const auto& p : paths_) max_film = std::max(max_film, p.film_size);
    scratch_ = device_alloc(static_cast<size_t>(scratch), "cudaMalloc(scratch)");
    d_images_ = device_alloc(sizeof(float) * static_cast<size_t>(max_batch_) * image_elems, "cudaMalloc(images)");
    d_film_ = device_alloc(sizeof(float) * static_cast<size_t>(max_film), "cudaMalloc(film)");
    d_logits_ = device_alloc(sizeof(float) * static_cast<size_t>(max_batch_ * classes_), "cudaMalloc(logits)");
    cudaStream_t s = nullptr;
    cuda_check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    stream_.reset(s);
    cudaEvent_t e = nullptr;
    cuda_check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    event_.reset(e);
    for (auto& p : paths_) {
#if NV_TENSORRT_MAJOR > 10 || NV_TENSORRT_MINOR >= 1
      p.context->setDeviceMemoryV2(scratch_.get(), scratch_bytes_);  // void in the API: nothing to check
#else
      p.context->setDeviceMemory(scratch_.get());
#endif
    }
  }

  TrtExecutor(const TrtExecutor&) = delete;
  TrtExecutor& operator=(const TrtExecutor&) = delete;

  // Work may still be in flight (infer_device returns without waiting): finish it before any
  // member is released. Members then go in reverse declaration order.
  ~TrtExecutor() {
    std::lock_guard<std::mutex> lock(mu_);
    trt_detail::cuda_warn(cudaSetDevice(device_), "cudaSetDevice");
    if (stream_) trt_detail::cuda_warn(cudaStreamSynchronize(stream_.get()), "cudaStreamSynchronize");
  }

  int64_t scratch_bytes() const { return scratch_bytes_; }
  int64_t num_paths() const { return static_cast<int64_t>(paths_.size()); }
  int device() const { return device_; }

  // Host arrays in and out: copy into the executor's buffers, run (path, batch) once (graph replay
  // from the second call on), copy out, wait.
  void infer_host(int path, const float* images, int64_t batch, const float* film, int64_t film_size, float* out) {
    using namespace trt_detail;
    Path& p = get(path);
    check_batch(p, batch);
    if (!images || !out) throw std::invalid_argument("tensorrt executor: null image or output pointer");
    if (p.film_size > 0 && (!film || film_size != p.film_size))
      throw std::invalid_argument("tensorrt executor: path " + std::to_string(path) + " takes a FiLM vector of size " +
                                  std::to_string(p.film_size) + ", got " + (film ? std::to_string(film_size) : "none"));
    std::lock_guard<std::mutex> lock(mu_);
    cuda_check(cudaSetDevice(device_), "cudaSetDevice");
    const size_t image_bytes = sizeof(float) * static_cast<size_t>(batch * chw_[0] * chw_[1] * chw_[2]);
    cuda_check(cudaMemcpyAsync(d_images_.get(), images, image_bytes, cudaMemcpyHostToDevice, stream_.get()), "cudaMemcpyAsync(images)");
    if (p.film_size > 0)
      cuda_check(cudaMemcpyAsync(d_film_.get(), film, sizeof(float) * static_cast<size_t>(p.film_size), cudaMemcpyHostToDevice,
                                 stream_.get()),
                 "cudaMemcpyAsync(film)");
    run_once(path, p, batch);
    cuda_check(cudaMemcpyAsync(out, d_logits_.get(), sizeof(float) * static_cast<size_t>(batch * classes_), cudaMemcpyDeviceToHost,
                               stream_.get()),
               "cudaMemcpyAsync(logits)");
    cuda_check(cudaStreamSynchronize(stream_.get()), "cudaStreamSynchronize");
  }

  // Device pointers (e.g. torch CUDA tensors): bound directly (no copies, no graph), ordered after
  // and before the caller's stream with events. Returns with the work in flight on the caller's
  // stream; the caller keeps the tensors alive until its stream has passed it.
  void infer_device(int path, uintptr_t images, int64_t batch, uintptr_t film, uintptr_t out, uintptr_t user_stream) {
    using namespace trt_detail;
    Path& p = get(path);
    check_batch(p, batch);
    if (!images || !out) throw std::invalid_argument("tensorrt executor: null image or output pointer");
    if (p.film_size > 0 && !film) throw std::invalid_argument("tensorrt executor: path " + std::to_string(path) + " needs a FiLM vector");
    std::lock_guard<std::mutex> lock(mu_);
    cuda_check(cudaSetDevice(device_), "cudaSetDevice");
    auto caller = reinterpret_cast<cudaStream_t>(user_stream);
    set_shape(p, batch);
    bind(p, reinterpret_cast<void*>(images), reinterpret_cast<void*>(film), reinterpret_cast<void*>(out));
    cuda_check(cudaEventRecord(event_.get(), caller), "cudaEventRecord(caller)");
    cuda_check(cudaStreamWaitEvent(stream_.get(), event_.get(), 0), "cudaStreamWaitEvent(executor)");
    if (!p.context->enqueueV3(stream_.get())) throw std::runtime_error("tensorrt executor: enqueueV3 failed");
    cuda_check(cudaEventRecord(event_.get(), stream_.get()), "cudaEventRecord(executor)");
    cuda_check(cudaStreamWaitEvent(caller, event_.get(), 0), "cudaStreamWaitEvent(caller)");
  }

 private:
  Path& get(int path) {
    if (path < 0 || path >= static_cast<int>(paths_.size()))
      throw std::invalid_argument("tensorrt executor: path index " + std::to_string(path) + " out of range");
    return paths_[static_cast<size_t>(path)];
  }
  void check_batch(const Path& p, int64_t batch) const {
    if (batch < p.min_batch || batch > p.max_batch)
      throw std::invalid_argument("tensorrt executor: batch " + std::to_string(batch) + " outside the engine profile " +
                                  std::to_string(p.min_batch) + ".." + std::to_string(p.max_batch));
  }

  // The engine must be the one the bundle describes: float32 I/O with these names and shapes,
  // nothing else to bind, a profile that covers max_batch.
  void check_engine(Path& p, size_t i) {
    using trt_detail::dims_str;
    auto& e = *p.engine;
    const std::string where = "tensorrt executor: engine " + std::to_string(i) + " ";
    bool saw_images = false, saw_film = false, saw_logits = false;
    for (int32_t k = 0; k < e.getNbIOTensors(); ++k) {
      const char* name = e.getIOTensorName(k);
      const std::string n = name ? name : "";
      if (n == images_) saw_images = true;
      else if (n == logits_) saw_logits = true;
      else if (n == film_ && p.film_size > 0) saw_film = true;
      else throw std::invalid_argument(where + "has an I/O tensor '" + n + "' the bundle does not describe");
    }
    if (!saw_images || !saw_logits || (p.film_size > 0 && !saw_film))
      throw std::invalid_argument(where + "lacks the '" + (!saw_images ? images_ : !saw_logits ? logits_ : film_) + "' tensor");
    auto expect = [&](const std::string& name, nvinfer1::TensorIOMode mode) {
      if (e.getTensorIOMode(name.c_str()) != mode)
        throw std::invalid_argument(where + "has '" + name + "' as an " +
                                    (mode == nvinfer1::TensorIOMode::kINPUT ? "output, expected an input" : "input, expected an output"));
      if (e.getTensorDataType(name.c_str()) != nvinfer1::DataType::kFLOAT)
        throw std::invalid_argument(where + "'" + name + "' is not float32 (rebuild the engine from the bundle's ONNX)");
    };
    expect(images_, nvinfer1::TensorIOMode::kINPUT);
    expect(logits_, nvinfer1::TensorIOMode::kOUTPUT);
    if (p.film_size > 0) expect(film_, nvinfer1::TensorIOMode::kINPUT);
    const nvinfer1::Dims im = e.getTensorShape(images_.c_str());
    if (im.nbDims != 4 || im.d[1] != chw_[0] || im.d[2] != chw_[1] || im.d[3] != chw_[2])
      throw std::invalid_argument(where + "'" + images_ + "' has shape " + dims_str(im) + ", the bundle's images are [N," +
                                  std::to_string(chw_[0]) + "," + std::to_string(chw_[1]) + "," + std::to_string(chw_[2]) + "]");
    const nvinfer1::Dims lg = e.getTensorShape(logits_.c_str());
    if (lg.nbDims != 2 || lg.d[1] != classes_)
      throw std::invalid_argument(where + "'" + logits_ + "' has shape " + dims_str(lg) + ", expected [N," + std::to_string(classes_) + "]");
    if (p.film_size > 0) {
      const nvinfer1::Dims f = e.getTensorShape(film_.c_str());
      if (f.nbDims != 1 || f.d[0] != p.film_size)
        throw std::invalid_argument(where + "'" + film_ + "' has shape " + dims_str(f) + ", the bundle's FiLM vector has " +
                                    std::to_string(p.film_size) + " values");
    }
    if (im.d[0] >= 0) {  // static batch
      p.min_batch = p.max_batch = im.d[0];
    } else {
      if (e.getNbOptimizationProfiles() < 1) throw std::invalid_argument(where + "has a dynamic batch but no optimisation profile");
      p.min_batch = e.getProfileShape(images_.c_str(), 0, nvinfer1::OptProfileSelector::kMIN).d[0];
      p.max_batch = e.getProfileShape(images_.c_str(), 0, nvinfer1::OptProfileSelector::kMAX).d[0];
    }
    if (p.max_batch > max_batch_) p.max_batch = max_batch_;  // the I/O buffers hold max_batch_
    if (p.min_batch < 1 || p.min_batch > p.max_batch)
      throw std::invalid_argument(where + "accepts batches " + std::to_string(p.min_batch) + ".." + std::to_string(p.max_batch) +
                                  ", not within 1.." + std::to_string(max_batch_));
  }

  void set_shape(Path& p, int64_t batch) {
    nvinfer1::Dims d{};
    d.nbDims = 4;
    d.d[0] = batch;
    d.d[1] = chw_[0];
    d.d[2] = chw_[1];
    d.d[3] = chw_[2];
    if (!p.context->setInputShape(images_.c_str(), d))
      throw std::runtime_error("tensorrt executor: setInputShape(" + images_ + ", batch " + std::to_string(batch) + ") failed");
  }
  void set_address(Path& p, const std::string& name, void* ptr) {
    if (!p.context->setTensorAddress(name.c_str(), ptr))
      throw std::runtime_error("tensorrt executor: setTensorAddress(" + name + ") failed");
  }
  void bind(Path& p, void* images, void* film, void* logits) {
    set_address(p, images_, images);
    if (p.film_size > 0) set_address(p, film_, film);
    set_address(p, logits_, logits);
  }

  // Runs (path, batch) exactly once on stream_. Shape and addresses are set first on every call
  // (a graph replay included: infer_device or another batch may have changed them). The first
  // call of a (path, batch) runs a plain enqueue (TensorRT wants one after a shape change before
  // capture) which is this call's result; the capture after it records without running.
  void run_once(int path, Path& p, int64_t batch) {
    using namespace trt_detail;
    set_shape(p, batch);
    bind(p, d_images_.get(), d_film_.get(), d_logits_.get());
    const auto key = std::make_pair(path, batch);
    auto it = graphs_.find(key);
    if (it != graphs_.end()) {
      if (it->second)
        cuda_check(cudaGraphLaunch(it->second.get(), stream_.get()), "cudaGraphLaunch");
      else if (!p.context->enqueueV3(stream_.get()))
        throw std::runtime_error("tensorrt executor: enqueueV3 failed");
      return;
    }
    if (!p.context->enqueueV3(stream_.get())) throw std::runtime_error("tensorrt executor: enqueueV3 failed");
    cuda_check(cudaStreamSynchronize(stream_.get()), "cudaStreamSynchronize");
    graphs_.emplace(key, capture(p));
  }

  // A graph of one enqueue of p, or null when this engine cannot be captured (then later calls
  // enqueue directly). Capture failures are not errors: the stream is left out of capture mode.
  trt_detail::GraphExecPtr capture(Path& p) {
    using namespace trt_detail;
    if (cudaStreamBeginCapture(stream_.get(), cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
      (void)cudaGetLastError();
      return nullptr;
    }
    const bool enqueued = p.context->enqueueV3(stream_.get());
    cudaGraph_t raw = nullptr;
    const cudaError_t end = cudaStreamEndCapture(stream_.get(), &raw);  // always: leaves capture mode
    GraphPtr graph(raw);
    if (!enqueued || end != cudaSuccess || !graph) {
      (void)cudaGetLastError();  // a failed capture sets a non-sticky error: clear it
      std::fprintf(stderr, "[oat-edge tensorrt] CUDA graph capture unsupported for this engine; using plain enqueues\n");
      return nullptr;
    }
    cudaGraphExec_t exec = nullptr;
#if CUDART_VERSION >= 12000
    const cudaError_t inst = cudaGraphInstantiate(&exec, graph.get(), 0);
#else
    const cudaError_t inst = cudaGraphInstantiate(&exec, graph.get(), nullptr, nullptr, 0);
#endif
    if (inst != cudaSuccess) {
      (void)cudaGetLastError();
      return nullptr;
    }
    return GraphExecPtr(exec);
  }

  // Declaration order is release order reversed: graphs, contexts/engines, runtime, event,
  // stream, buffers, logger.
  trt_detail::Logger logger_;
  std::string images_, film_, logits_;
  std::vector<int64_t> chw_;
  int64_t classes_, max_batch_;
  int device_;
  int64_t scratch_bytes_ = 0;
  trt_detail::DevicePtr scratch_, d_images_, d_film_, d_logits_;
  trt_detail::StreamPtr stream_;
  trt_detail::EventPtr event_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::vector<trt_detail::Path> paths_;
  std::map<std::pair<int, int64_t>, trt_detail::GraphExecPtr> graphs_;
  std::mutex mu_;
};

}  // namespace oatedge

#ifndef OATEDGE_TRT_CORE_ONLY
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

namespace {

std::string version_string(int64_t v) {  // NV_TENSORRT_VERSION_INT layout: major*10000 + minor*100 + patch
  return std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." + std::to_string(v % 100);
}

std::vector<oatedge::EngineBlob> as_blobs(const std::vector<nb::bytes>& engines) {
  std::vector<oatedge::EngineBlob> blobs;
  for (const auto& b : engines) blobs.push_back({b.c_str(), b.size()});
  return blobs;
}

}  // namespace

void register_tensorrt(nb::module_& m) {
  using oatedge::TrtExecutor;
  m.attr("has_tensorrt") = true;
  // The headers this extension was compiled against, and the libnvinfer it loaded (they can
  // differ when TensorRT was upgraded after the build); the runner compares both with Python's.
  m.attr("tensorrt_version") = version_string(NV_TENSORRT_VERSION_INT(NV_TENSORRT_MAJOR, NV_TENSORRT_MINOR, NV_TENSORRT_PATCH));
  m.def("tensorrt_library_version", []() { return version_string(getInferLibVersion()); });
  nb::class_<TrtExecutor>(m, "TrtExecutor")
      .def("__init__",
           [](TrtExecutor* self, const std::vector<nb::bytes>& engines, std::string images, std::string film, std::string logits,
              std::vector<int64_t> chw, int64_t classes, int64_t max_batch, std::vector<int64_t> film_sizes, int device) {
             new (self) TrtExecutor(as_blobs(engines), std::move(images), std::move(film), std::move(logits), std::move(chw),
                                    classes, max_batch, std::move(film_sizes), device);
           },
           nb::arg("engines"), nb::arg("images_name"), nb::arg("film_name"), nb::arg("logits_name"), nb::arg("image_chw"),
           nb::arg("num_classes"), nb::arg("max_batch"), nb::arg("film_sizes"), nb::arg("device") = 0)
      .def(
          "infer_host",
          [](TrtExecutor& self, int path, uintptr_t images, int64_t batch, uintptr_t film, int64_t film_size, uintptr_t out) {
            nb::gil_scoped_release release;
            self.infer_host(path, reinterpret_cast<const float*>(images), batch, reinterpret_cast<const float*>(film), film_size,
                            reinterpret_cast<float*>(out));
          },
          nb::arg("path"), nb::arg("images"), nb::arg("batch"), nb::arg("film"), nb::arg("film_size"), nb::arg("out"))
      .def(
          "infer_device",
          [](TrtExecutor& self, int path, uintptr_t images, int64_t batch, uintptr_t film, uintptr_t out, uintptr_t stream) {
            nb::gil_scoped_release release;
            self.infer_device(path, images, batch, film, out, stream);
          },
          nb::arg("path"), nb::arg("images"), nb::arg("batch"), nb::arg("film"), nb::arg("out"), nb::arg("stream"))
      .def_prop_ro("scratch_bytes", &TrtExecutor::scratch_bytes)
      .def_prop_ro("num_paths", &TrtExecutor::num_paths)
      .def_prop_ro("device", &TrtExecutor::device);
}
#endif  // OATEDGE_TRT_CORE_ONLY

#elif !defined(OATEDGE_TRT_CORE_ONLY)  // no TensorRT at build time

void register_tensorrt(nb::module_& m) {
  m.attr("has_tensorrt") = false;
  m.attr("tensorrt_version") = nb::none();
}

#endif
