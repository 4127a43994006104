// TEST DOUBLE harness: a C API over the REAL executor (runtime/csrc/trt_executor.cpp, included
// below unchanged and compiled without its Python binding) so that tests can drive it with
// ctypes. TensorRT and CUDA are the stand-ins in fake_trt_cuda.cpp; see the note there.
#include "trt_executor.cpp"

#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

// 0: ok, 1: std::invalid_argument (bad input / engine mismatch), 2: std::runtime_error
// (TensorRT/CUDA failure), 3: anything else.
int report(char* err, size_t errlen, int kind, const char* what) {
  if (err && errlen) {
    std::strncpy(err, what, errlen - 1);
    err[errlen - 1] = '\0';
  }
  return kind;
}

template <class F>
int guarded(char* err, size_t errlen, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::invalid_argument& e) {
    return report(err, errlen, 1, e.what());
  } catch (const std::runtime_error& e) {
    return report(err, errlen, 2, e.what());
  } catch (const std::exception& e) {
    return report(err, errlen, 3, e.what());
  }
}

}  // namespace

extern "C" {

void* oat_exec_create(int n, const char* const* blobs, const size_t* sizes, const char* images, const char* film,
                      const char* logits, const int64_t* chw, int64_t classes, int64_t max_batch, const int64_t* film_sizes,
                      int device, char* err, size_t errlen, int* kind) {
  oatedge::TrtExecutor* ex = nullptr;
  *kind = guarded(err, errlen, [&] {
    std::vector<oatedge::EngineBlob> engines;
    for (int i = 0; i < n; ++i) engines.push_back({blobs[i], sizes[i]});
    ex = new oatedge::TrtExecutor(engines, images, film, logits, std::vector<int64_t>(chw, chw + 3), classes, max_batch,
                                  std::vector<int64_t>(film_sizes, film_sizes + n), device);
  });
  return ex;
}

int oat_exec_infer_host(void* ex, int path, const float* images, int64_t batch, const float* film, int64_t film_size, float* out,
                        char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    static_cast<oatedge::TrtExecutor*>(ex)->infer_host(path, images, batch, film, film_size, out);
  });
}

int oat_exec_infer_device(void* ex, int path, uintptr_t images, int64_t batch, uintptr_t film, uintptr_t out, uintptr_t stream,
                          char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    static_cast<oatedge::TrtExecutor*>(ex)->infer_device(path, images, batch, film, out, stream);
  });
}

int64_t oat_exec_scratch_bytes(void* ex) { return static_cast<oatedge::TrtExecutor*>(ex)->scratch_bytes(); }

void oat_exec_destroy(void* ex) { delete static_cast<oatedge::TrtExecutor*>(ex); }

}  // extern "C"
