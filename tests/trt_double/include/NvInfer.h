// TEST DOUBLE -- NOT TensorRT. A stand-in for NVIDIA TensorRT's runtime API, declaring exactly
// the classes and calls the oat-edge TensorRT executor (runtime/csrc/trt_executor.cpp) uses, so
// that the real executor can be compiled and run on a machine where TensorRT cannot be installed.
// Its behaviour (tests/trt_double/fake_trt_cuda.cpp) is a small recorded model written for the
// tests: "engines" are text specs, "inference" is a fixed formula. Passing tests against it do
// not mean that TensorRT ran. Names and signatures follow the public TensorRT 10/11 headers.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#ifndef NV_TENSORRT_MAJOR
#define NV_TENSORRT_MAJOR 10
#define NV_TENSORRT_MINOR 3
#define NV_TENSORRT_PATCH 0
#endif
#define NV_TENSORRT_VERSION_INT(major, minor, patch) ((major) * 10000L + (minor) * 100L + (patch) * 1L)

extern "C" int32_t getInferLibVersion() noexcept;

namespace nvinfer1 {

class Dims64 {
 public:
  static constexpr int32_t MAX_DIMS{8};
  int32_t nbDims;
  int64_t d[MAX_DIMS];
};
using Dims = Dims64;

enum class DataType : int32_t { kFLOAT = 0, kHALF = 1, kINT8 = 2, kINT32 = 3 };
enum class TensorIOMode : int32_t { kNONE = 0, kINPUT = 1, kOUTPUT = 2 };
enum class OptProfileSelector : int32_t { kMIN = 0, kOPT = 1, kMAX = 2 };
enum class ExecutionContextAllocationStrategy : int32_t { kSTATIC = 0, kON_PROFILE_CHANGE = 1, kUSER_MANAGED = 2 };

class ILogger {
 public:
  enum class Severity : int32_t { kINTERNAL_ERROR = 0, kERROR = 1, kWARNING = 2, kINFO = 3, kVERBOSE = 4 };
  virtual void log(Severity severity, const char* msg) noexcept = 0;
  virtual ~ILogger() = default;
};

struct FakeContext;
struct FakeEngine;
struct FakeRuntime;

class IExecutionContext {
 public:
  ~IExecutionContext() noexcept;
  bool setInputShape(const char* tensorName, const Dims& dims) noexcept;
  bool setTensorAddress(const char* tensorName, void* data) noexcept;
  void setDeviceMemoryV2(void* memory, int64_t size) noexcept;
  void setDeviceMemory(void* memory) noexcept;
  bool enqueueV3(cudaStream_t stream) noexcept;
  FakeContext* impl;
};

class ICudaEngine {
 public:
  ~ICudaEngine() noexcept;
  int32_t getNbIOTensors() const noexcept;
  const char* getIOTensorName(int32_t index) const noexcept;
  TensorIOMode getTensorIOMode(const char* tensorName) const noexcept;
  DataType getTensorDataType(const char* tensorName) const noexcept;
  Dims getTensorShape(const char* tensorName) const noexcept;
  int32_t getNbOptimizationProfiles() const noexcept;
  Dims getProfileShape(const char* tensorName, int32_t profileIndex, OptProfileSelector select) const noexcept;
  IExecutionContext* createExecutionContext(ExecutionContextAllocationStrategy strategy) noexcept;
  int64_t getDeviceMemorySizeV2() const noexcept;
  size_t getDeviceMemorySize() const noexcept;
  FakeEngine* impl;
};

class IRuntime {
 public:
  ~IRuntime() noexcept;
  ICudaEngine* deserializeCudaEngine(const void* blob, size_t size) noexcept;
  FakeRuntime* impl;
};

IRuntime* createInferRuntime(ILogger& logger) noexcept;

}  // namespace nvinfer1
