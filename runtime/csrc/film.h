// Exact FiLM vectors for λ values that are not on the bundle's grid (docs/bundle.md):
//   code = (1 - t)·code_rows[lo] + t·code_rows[hi]   (float64, rounded to float32 like
//          oat_edge.lambda_code.encode_lambdas)
//   or, for "ro-slerp" bundles, the spherical blend
//   code = sin((1 - t)Ω)/sin Ω·code_rows[lo] + sin(tΩ)/sin Ω·code_rows[hi], Ω the rows' angle
//   per site k: z = leaky(W1·code + b1); o = leaky(W2·z + b2); film[off_k : off_k + 2C_k] = o
// The weights stay in the numpy arrays loaded from film.npz (no copy); the products accumulate in
// float64 into scratch buffers sized at construction, so compute() allocates nothing.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace oatedge {

struct FilmSite {
  int64_t offset = 0;    // position of γ_k in the flat vector
  int64_t channels = 0;  // C_k at this width; the site occupies 2·C_k entries
  const float* fc1_w = nullptr;  // [2C, d]
  const float* fc1_b = nullptr;  // [2C]
  const float* fc2_w = nullptr;  // [2C, 2C]
  const float* fc2_b = nullptr;  // [2C]
};

class FilmComputer {
 public:
  FilmComputer(std::vector<double> train_lambdas, const float* code_rows, int64_t code_dim, double slope,
               bool slerp = false)
      : lambdas_(std::move(train_lambdas)), code_dim_(code_dim), slope_(slope), slerp_(slerp) {
    if (lambdas_.empty()) throw std::invalid_argument("film: the training λ set is empty");
    if (!std::is_sorted(lambdas_.begin(), lambdas_.end()))
      throw std::invalid_argument("film: training λ values must be sorted");
    rows_.assign(code_rows, code_rows + lambdas_.size() * code_dim_);
    code_.resize(code_dim_);
    code32_.resize(code_dim_);
    // Angle of each segment between neighbouring rows (as oat_edge.lambda_code.slerp_angle).
    for (size_t i = 0; i + 1 < lambdas_.size(); ++i) angles_.push_back(angle(&rows_[i * code_dim_], &rows_[(i + 1) * code_dim_]));
  }

  // Register the sites of one width (in width order); returns the width's index.
  // Every bound is checked without forming offset + 2·channels, which can overflow int64.
  int add_width(std::vector<FilmSite> sites, int64_t film_size) {
    if (film_size < 0) throw std::invalid_argument("film: the FiLM size of a width must not be negative");
    int64_t widest = 0;
    for (const auto& s : sites) {
      if (!site_fits(s.offset, s.channels, film_size))
        throw std::invalid_argument("film: a site lies outside the flat vector of its width");
      widest = std::max(widest, 2 * s.channels);
    }
    if (static_cast<int64_t>(hidden_.size()) < widest) hidden_.resize(widest);
    widths_.push_back(std::move(sites));
    sizes_.push_back(film_size);
    return static_cast<int>(widths_.size()) - 1;
  }

  // True when [offset, offset + 2·channels) lies within [0, film_size), channels > 0 (film_size >= 0).
  static bool site_fits(int64_t offset, int64_t channels, int64_t film_size) {
    return offset >= 0 && offset <= film_size && channels > 0 && channels <= (film_size - offset) / 2;
  }

  int64_t film_size(int width_idx) const { return sizes_.at(width_idx); }
  int num_widths() const { return static_cast<int>(widths_.size()); }

  // The λ code, rounded to float32 exactly like encode_lambdas (float64 blend, then cast).
  void encode(double lam, float* out) const {
    const size_t last = lambdas_.size() - 1;
    size_t lo, hi;
    double t = 0.0;
    if (lam <= lambdas_.front()) {
      lo = hi = 0;
    } else if (lam >= lambdas_.back()) {
      lo = hi = last;
    } else {
      hi = static_cast<size_t>(std::lower_bound(lambdas_.begin(), lambdas_.end(), lam) - lambdas_.begin());
      if (lambdas_[hi] == lam) {
        lo = hi;
      } else {
        lo = hi - 1;
        t = (lam - lambdas_[lo]) / (lambdas_[hi] - lambdas_[lo]);
      }
    }
    double w_lo = 1.0 - t, w_hi = t;
    if (slerp_ && hi != lo && t != 0.0) {
      // as oat_edge.lambda_code.slerp_weights: linear where sin Ω ≈ 0 (no unique arc)
      const double omega = angles_[lo];
      const double s = std::sin(omega);
      if (s >= 1e-12) {
        w_lo = std::sin((1.0 - t) * omega) / s;
        w_hi = std::sin(t * omega) / s;
      }
    }
    const float* a = &rows_[lo * code_dim_];
    const float* b = &rows_[hi * code_dim_];
    for (int64_t j = 0; j < code_dim_; ++j) {
      const double x = w_lo * static_cast<double>(a[j]);
      const double y = w_hi * static_cast<double>(b[j]);
      out[j] = static_cast<float>(x + y);
    }
  }

  // Writes the flat FiLM vector of (lam, width) into out[0 : film_size(width)]. The scratch
  // buffers are shared, so calls are serialised (uncontended in practice: set_mode is rare).
  void compute(double lam, int width_idx, float* out) {
    std::lock_guard<std::mutex> lock(mu_);
    const auto& sites = widths_.at(width_idx);
    encode(lam, code_f32());
    for (int64_t j = 0; j < code_dim_; ++j) code_[j] = static_cast<double>(code_f32()[j]);
    for (const auto& s : sites) {
      const int64_t n = 2 * s.channels;
      for (int64_t i = 0; i < n; ++i)
        hidden_[i] = leaky(static_cast<double>(s.fc1_b[i]) + dot(s.fc1_w + i * code_dim_, code_.data(), code_dim_));
      float* o = out + s.offset;
      for (int64_t i = 0; i < n; ++i)
        o[i] = static_cast<float>(leaky(static_cast<double>(s.fc2_b[i]) + dot(s.fc2_w + i * n, hidden_.data(), n)));
    }
  }

 private:
  double leaky(double x) const { return x >= 0.0 ? x : slope_ * x; }

  double angle(const float* a, const float* b) const {
    double aa = 0.0, bb = 0.0, ab = 0.0;
    for (int64_t j = 0; j < code_dim_; ++j) {
      const double x = a[j], y = b[j];
      aa += x * x;
      bb += y * y;
      ab += x * y;
    }
    const double na = std::sqrt(aa), nb = std::sqrt(bb);
    if (na == 0.0 || nb == 0.0) return 0.0;
    return std::acos(std::max(-1.0, std::min(1.0, ab / (na * nb))));
  }

  // float32 weights · float64 vector, accumulated in float64 with four independent partial
  // sums (a fixed order, so results are deterministic; 4× shorter dependency chain).
  static double dot(const float* w, const double* v, int64_t n) {
    double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
      a0 += static_cast<double>(w[j]) * v[j];
      a1 += static_cast<double>(w[j + 1]) * v[j + 1];
      a2 += static_cast<double>(w[j + 2]) * v[j + 2];
      a3 += static_cast<double>(w[j + 3]) * v[j + 3];
    }
    for (; j < n; ++j) a0 += static_cast<double>(w[j]) * v[j];
    return (a0 + a1) + (a2 + a3);
  }
  float* code_f32() { return code32_.data(); }

  std::vector<double> lambdas_;
  std::vector<float> rows_;  // [T, d] copy: tiny, and keeps encode() independent of numpy
  int64_t code_dim_;
  double slope_;
  bool slerp_;
  std::vector<double> angles_;  // per segment [i, i+1], used when slerp_
  std::vector<std::vector<FilmSite>> widths_;
  std::vector<int64_t> sizes_;
  std::vector<double> code_;    // scratch: code in float64
  std::vector<float> code32_;   // scratch: code rounded to float32
  std::vector<double> hidden_;  // scratch: first-layer activations of the widest site
  std::mutex mu_;
};

}  // namespace oatedge
