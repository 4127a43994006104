// oat_edge.runtime._ext: the runtime's hot-path pieces in C++ (nanobind).
//   FilmComputer  exact FiLM vectors for off-grid λ (film.h)
//   ModeRegister  lock-free mode publish/pin for set_mode vs infer (mode_register.h)
//   select_mode   the budget policy (policy.h)
//   in_unit_range one-pass finite-and-in-[0, 1] check of float32 images
//   TrtExecutor   TensorRT engines with shared scratch memory and CUDA graphs (trt_executor.cpp,
//                 only when built with TensorRT; has_tensorrt says which)
// oat_edge/runtime/_fallback.py implements the same API in Python; tests compare the two.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/vector.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "film.h"
#include "mode_register.h"
#include "policy.h"

namespace nb = nanobind;
using namespace nb::literals;

void register_tensorrt(nb::module_& m);  // trt_executor.cpp

namespace {

using VecD = nb::ndarray<const double, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using VecF = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using MatF = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using MatI = nb::ndarray<const int64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using OutF = nb::ndarray<float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using RingF = nb::ndarray<float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using AnyF = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;

// Owns the FilmComputer and keeps the numpy arrays it points into alive.
class PyFilm {
 public:
  PyFilm(VecD train_lambdas, MatF code_rows, double slope, bool slerp)
      : computer_(std::vector<double>(train_lambdas.data(), train_lambdas.data() + train_lambdas.shape(0)),
                  code_rows.data(), static_cast<int64_t>(code_rows.shape(1)), slope, slerp),
        code_dim_(static_cast<int64_t>(code_rows.shape(1))) {
    if (code_rows.shape(0) != train_lambdas.shape(0))
      throw std::invalid_argument("film: code_rows must have one row per training λ");
  }

  int add_width(MatI sites, std::vector<MatF> fc1_w, std::vector<VecF> fc1_b, std::vector<MatF> fc2_w,
                std::vector<VecF> fc2_b, int64_t film_size) {
    const size_t n = sites.shape(0);
    if (sites.shape(1) != 2 || fc1_w.size() != n || fc1_b.size() != n || fc2_w.size() != n || fc2_b.size() != n)
      throw std::invalid_argument("film: one (offset, channels) row and four generator arrays per site");
    if (film_size < 0) throw std::invalid_argument("film: the FiLM size of a width must not be negative");
    std::vector<oatedge::FilmSite> out(n);
    for (size_t k = 0; k < n; ++k) {
      // bounds first: then 2·channels cannot overflow
      if (!oatedge::FilmComputer::site_fits(sites(k, 0), sites(k, 1), film_size))
        throw std::invalid_argument("film: a site lies outside the flat vector of its width");
      const int64_t c2 = 2 * sites(k, 1);
      if (static_cast<int64_t>(fc1_w[k].shape(0)) != c2 || static_cast<int64_t>(fc1_w[k].shape(1)) != code_dim_ ||
          static_cast<int64_t>(fc1_b[k].shape(0)) != c2 || static_cast<int64_t>(fc2_w[k].shape(0)) != c2 ||
          static_cast<int64_t>(fc2_w[k].shape(1)) != c2 || static_cast<int64_t>(fc2_b[k].shape(0)) != c2)
        throw std::invalid_argument("film: generator shapes of site " + std::to_string(k) + " do not match its channels");
      out[k] = {sites(k, 0), sites(k, 1), fc1_w[k].data(), fc1_b[k].data(), fc2_w[k].data(), fc2_b[k].data()};
    }
    for (auto& a : fc1_w) keep_w_.push_back(a);
    for (auto& a : fc2_w) keep_w_.push_back(a);
    for (auto& a : fc1_b) keep_b_.push_back(a);
    for (auto& a : fc2_b) keep_b_.push_back(a);
    return computer_.add_width(std::move(out), film_size);
  }

  void compute(double lam, int width_idx, OutF out) {
    check_width(width_idx);
    if (static_cast<int64_t>(out.shape(0)) < computer_.film_size(width_idx))
      throw std::invalid_argument("film: output buffer is smaller than the width's FiLM vector");
    float* dst = out.data();
    nb::gil_scoped_release release;
    computer_.compute(lam, width_idx, dst);
  }

  void encode(double lam, OutF out) {
    if (static_cast<int64_t>(out.shape(0)) < code_dim_) throw std::invalid_argument("film: code buffer too small");
    computer_.encode(lam, out.data());
  }

  int64_t film_size(int width_idx) {
    check_width(width_idx);
    return computer_.film_size(width_idx);
  }
  int num_widths() const { return computer_.num_widths(); }
  oatedge::FilmComputer* get() { return &computer_; }

 private:
  void check_width(int w) const {
    if (w < 0 || w >= computer_.num_widths()) throw std::out_of_range("film: width index out of range");
  }
  oatedge::FilmComputer computer_;
  int64_t code_dim_;
  std::vector<MatF> keep_w_;
  std::vector<VecF> keep_b_;
};

class PyRegister {
 public:
  PyRegister(int n_slots, RingF ring, int ring_base, int n_widths, nb::object film)
      : ring_(ring), film_obj_(film),
        reg_(n_slots, ring.data(), static_cast<int64_t>(ring.shape(1)), ring_base, n_widths,
             film.is_none() ? nullptr : nb::cast<PyFilm*>(film)->get()) {
    if (static_cast<int>(ring.shape(0)) != n_slots) throw std::invalid_argument("mode register: ring must have n_slots rows");
  }

  // Writers may wait for the writer lock (or, rarely, for a free slot): they release the GIL
  // before waiting so inference threads keep running and release their pins.
  // The common case (lock free, a slot free) completes with the GIL held: see try_publish.
  uint64_t publish(double lam, int width_idx, int path_idx, int film_id) {
    if (const uint64_t gen = reg_.try_publish(lam, width_idx, path_idx, film_id)) return gen;
    nb::gil_scoped_release release;
    return reg_.publish(lam, width_idx, path_idx, film_id);
  }
  uint64_t publish_computed(double lam, int width_idx, int path_idx) {
    nb::gil_scoped_release release;
    return reg_.publish_computed(lam, width_idx, path_idx);
  }

  uint64_t reserve() {
    if (const uint64_t ticket = reg_.try_reserve()) return ticket;
    nb::gil_scoped_release release;  // a writer (the off-grid worker) may wait on readers' pins
    return reg_.reserve();
  }
  uint64_t publish_vector(uint64_t ticket, double lam, int width_idx, int path_idx, VecF film) {
    const float* src = film.data();
    const int64_t n = static_cast<int64_t>(film.shape(0));
    nb::gil_scoped_release release;
    return reg_.publish_vector(ticket, lam, width_idx, path_idx, src, n);
  }

  nb::tuple acquire() {
    int slot = -1;
    const oatedge::ModeRecord r = reg_.acquire(&slot);
    return nb::make_tuple(slot, r.generation, r.path_idx, r.film_id, r.lam, r.width_idx);
  }
  void release(int slot) { reg_.release(slot); }
  nb::tuple current() {
    const oatedge::ModeRecord r = reg_.current();
    return nb::make_tuple(r.generation, r.path_idx, r.film_id, r.lam, r.width_idx);
  }
  int pins(int slot) {
    if (slot < 0 || slot >= reg_.n_slots()) throw std::out_of_range("mode register: bad slot");
    return reg_.pins(slot);
  }
  int n_slots() const { return reg_.n_slots(); }
  uint64_t generation() const { return reg_.generation(); }

 private:
  RingF ring_;          // keeps the ring buffers alive
  nb::object film_obj_;  // keeps the FilmComputer alive
  oatedge::ModeRegister reg_;
};

nb::tuple select_mode(VecD lam, VecD width, VecD sa, VecD ra, VecD latency, double min_ra, double min_sa,
                      double max_latency, int prefer, int n_closest) {
  const size_t n = lam.shape(0);
  if (width.shape(0) != n || sa.shape(0) != n || ra.shape(0) != n || latency.shape(0) != n)
    throw std::invalid_argument("select_mode: all candidate arrays must have the same length");
  if (prefer < 0 || prefer > 2) throw std::invalid_argument("select_mode: prefer must be 0, 1 or 2");
  const oatedge::Candidates c{lam.data(), width.data(), sa.data(), ra.data(), latency.data(), static_cast<int64_t>(n)};
  std::vector<int64_t> closest;
  const int64_t chosen = oatedge::select_mode(c, min_ra, min_sa, max_latency, prefer, n_closest, &closest);
  nb::list out;
  for (int64_t i : closest) out.append(i);
  return nb::make_tuple(chosen, out);
}

// True when every value is finite and in [0, 1]. One branch-free pass (NaN fails both
// comparisons), so the compiler vectorises it; the caller diagnoses the rare failures.
bool in_unit_range(AnyF images) {
  const float* p = images.data();
  const size_t n = images.size();
  auto scan = [p, n]() {
    bool ok = true;
    for (size_t i = 0; i < n; ++i) ok &= (p[i] >= 0.0f) & (p[i] <= 1.0f);
    return ok;
  };
  if (n < (size_t(1) << 16)) return scan();
  nb::gil_scoped_release release;  // large batches: let other threads run meanwhile
  return scan();
}

}  // namespace

NB_MODULE(_ext, m) {
  m.doc() = "oat-edge runtime extension: mode register, FiLM computation, budget policy, TensorRT executor";

  nb::class_<PyFilm>(m, "FilmComputer")
      .def(nb::init<VecD, MatF, double, bool>(), "train_lambdas"_a, "code_rows"_a, "slope"_a, "slerp"_a = false)
      .def("add_width", &PyFilm::add_width, "sites"_a, "fc1_weight"_a, "fc1_bias"_a, "fc2_weight"_a, "fc2_bias"_a,
           "film_size"_a)
      .def("compute", &PyFilm::compute, "lam"_a, "width_idx"_a, "out"_a.noconvert())
      .def("encode", &PyFilm::encode, "lam"_a, "out"_a.noconvert())
      .def("film_size", &PyFilm::film_size, "width_idx"_a)
      .def_prop_ro("num_widths", &PyFilm::num_widths);

  nb::class_<PyRegister>(m, "ModeRegister")
      .def(nb::init<int, RingF, int, int, nb::object>(), "n_slots"_a, "ring"_a.noconvert(), "ring_base"_a,
           "n_widths"_a, "film"_a.none())
      .def("publish", &PyRegister::publish, "lam"_a, "width_idx"_a, "path_idx"_a, "film_id"_a)
      .def("publish_computed", &PyRegister::publish_computed, "lam"_a, "width_idx"_a, "path_idx"_a)
      .def("reserve", &PyRegister::reserve)
      .def("publish_vector", &PyRegister::publish_vector, "ticket"_a, "lam"_a, "width_idx"_a, "path_idx"_a,
           "film"_a.noconvert())
      .def("acquire", &PyRegister::acquire)
      .def("release", &PyRegister::release, "slot"_a)
      .def("current", &PyRegister::current)
      .def("pins", &PyRegister::pins, "slot"_a)
      .def_prop_ro("n_slots", &PyRegister::n_slots)
      .def_prop_ro("generation", &PyRegister::generation);

  m.def("select_mode", &select_mode, "lam"_a, "width"_a, "sa"_a, "ra"_a, "latency"_a, "min_ra"_a, "min_sa"_a,
        "max_latency"_a, "prefer"_a, "n_closest"_a = 3);
  m.def("in_unit_range", &in_unit_range, "images"_a.noconvert());

  register_tensorrt(m);
}
