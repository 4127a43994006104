// TEST DOUBLE -- NOT TensorRT, NOT CUDA. A stand-in for two dependencies that cannot be installed
// on the development machine, linked into the real runtime/csrc/trt_executor.cpp by the tests
// (tests/test_trt_executor_double.py). It records every call and models only these rules, each
// of which the executor relies on:
//
//  * Device memory (cudaMalloc) is host memory here. Work on a stream does not run when it is
//    enqueued: it runs when the host waits for it (cudaStreamSynchronize of that stream, or of a
//    stream ordered after it by cudaStreamWaitEvent). Freeing memory, or destroying an execution
//    context, while enqueued work still uses it is recorded as a violation (a crash or garbage on
//    a GPU); so is work that touches memory that was freed or never allocated.
//  * enqueueV3 snapshots the context's input shape, tensor addresses and scratch memory at the
//    call (TensorRT reads them then), and fails (returns false, logs an error) when a shape or an
//    address is missing, the scratch is missing or too small, or the thread's current device is
//    not the context's.
//  * During stream capture, enqueueV3 records into the graph instead of running. A graph replay
//    runs the snapshots taken at capture; replaying while the context holds another shape or
//    other addresses than at capture is recorded as a violation and the replay writes NaN
//    (undefined behaviour in this model). cudaStreamSynchronize during capture fails and
//    invalidates the capture, as in CUDA.
//  * The first enqueueV3 of a context after its input shape changed must run outside stream
//    capture (TensorRT does shape-dependent set-up there that cannot be captured); capturing
//    it instead is recorded as a violation.
//  * Kernel work (enqueueV3, cudaGraphLaunch) on a stream of another device than the thread's
//    current one fails. The device is per host thread (cudaSetDevice); two devices exist.
//    Synchronising or destroying a stream of another device than the current one is recorded
//    as a violation: the executor's rule is to select its device first in every call, teardown
//    included (real CUDA would act on the current device's context instead).
//  * An "engine" is a text spec (see parse_spec); running it computes, per image i and class k,
//    logits[i][k] = tag + (k + 1) * mean(images[i]) + 0.5 * mean(film). That formula is the
//    tests' oracle, nothing more.
//  * Destruction order: an engine destroyed while it has contexts, or a runtime destroyed while
//    it has engines, is a violation.
//  * fake_fail(name, n) makes the n-th next call of `name` fail (false / nullptr / an error code).
//
// Nothing here claims to reproduce TensorRT or CUDA beyond these rules.

#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace fake {

constexpr int kDevices = 2;

struct Tensor {
  std::string name;
  nvinfer1::TensorIOMode mode;
  nvinfer1::DataType dtype;
  std::vector<int64_t> shape;  // -1: dynamic batch
};

struct Spec {
  std::vector<Tensor> io;
  int64_t bmin = 1, bmax = 8, scratch = 4096;
  double tag = 0;
  bool capturable = true;
  int64_t chw = 0, classes = 0, film = 0;
};

struct Snapshot {
  int ctx_id = 0;
  Spec spec;
  int64_t batch = -1;
  std::map<std::string, void*> addr;
  void* scratch = nullptr;
  bool poisoned = false;
};

struct Stream;
struct Op {
  enum Kind { kMemcpy, kKernels, kWait } kind = kMemcpy;
  void* dst = nullptr;
  const void* src = nullptr;
  size_t bytes = 0;
  cudaMemcpyKind mkind = cudaMemcpyHostToHost;
  std::vector<Snapshot> kernels;
  Stream* wait_on = nullptr;
  uint64_t wait_ticket = 0;
};

struct Stream {
  int id = 0;
  int device = 0;
  bool destroyed = false;
  bool capturing = false;
  bool capture_invalid = false;
  std::vector<Snapshot> nodes;
  std::deque<std::pair<uint64_t, Op>> pending;
  uint64_t next_ticket = 1;
};

struct Alloc {
  size_t size;
  int device;
  bool live;
};

std::recursive_mutex mu;
std::map<uintptr_t, Alloc> allocs;
std::vector<char*> keep;  // freed memory is kept (poisoned) until reset, so a use after free is recorded, not a crash
std::vector<std::unique_ptr<Stream>> streams;
Stream* default_stream[kDevices] = {nullptr, nullptr};
std::vector<std::string> calls_log, violations;
std::map<std::string, int> calls, fail_at;
std::set<int> live_contexts_ids;
std::map<int, nvinfer1::IExecutionContext*> contexts_by_id;
int next_id = 1, executions = 0;
int live_runtimes = 0, live_engines = 0, live_contexts = 0, live_events = 0, live_graphs = 0, live_execs = 0;
thread_local int current_device = 0;
std::string report_buffer;

void note(const std::string& s) { calls_log.push_back(s); }
void violation(const std::string& s) {
  violations.push_back(s);
  calls_log.push_back("VIOLATION " + s);
}

bool fails(const std::string& name) {
  const int n = ++calls[name];
  auto it = fail_at.find(name);
  if (it != fail_at.end() && it->second == n) {
    note("FAIL(injected) " + name);
    fail_at.erase(it);
    return true;
  }
  return false;
}

const Alloc* find_alloc(const void* p, size_t bytes, bool* live) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  auto it = allocs.upper_bound(a);
  if (it == allocs.begin()) return nullptr;
  --it;
  if (a + bytes > it->first + it->second.size) return nullptr;
  *live = it->second.live;
  return &it->second;
}

bool device_ok(const void* p, size_t bytes) {
  bool live = false;
  return find_alloc(p, bytes, &live) && live;
}

bool overlaps(const void* p, size_t n, uintptr_t base, size_t size) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  return a < base + size && base < a + n;
}

Stream* resolve(cudaStream_t s);

size_t tensor_bytes(const Spec& sp, const std::string& name, int64_t batch) {
  for (const auto& t : sp.io)
    if (t.name == name) {
      size_t n = 1;
      for (int64_t d : t.shape) n *= static_cast<size_t>(d < 0 ? batch : d);
      return n * 4;
    }
  return 0;
}

bool snapshot_uses(const Snapshot& s, uintptr_t base, size_t size) {
  for (const auto& kv : s.addr)
    if (overlaps(kv.second, tensor_bytes(s.spec, kv.first, s.batch), base, size)) return true;
  return overlaps(s.scratch, static_cast<size_t>(s.spec.scratch), base, size);
}

bool op_uses(const Op& op, uintptr_t base, size_t size) {
  if (op.kind == Op::kMemcpy) return overlaps(op.dst, op.bytes, base, size) || overlaps(op.src, op.bytes, base, size);
  for (const auto& k : op.kernels)
    if (snapshot_uses(k, base, size)) return true;
  return false;
}

void run_kernel(const Snapshot& s) {
  if (!live_contexts_ids.count(s.ctx_id)) {
    violation("work of context " + std::to_string(s.ctx_id) + " ran after the context was destroyed");
    return;
  }
  for (const auto& kv : s.addr)
    if (!device_ok(kv.second, tensor_bytes(s.spec, kv.first, s.batch))) {
      violation("context " + std::to_string(s.ctx_id) + " ran with '" + kv.first + "' in freed or unallocated memory");
      return;
    }
  if (!device_ok(s.scratch, static_cast<size_t>(s.spec.scratch))) {
    violation("context " + std::to_string(s.ctx_id) + " ran with freed or unallocated scratch memory");
    return;
  }
  ++executions;
  const float* images = static_cast<const float*>(s.addr.at("images"));
  float* logits = static_cast<float*>(s.addr.at("logits"));
  double film_mean = 0;
  if (s.spec.film > 0) {
    const float* film = static_cast<const float*>(s.addr.at("film"));
    for (int64_t j = 0; j < s.spec.film; ++j) film_mean += film[j];
    film_mean /= static_cast<double>(s.spec.film);
  }
  for (int64_t i = 0; i < s.batch; ++i) {
    double mean = 0;
    for (int64_t j = 0; j < s.spec.chw; ++j) mean += images[i * s.spec.chw + j];
    mean /= static_cast<double>(s.spec.chw);
    for (int64_t k = 0; k < s.spec.classes; ++k)
      logits[i * s.spec.classes + k] =
          s.poisoned ? std::numeric_limits<float>::quiet_NaN()
                     : static_cast<float>(s.spec.tag + static_cast<double>(k + 1) * mean + 0.5 * film_mean);
  }
}

void drain(Stream* s, uint64_t upto);

void execute(Op& op) {
  switch (op.kind) {
    case Op::kMemcpy: {
      const bool dst_dev = op.mkind == cudaMemcpyHostToDevice || op.mkind == cudaMemcpyDeviceToDevice;
      const bool src_dev = op.mkind == cudaMemcpyDeviceToHost || op.mkind == cudaMemcpyDeviceToDevice;
      if ((dst_dev && !device_ok(op.dst, op.bytes)) || (src_dev && !device_ok(op.src, op.bytes))) {
        violation("a copy touched freed or unallocated device memory");
        return;
      }
      std::memcpy(op.dst, op.src, op.bytes);
      return;
    }
    case Op::kKernels:
      for (const auto& k : op.kernels) run_kernel(k);
      return;
    case Op::kWait:
      drain(op.wait_on, op.wait_ticket);
      return;
  }
}

void drain(Stream* s, uint64_t upto) {
  while (!s->pending.empty() && s->pending.front().first <= upto) {
    Op op = std::move(s->pending.front().second);
    s->pending.pop_front();
    execute(op);
  }
}

void push(Stream* s, Op op) { s->pending.emplace_back(s->next_ticket++, std::move(op)); }

Stream* new_stream(int device) {
  streams.push_back(std::make_unique<Stream>());
  Stream* s = streams.back().get();
  s->id = next_id++;
  s->device = device;
  return s;
}

Stream* resolve(cudaStream_t s) {
  if (s) return reinterpret_cast<Stream*>(s);
  if (!default_stream[current_device]) default_stream[current_device] = new_stream(current_device);
  return default_stream[current_device];
}

bool parse_int(const std::string& v, int64_t* out) {
  char* end = nullptr;
  *out = std::strtoll(v.c_str(), &end, 10);
  return end && *end == '\0' && !v.empty();
}

nvinfer1::DataType parse_dtype(const std::string& v) {
  if (v == "half") return nvinfer1::DataType::kHALF;
  if (v == "int32") return nvinfer1::DataType::kINT32;
  return nvinfer1::DataType::kFLOAT;
}

// "OATFAKE chw=1x8x8 classes=10 film=16 batch=1:8 scratch=4096 tag=2 capture=1
//  images_dtype=float film_dtype=float logits_dtype=float film_shape=16 extra=name"
bool parse_spec(const std::string& text, Spec* sp) {
  std::istringstream in(text);
  std::string word;
  if (!(in >> word) || word != "OATFAKE") return false;
  std::map<std::string, std::string> kv;
  while (in >> word) {
    const auto eq = word.find('=');
    if (eq == std::string::npos) return false;
    kv[word.substr(0, eq)] = word.substr(eq + 1);
  }
  std::vector<int64_t> chw;
  std::istringstream cs(kv.count("chw") ? kv["chw"] : "1x8x8");
  std::string part;
  while (std::getline(cs, part, 'x')) {
    int64_t v;
    if (!parse_int(part, &v)) return false;
    chw.push_back(v);
  }
  if (chw.size() != 3) return false;
  int64_t v;
  sp->classes = 10;
  if (kv.count("classes") && parse_int(kv["classes"], &v)) sp->classes = v;
  if (kv.count("film") && parse_int(kv["film"], &v)) sp->film = v;
  if (kv.count("scratch") && parse_int(kv["scratch"], &v)) sp->scratch = v;
  if (kv.count("tag")) sp->tag = std::atof(kv["tag"].c_str());
  if (kv.count("capture")) sp->capturable = kv["capture"] != "0";
  if (kv.count("batch")) {
    const auto c = kv["batch"].find(':');
    if (c == std::string::npos || !parse_int(kv["batch"].substr(0, c), &sp->bmin) || !parse_int(kv["batch"].substr(c + 1), &sp->bmax))
      return false;
  }
  sp->chw = chw[0] * chw[1] * chw[2];
  sp->io.push_back({"images", nvinfer1::TensorIOMode::kINPUT, parse_dtype(kv["images_dtype"]), {-1, chw[0], chw[1], chw[2]}});
  if (sp->film > 0) {
    int64_t fs = sp->film;
    if (kv.count("film_shape")) parse_int(kv["film_shape"], &fs);
    sp->io.push_back({"film", nvinfer1::TensorIOMode::kINPUT, parse_dtype(kv["film_dtype"]), {fs}});
  }
  sp->io.push_back({"logits", nvinfer1::TensorIOMode::kOUTPUT, parse_dtype(kv["logits_dtype"]), {-1, sp->classes}});
  if (kv.count("extra")) sp->io.push_back({kv["extra"], nvinfer1::TensorIOMode::kINPUT, nvinfer1::DataType::kFLOAT, {1}});
  return true;
}

const Tensor* find_tensor(const Spec& sp, const char* name) {
  if (!name) return nullptr;
  for (const auto& t : sp.io)
    if (t.name == name) return &t;
  return nullptr;
}

}  // namespace fake

using namespace fake;

namespace nvinfer1 {

struct FakeRuntime {
  int id = 0;
  ILogger* logger = nullptr;
  int engines = 0;
};
struct FakeEngine {
  int id = 0;
  Spec spec;
  FakeRuntime* runtime = nullptr;
  int contexts = 0;
};
struct FakeContext {
  int id = 0;
  FakeEngine* engine = nullptr;
  int device = 0;
  int64_t batch = -1;
  std::map<std::string, void*> addr;
  void* scratch = nullptr;
  int64_t scratch_size = 0;
  int64_t enqueued_batch = -1;  // the shape of the last enqueue outside capture
};

namespace {
void trt_error(FakeRuntime* rt, const std::string& msg) {
  note("trt-error " + msg);
  if (rt && rt->logger) rt->logger->log(ILogger::Severity::kERROR, msg.c_str());
}
}  // namespace

IRuntime* createInferRuntime(ILogger& logger) noexcept {
  std::lock_guard<std::recursive_mutex> lock(mu);
  if (fails("createInferRuntime")) return nullptr;
  auto* r = new IRuntime;
  r->impl = new FakeRuntime;
  r->impl->id = next_id++;
  r->impl->logger = &logger;
  ++live_runtimes;
  note("createInferRuntime runtime" + std::to_string(r->impl->id));
  return r;
}

IRuntime::~IRuntime() noexcept {
  std::lock_guard<std::recursive_mutex> lock(mu);
  if (impl->engines) violation("runtime destroyed while " + std::to_string(impl->engines) + " of its engines are alive");
  note("destroy runtime" + std::to_string(impl->id));
  --live_runtimes;
  delete impl;
}

ICudaEngine* IRuntime::deserializeCudaEngine(const void* blob, size_t size) noexcept {
  std::lock_guard<std::recursive_mutex> lock(mu);
  if (fails("deserializeCudaEngine")) return nullptr;
  Spec sp;
  if (!parse_spec(std::string(static_cast<const char*>(blob), size), &sp)) {
    trt_error(impl, "deserializeCudaEngine: not an engine");
    return nullptr;
  }
  auto* e = new ICudaEngine;
  e->impl = new FakeEngine;
  e->impl->id = next_id++;
  e->impl->spec = sp;
  e->impl->runtime = impl;
  ++impl->engines;
  ++live_engines;
  note("deserializeCudaEngine engine" + std::to_string(e->impl->id));
  return e;
}

ICudaEngine::~ICudaEngine() noexcept {
  std::lock_guard<std::recursive_mutex> lock(mu);
  if (impl->contexts) violation("engine destroyed while " + std::to_string(impl->contexts) + " of its contexts are alive");
  note("destroy engine" + std::to_string(impl->id));
  --impl->runtime->engines;
  --live_engines;
  delete impl;
}

int32_t ICudaEngine::getNbIOTensors() const noexcept { return static_cast<int32_t>(impl->spec.io.size()); }
const char* ICudaEngine::getIOTensorName(int32_t index) const noexcept {
  if (index < 0 || index >= getNbIOTensors()) return nullptr;
  return impl->spec.io[static_cast<size_t>(index)].name.c_str();
}
TensorIOMode ICudaEngine::getTensorIOMode(const char* name) const noexcept {
  const Tensor* t = find_tensor(impl->spec, name);
  return t ? t->mode : TensorIOMode::kNONE;
}
DataType ICudaEngine::getTensorDataType(const char* name) const noexcept {
  const Tensor* t = find_tensor(impl->spec, name);
  return t ? t->dtype : DataType::kFLOAT;
}
Dims ICudaEngine::getTensorShape(const char* name) const noexcept {
  Dims d{};
  const Tensor* t = find_tensor(impl->spec, name);
  if (!t) {
    d.nbDims = -1;
    return d;
  }
  d.nbDims = static_cast<int32_t>(t->shape.size());
  for (size_t i = 0; i < t->shape.size(); ++i) d.d[i] = t->shape[i];
  return d;
}
int32_t ICudaEngine::getNbOptimizationProfiles() const noexcept { return 1; }
Dims ICudaEngine::getProfileShape(const char* name, int32_t profile, OptProfileSelector select) const noexcept {
  Dims d = getTensorShape(name);
  if (profile != 0 || d.nbDims < 1) {
    d.nbDims = -1;
    return d;
  }
  if (d.d[0] < 0) d.d[0] = select == OptProfileSelector::kMIN ? impl->spec.bmin : impl->spec.bmax;
  return d;
}
int64_t ICudaEngine::getDeviceMemorySizeV2() const noexcept { return impl->spec.scratch; }
size_t ICudaEngine::getDeviceMemorySize() const noexcept { return static_cast<size_t>(impl->spec.scratch); }

IExecutionContext* ICudaEngine::createExecutionContext(ExecutionContextAllocationStrategy strategy) noexcept {
  std::lock_guard<std::recursive_mutex> lock(mu);
  if (fails("createExecutionContext")) return nullptr;
  if (strategy != ExecutionContextAllocationStrategy::kUSER_MANAGED) note("createExecutionContext: not user-managed");
  auto* c = new IExecutionContext;
  c->impl = new FakeContext;
  c->impl->id = next_id++;
  c->impl->engine = impl;
  c->impl->device = current_device;
  ++impl->contexts;
  ++live_contexts;
  live_contexts_ids.insert(c->impl->id);
  contexts_by_id[c->impl->id] = c;
  note("createExecutionContext ctx" + std::to_string(c->impl->id) + " engine" + std::to_string(impl->id));
  return c;
}

IExecutionContext::~IExecutionContext() noexcept {
  std::lock_guard<std::recursive_mutex> lock(mu);
  bool in_use = false;
  for (const auto& s : streams)
    for (const auto& op : s->pending)
      for (const auto& k : op.second.kernels) in_use = in_use || k.ctx_id == impl->id;
  if (in_use) violation("context " + std::to_string(impl->id) + " destroyed while enqueued work still uses it");
  note("destroy ctx" + std::to_string(impl->id));
  live_contexts_ids.erase(impl->id);
  contexts_by_id.erase(impl->id);
  --impl->engine->contexts;
  --live_contexts;
  delete impl;
}

bool IExecutionContext::setInputShape(const char* name, const Dims& dims) noexcept {
  std::lock_guard<std::recursive_mutex> lock(mu);
  if (fails("setInputShape")) return false;
  const Tensor* t = find_tensor(impl->engine->spec, name);
  const Spec& sp = impl->engine->spec;
  bool ok = t && t->mode == TensorIOMode::kINPUT && dims.nbDims == static_cast<int32_t>(t->shape.size());
  for (int32_t i = 0; ok && i < dims.nbDims; ++i)
    ok = t->shape[static_cast<size_t>(i)] < 0 ? (dims.d[i] >= sp.bmin && dims.d[i] <= sp.bmax) : dims.d[i] == t->shape[static_cast<size_t>(i)];
  if (!ok) {
    trt_error(impl->engine->runtime, std::string("setInputShape: bad shape for ") + (name ? name : "(null)"));
    return false;
  }
  if (t->shape[0] < 0) impl->batch = dims.d[0];
  note("setInputShape ctx" + std::to_string(impl->id) + " " + name + " batch=" + std::to_string(dims.d[0]));
  return true;
}

bool IExecutionContext::setTensorAddress(const char* name, void* data) noexcept {
  std::lock_guard<std::recursive_mutex> lock(mu);
  if (fails("setTensorAddress")) return false;
  if (!find_tensor(impl->engine->spec, name)) {
    trt_error(impl->engine->runtime, std::string("setTensorAddress: no tensor ") + (name ? name : "(null)"));
    return false;
  }
  impl->addr[name] = data;
  note("setTensorAddress ctx" + std::to_string(impl->id) + " " + name);
  return true;
}

void IExecutionContext::setDeviceMemoryV2(void* memory, int64_t size) noexcept {
  std::lock_guard<std::recursive_mutex> lock(mu);
  impl->scratch = memory;
  impl->scratch_size = size;
  note("setDeviceMemoryV2 ctx" + std::to_string(impl->id) + " " + std::to_string(size));
}

void IExecutionContext::setDeviceMemory(void* memory) noexcept {
  std::lock_guard<std::recursive_mutex> lock(mu);
  impl->scratch = memory;
  impl->scratch_size = impl->engine->spec.scratch;
  note("setDeviceMemory ctx" + std::to_string(impl->id));
}

bool IExecutionContext::enqueueV3(cudaStream_t stream) noexcept {
  std::lock_guard<std::recursive_mutex> lock(mu);
  if (fails("enqueueV3")) return false;
  FakeRuntime* rt = impl->engine->runtime;
  const Spec& sp = impl->engine->spec;
  Stream* s = resolve(stream);
  if (current_device != impl->device || s->device != current_device) {
    trt_error(rt, "enqueueV3: context of device " + std::to_string(impl->device) + " used on device " + std::to_string(current_device));
    return false;
  }
  if (impl->batch < 0) {
    trt_error(rt, "enqueueV3: input shape not set");
    return false;
  }
  for (const auto& t : sp.io)
    if (!impl->addr.count(t.name)) {
      trt_error(rt, "enqueueV3: no address for " + t.name);
      return false;
    }
  if (!impl->scratch || impl->scratch_size < sp.scratch) {
    trt_error(rt, "enqueueV3: scratch memory missing or too small");
    return false;
  }
  Snapshot snap{impl->id, sp, impl->batch, impl->addr, impl->scratch, false};
  if (s->capturing) {
    if (impl->batch != impl->enqueued_batch)
      violation("ctx" + std::to_string(impl->id) + ": first enqueueV3 after a shape change made during stream capture");
    if (!sp.capturable) {
      s->capture_invalid = true;
      trt_error(rt, "enqueueV3: this engine cannot be captured");
      return false;
    }
    s->nodes.push_back(std::move(snap));
    note("enqueueV3(capture) ctx" + std::to_string(impl->id) + " batch=" + std::to_string(impl->batch));
    return true;
  }
  impl->enqueued_batch = impl->batch;
  Op op;
  op.kind = Op::kKernels;
  op.kernels.push_back(std::move(snap));
  push(s, std::move(op));
  note("enqueueV3 ctx" + std::to_string(impl->id) + " batch=" + std::to_string(impl->batch));
  return true;
}

}  // namespace nvinfer1

extern "C" int32_t getInferLibVersion() noexcept {
  return static_cast<int32_t>(NV_TENSORRT_VERSION_INT(NV_TENSORRT_MAJOR, NV_TENSORRT_MINOR, NV_TENSORRT_PATCH));
}

struct CUevent_st {
  int id;
  int device;
  Stream* stream = nullptr;
  uint64_t ticket = 0;
};
struct CUgraph_st {
  std::vector<Snapshot> nodes;
};
struct CUgraphExec_st {
  int id;
  std::vector<Snapshot> nodes;
};

namespace {
cudaError_t last_error = cudaSuccess;
cudaError_t err(cudaError_t e) {
  if (e != cudaSuccess) last_error = e;
  return e;
}
}  // namespace

extern "C" {

cudaError_t cudaSetDevice(int device) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  calls["cudaSetDevice"]++;
  if (device < 0 || device >= kDevices) return err(cudaErrorInvalidDevice);
  current_device = device;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  *device = current_device;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, size_t size) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  if (fails("cudaMalloc")) return err(cudaErrorMemoryAllocation);
  char* p = static_cast<char*>(std::calloc(size ? size : 1, 1));
  keep.push_back(p);
  allocs[reinterpret_cast<uintptr_t>(p)] = {size, current_device, true};
  *ptr = p;
  note("cudaMalloc " + std::to_string(size));
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  calls["cudaFree"]++;
  if (!ptr) return cudaSuccess;
  auto it = allocs.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == allocs.end() || !it->second.live) {
    violation("cudaFree of a pointer that is not a live allocation");
    return err(cudaErrorInvalidValue);
  }
  {
    bool in_use = false;
    for (const auto& s : streams)
      for (const auto& op : s->pending) in_use = in_use || op_uses(op.second, it->first, it->second.size);
    if (in_use) violation("cudaFree of memory that enqueued work still uses");
  }
  it->second.live = false;
  std::memset(ptr, 0xFF, it->second.size);  // poison: reads as NaN
  note("cudaFree " + std::to_string(it->second.size));
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  if (fails("cudaMemcpyAsync")) return err(cudaErrorInvalidValue);
  Stream* s = resolve(stream);
  if (s->destroyed) return err(cudaErrorInvalidResourceHandle);
  Op op;
  op.kind = Op::kMemcpy;
  op.dst = dst;
  op.src = src;
  op.bytes = count;
  op.mkind = kind;
  if (s->capturing) {
    violation("cudaMemcpyAsync during capture (not modelled)");
    return err(cudaErrorStreamCaptureUnsupported);
  }
  push(s, std::move(op));
  note("cudaMemcpyAsync " + std::to_string(count) + " kind=" + std::to_string(static_cast<int>(kind)) + " stream" + std::to_string(s->id));
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  if (fails("cudaStreamCreateWithFlags")) return err(cudaErrorUnknown);
  Stream* s = new_stream(current_device);
  *stream = reinterpret_cast<cudaStream_t>(s);
  note("cudaStreamCreate stream" + std::to_string(s->id));
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  calls["cudaStreamDestroy"]++;
  Stream* s = resolve(stream);
  if (s->destroyed) return err(cudaErrorInvalidResourceHandle);
  if (s->device != current_device) violation("cudaStreamDestroy of a stream of another device than the current one");
  s->destroyed = true;  // CUDA lets pending work finish after this; the work stays pending here
  note("cudaStreamDestroy stream" + std::to_string(s->id) + " pending=" + std::to_string(s->pending.size()));
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  if (fails("cudaStreamSynchronize")) return err(cudaErrorUnknown);
  Stream* s = resolve(stream);
  if (s->destroyed) return err(cudaErrorInvalidResourceHandle);
  if (s->device != current_device) violation("cudaStreamSynchronize of a stream of another device than the current one");
  if (s->capturing) {
    s->capture_invalid = true;
    return err(cudaErrorStreamCaptureUnsupported);
  }
  drain(s, std::numeric_limits<uint64_t>::max());
  note("cudaStreamSynchronize stream" + std::to_string(s->id));
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  if (fails("cudaEventCreateWithFlags")) return err(cudaErrorUnknown);
  *event = new CUevent_st{next_id++, current_device};
  ++live_events;
  note("cudaEventCreate event" + std::to_string((*event)->id));
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  calls["cudaEventDestroy"]++;
  note("cudaEventDestroy event" + std::to_string(event->id));
  delete event;
  --live_events;
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  if (fails("cudaEventRecord")) return err(cudaErrorUnknown);
  Stream* s = resolve(stream);
  if (s->device != event->device) return err(cudaErrorInvalidResourceHandle);
  event->stream = s;
  event->ticket = s->next_ticket - 1;
  note("cudaEventRecord event" + std::to_string(event->id) + " stream" + std::to_string(s->id));
  return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  if (fails("cudaStreamWaitEvent")) return err(cudaErrorUnknown);
  Stream* s = resolve(stream);
  if (event->stream && event->stream != s) {
    Op op;
    op.kind = Op::kWait;
    op.wait_on = event->stream;
    op.wait_ticket = event->ticket;
    push(s, std::move(op));
  }
  note("cudaStreamWaitEvent stream" + std::to_string(s->id) + " event" + std::to_string(event->id));
  return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  if (fails("cudaStreamBeginCapture")) return err(cudaErrorStreamCaptureUnsupported);
  Stream* s = resolve(stream);
  if (s->capturing) return err(cudaErrorIllegalState);
  s->capturing = true;
  s->capture_invalid = false;
  s->nodes.clear();
  note("cudaStreamBeginCapture stream" + std::to_string(s->id));
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  calls["cudaStreamEndCapture"]++;
  Stream* s = resolve(stream);
  *graph = nullptr;
  if (!s->capturing) return err(cudaErrorIllegalState);
  s->capturing = false;
  note("cudaStreamEndCapture stream" + std::to_string(s->id));
  if (s->capture_invalid) return err(cudaErrorStreamCaptureInvalidated);
  *graph = new CUgraph_st{std::move(s->nodes)};
  s->nodes.clear();
  ++live_graphs;
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  if (fails("cudaGraphInstantiate")) return err(cudaErrorUnknown);
  *exec = new CUgraphExec_st{next_id++, graph->nodes};
  ++live_execs;
  note("cudaGraphInstantiate exec" + std::to_string((*exec)->id));
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  delete graph;
  --live_graphs;
  return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  note("cudaGraphExecDestroy exec" + std::to_string(exec->id));
  delete exec;
  --live_execs;
  return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  if (fails("cudaGraphLaunch")) return err(cudaErrorUnknown);
  Stream* s = resolve(stream);
  if (s->device != current_device) return err(cudaErrorInvalidResourceHandle);
  Op op;
  op.kind = Op::kKernels;
  for (Snapshot snap : exec->nodes) {
    auto it = contexts_by_id.find(snap.ctx_id);
    if (it != contexts_by_id.end()) {
      const nvinfer1::FakeContext* now = it->second->impl;
      if (now->batch != snap.batch || now->addr != snap.addr) {
        violation("graph of context " + std::to_string(snap.ctx_id) + " (batch " + std::to_string(snap.batch) +
                  ") replayed while the context holds batch " + std::to_string(now->batch) +
                  (now->addr != snap.addr ? " and other tensor addresses" : ""));
        snap.poisoned = true;
      }
    }
    op.kernels.push_back(std::move(snap));
  }
  push(s, std::move(op));
  note("cudaGraphLaunch exec" + std::to_string(exec->id) + " stream" + std::to_string(s->id));
  return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  const cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorIllegalState: return "illegal state";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    default: return "unknown error";
  }
}

// --- control API for the tests (ctypes) ------------------------------------------------------
void fake_reset() {
  std::lock_guard<std::recursive_mutex> lock(mu);
  for (char* p : keep) std::free(p);
  keep.clear();
  allocs.clear();
  streams.clear();
  default_stream[0] = default_stream[1] = nullptr;
  calls_log.clear();
  violations.clear();
  calls.clear();
  fail_at.clear();
  live_contexts_ids.clear();
  contexts_by_id.clear();
  executions = 0;
  live_runtimes = live_engines = live_contexts = live_events = live_graphs = live_execs = 0;
  last_error = cudaSuccess;
}

void fake_fail(const char* name, int nth) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  fail_at[name] = calls[name] + nth;
}

const char* fake_log() {
  std::lock_guard<std::recursive_mutex> lock(mu);
  report_buffer.clear();
  for (const auto& s : calls_log) report_buffer += s + "\n";
  return report_buffer.c_str();
}

const char* fake_violations() {
  std::lock_guard<std::recursive_mutex> lock(mu);
  report_buffer.clear();
  for (const auto& s : violations) report_buffer += s + "\n";
  return report_buffer.c_str();
}

const char* fake_live() {
  std::lock_guard<std::recursive_mutex> lock(mu);
  int live_allocs = 0, live_streams = 0;
  size_t pending = 0;
  for (const auto& kv : allocs) live_allocs += kv.second.live;
  for (const auto& s : streams) {
    live_streams += !s->destroyed && s.get() != default_stream[0] && s.get() != default_stream[1];
    pending += s->pending.size();
  }
  std::ostringstream o;
  o << "allocs=" << live_allocs << " streams=" << live_streams << " events=" << live_events << " graphs=" << live_graphs
    << " execs=" << live_execs << " runtimes=" << live_runtimes << " engines=" << live_engines << " contexts=" << live_contexts
    << " pending=" << pending;
  report_buffer = o.str();
  return report_buffer.c_str();
}

int fake_executions() {
  std::lock_guard<std::recursive_mutex> lock(mu);
  return executions;
}

int fake_calls(const char* name) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  return calls[name];
}

// A caller's device memory and stream (what torch would own), on `device`.
uintptr_t fake_user_malloc(size_t bytes, int device) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  const int saved = current_device;
  current_device = device;
  void* p = nullptr;
  cudaMalloc(&p, bytes);
  current_device = saved;
  return reinterpret_cast<uintptr_t>(p);
}

void fake_user_free(uintptr_t p) { cudaFree(reinterpret_cast<void*>(p)); }

uintptr_t fake_user_stream(int device) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  return reinterpret_cast<uintptr_t>(new_stream(device));
}

int fake_user_sync(uintptr_t stream, int device) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  const int saved = current_device;
  current_device = device;
  const int rc = cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(stream));
  current_device = saved;
  return rc;
}

}  // extern "C"
