// TensorRT engine executor (compiled only when CMake finds TensorRT and CUDA: OATEDGE_WITH_TENSORRT).
//
// One execution context per path, all sharing ONE block of device scratch memory (user-managed
// allocation, sized by the largest engine): switching paths costs nothing and memory is that of
// the largest path, not the sum. I/O buffers are allocated once for the largest batch and bound
// with setTensorAddress; each (path, batch) is captured once into a CUDA graph and replayed.
// Contexts share the scratch memory, so all work goes to one stream under one mutex.
//
// Written against TensorRT 10.x/11.x (createExecutionContext(kUSER_MANAGED), setDeviceMemoryV2,
// getDeviceMemorySizeV2 from 10.1; setDeviceMemory/getDeviceMemorySize on 10.0) and the CUDA
// runtime API. It is not compiled on machines without TensorRT: there the tensorrt backend uses
// its pycuda fallback (oat_edge/runtime/backends/tensorrt.py).
#include <nanobind/nanobind.h>

namespace nb = nanobind;

#ifdef OATEDGE_WITH_TENSORRT

#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

namespace oatedge {
namespace {

void cuda_check(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess) throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(rc));
}

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::fprintf(stderr, "[oat-edge tensorrt] %s\n", msg);
  }
};

struct Path {
  nvinfer1::ICudaEngine* engine = nullptr;
  nvinfer1::IExecutionContext* context = nullptr;
  bool has_film = false;
};

}  // namespace

class TrtExecutor {
 public:
  // engines: serialized engine bytes per path (the runtime checked they match this GPU and TensorRT).
  TrtExecutor(const std::vector<nb::bytes>& engines, std::string images_name, std::string film_name,
              std::string logits_name, std::vector<int64_t> image_chw, int64_t num_classes, int64_t max_batch,
              int64_t max_film, int device)
      : images_(std::move(images_name)), film_(std::move(film_name)), logits_(std::move(logits_name)),
        chw_(std::move(image_chw)), classes_(num_classes), max_batch_(max_batch), max_film_(max_film) {
    if (chw_.size() != 3) throw std::invalid_argument("tensorrt: image shape must be [C, H, W]");
    cuda_check(cudaSetDevice(device), "cudaSetDevice");
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw std::runtime_error("tensorrt: createInferRuntime failed");
    int64_t scratch = 0;
    for (const auto& blob : engines) {
      Path p;
      p.engine = runtime_->deserializeCudaEngine(blob.c_str(), blob.size());
      if (!p.engine) throw std::runtime_error("tensorrt: an engine failed to deserialize (foreign or corrupt)");
      p.context = p.engine->createExecutionContext(nvinfer1::ExecutionContextAllocationStrategy::kUSER_MANAGED);
      if (!p.context) throw std::runtime_error("tensorrt: createExecutionContext failed");
      for (int32_t i = 0; i < p.engine->getNbIOTensors(); ++i)
        if (film_ == p.engine->getIOTensorName(i)) p.has_film = true;
#if NV_TENSORRT_MAJOR > 10 || (NV_TENSORRT_MAJOR == 10 && NV_TENSORRT_MINOR >= 1)
      scratch = std::max<int64_t>(scratch, p.engine->getDeviceMemorySizeV2());
#else
      scratch = std::max<int64_t>(scratch, static_cast<int64_t>(p.engine->getDeviceMemorySize()));
#endif
      paths_.push_back(p);
    }
    scratch_bytes_ = scratch;
    cuda_check(cudaMalloc(&scratch_, static_cast<size_t>(std::max<int64_t>(scratch, 256))), "cudaMalloc(scratch)");
    const int64_t image_elems = chw_[0] * chw_[1] * chw_[2];
    cuda_check(cudaMalloc(&d_images_, sizeof(float) * max_batch_ * image_elems), "cudaMalloc(images)");
    cuda_check(cudaMalloc(&d_film_, sizeof(float) * std::max<int64_t>(max_film_, 1)), "cudaMalloc(film)");
    cuda_check(cudaMalloc(&d_logits_, sizeof(float) * max_batch_ * classes_), "cudaMalloc(logits)");
    cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    cuda_check(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming), "cudaEventCreate");
    for (auto& p : paths_) {
#if NV_TENSORRT_MAJOR > 10 || (NV_TENSORRT_MAJOR == 10 && NV_TENSORRT_MINOR >= 1)
      p.context->setDeviceMemoryV2(scratch_, scratch_bytes_);
#else
      p.context->setDeviceMemory(scratch_);
#endif
      bind_static(p);
    }
  }

  ~TrtExecutor() {
    for (auto& kv : graphs_)
      if (kv.second) cudaGraphExecDestroy(kv.second);
    for (auto& p : paths_) {
      delete p.context;
      delete p.engine;
    }
    if (event_) cudaEventDestroy(event_);
    if (stream_) cudaStreamDestroy(stream_);
    cudaFree(d_logits_);
    cudaFree(d_film_);
    cudaFree(d_images_);
    cudaFree(scratch_);
  }

  int64_t scratch_bytes() const { return scratch_bytes_; }
  int64_t num_paths() const { return static_cast<int64_t>(paths_.size()); }

  // Host arrays in and out: copy into the bound buffers, replay the (path, batch) graph, copy out.
  void infer_host(int path, uintptr_t images, int64_t batch, uintptr_t film, int64_t film_size, uintptr_t out) {
    Path& p = get(path);
    check_batch(batch);
    nb::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t image_elems = chw_[0] * chw_[1] * chw_[2];
    cuda_check(cudaMemcpyAsync(d_images_, reinterpret_cast<const void*>(images), sizeof(float) * batch * image_elems,
                               cudaMemcpyHostToDevice, stream_), "copy images");
    if (p.has_film) {
      if (film == 0 || film_size > max_film_) throw std::invalid_argument("tensorrt: this path needs a FiLM vector");
      cuda_check(cudaMemcpyAsync(d_film_, reinterpret_cast<const void*>(film), sizeof(float) * film_size,
                                 cudaMemcpyHostToDevice, stream_), "copy film");
    }
    launch(path, p, batch);
    cuda_check(cudaMemcpyAsync(reinterpret_cast<void*>(out), d_logits_, sizeof(float) * batch * classes_,
                               cudaMemcpyDeviceToHost, stream_), "copy logits");
    cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }

  // Device pointers (e.g. torch CUDA tensors): bound directly (no copies, no graph), ordered after
  // and before the caller's stream with events. The caller keeps the tensors alive until done.
  void infer_device(int path, uintptr_t images, int64_t batch, uintptr_t film, uintptr_t out, uintptr_t user_stream) {
    Path& p = get(path);
    check_batch(batch);
    nb::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mu_);
    auto caller = reinterpret_cast<cudaStream_t>(user_stream);
    cuda_check(cudaEventRecord(event_, caller), "cudaEventRecord");
    cuda_check(cudaStreamWaitEvent(stream_, event_, 0), "cudaStreamWaitEvent");
    set_batch(p, batch);
    p.context->setTensorAddress(images_.c_str(), reinterpret_cast<void*>(images));
    if (p.has_film) p.context->setTensorAddress(film_.c_str(), reinterpret_cast<void*>(film));
    p.context->setTensorAddress(logits_.c_str(), reinterpret_cast<void*>(out));
    const bool ok = p.context->enqueueV3(stream_);
    bind_static(p);  // later graph captures must see the executor's own buffers
    if (!ok) throw std::runtime_error("tensorrt: enqueueV3 failed");
    cuda_check(cudaEventRecord(event_, stream_), "cudaEventRecord");
    cuda_check(cudaStreamWaitEvent(caller, event_, 0), "cudaStreamWaitEvent");
  }

 private:
  Path& get(int path) {
    if (path < 0 || path >= static_cast<int>(paths_.size())) throw std::out_of_range("tensorrt: bad path index");
    return paths_[path];
  }
  void check_batch(int64_t batch) const {
    if (batch < 1 || batch > max_batch_) throw std::invalid_argument("tensorrt: batch outside the engine profile");
  }
  void bind_static(Path& p) {
    p.context->setTensorAddress(images_.c_str(), d_images_);
    if (p.has_film) p.context->setTensorAddress(film_.c_str(), d_film_);
    p.context->setTensorAddress(logits_.c_str(), d_logits_);
  }
  void set_batch(Path& p, int64_t batch) {
    nvinfer1::Dims d{};
    d.nbDims = 4;
    d.d[0] = batch;
    d.d[1] = chw_[0];
    d.d[2] = chw_[1];
    d.d[3] = chw_[2];
    if (!p.context->setInputShape(images_.c_str(), d)) throw std::runtime_error("tensorrt: setInputShape failed");
  }

  // Replays the graph of (path, batch), capturing it on first use. TensorRT wants one enqueue
  // after a shape change before capture (it may allocate or update state outside the stream).
  void launch(int path, Path& p, int64_t batch) {
    const auto key = std::make_pair(path, batch);
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      set_batch(p, batch);
      if (!p.context->enqueueV3(stream_)) throw std::runtime_error("tensorrt: enqueueV3 failed");
      cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
      cudaGraph_t graph = nullptr;
      cudaGraphExec_t exec = nullptr;
      bool captured = cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
      if (captured) {
        const bool ok = p.context->enqueueV3(stream_);
        captured = cudaStreamEndCapture(stream_, &graph) == cudaSuccess && ok;
      }
#if CUDART_VERSION >= 12000
      if (captured) captured = cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
#else
      if (captured) captured = cudaGraphInstantiate(&exec, graph, nullptr, nullptr, 0) == cudaSuccess;
#endif
      if (graph) cudaGraphDestroy(graph);
      cudaGetLastError();  // a failed capture leaves a sticky-free error; clear it
      it = graphs_.emplace(key, captured ? exec : nullptr).first;
      if (!captured) return;  // the warm-up enqueue above already produced this call's output
    }
    if (it->second) {
      cuda_check(cudaGraphLaunch(it->second, stream_), "cudaGraphLaunch");
    } else {  // capture unsupported for this engine: plain enqueue
      set_batch(p, batch);
      if (!p.context->enqueueV3(stream_)) throw std::runtime_error("tensorrt: enqueueV3 failed");
    }
  }

  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::vector<Path> paths_;
  std::string images_, film_, logits_;
  std::vector<int64_t> chw_;
  int64_t classes_, max_batch_, max_film_;
  int64_t scratch_bytes_ = 0;
  void* scratch_ = nullptr;
  void* d_images_ = nullptr;
  void* d_film_ = nullptr;
  void* d_logits_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t event_ = nullptr;
  std::map<std::pair<int, int64_t>, cudaGraphExec_t> graphs_;
  std::mutex mu_;
};

}  // namespace oatedge

void register_tensorrt(nb::module_& m) {
  using oatedge::TrtExecutor;
  m.attr("has_tensorrt") = true;
  m.attr("tensorrt_version") =
      std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) + "." + std::to_string(NV_TENSORRT_PATCH);
  nb::class_<TrtExecutor>(m, "TrtExecutor")
      .def(nb::init<const std::vector<nb::bytes>&, std::string, std::string, std::string, std::vector<int64_t>, int64_t,
                    int64_t, int64_t, int>(),
           nb::arg("engines"), nb::arg("images_name"), nb::arg("film_name"), nb::arg("logits_name"),
           nb::arg("image_chw"), nb::arg("num_classes"), nb::arg("max_batch"), nb::arg("max_film"), nb::arg("device") = 0)
      .def("infer_host", &TrtExecutor::infer_host, nb::arg("path"), nb::arg("images"), nb::arg("batch"), nb::arg("film"),
           nb::arg("film_size"), nb::arg("out"))
      .def("infer_device", &TrtExecutor::infer_device, nb::arg("path"), nb::arg("images"), nb::arg("batch"),
           nb::arg("film"), nb::arg("out"), nb::arg("stream"))
      .def_prop_ro("scratch_bytes", &TrtExecutor::scratch_bytes)
      .def_prop_ro("num_paths", &TrtExecutor::num_paths);
}

#else  // no TensorRT at build time

void register_tensorrt(nb::module_& m) {
  m.attr("has_tensorrt") = false;
  m.attr("tensorrt_version") = nb::none();
}

#endif
