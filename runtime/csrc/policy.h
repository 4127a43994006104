// The budget policy of Runtime.select(): pick the mode that meets accuracy/latency budgets and is
// best by a preference. Same algorithm as oat_edge/runtime/policy.py (tests compare both):
//  - a candidate is feasible when ra >= min_ra, sa >= min_sa, latency <= max_latency (a NaN budget
//    is "no budget"; a NaN value under a budget is infeasible: unknown is not good enough);
//  - feasible candidates are ranked lexicographically (NaN values rank last):
//      robust   (-ra, -sa, latency, -width, lam)
//      accurate (-sa, -ra, latency, -width, lam)
//      fast     (latency, -ra, -sa, -width, lam)
//  - with none feasible, the candidates are ranked by their total shortfall
//      max(0, min_ra - ra) + max(0, min_sa - sa) + max(0, latency - max_latency) / max_latency
//    (then by the preference key) so the error can name the closest ones.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

namespace oatedge {

enum Prefer : int { kRobust = 0, kAccurate = 1, kFast = 2 };

constexpr double kAccTol = 1e-9;

struct Candidates {
  const double* lam;
  const double* width;
  const double* sa;
  const double* ra;
  const double* latency;
  int64_t n;
};

inline double worst_if_nan(double v) { return std::isnan(v) ? std::numeric_limits<double>::infinity() : v; }

inline std::array<double, 5> rank_key(const Candidates& c, int64_t i, int prefer) {
  const double ra = worst_if_nan(-c.ra[i]), sa = worst_if_nan(-c.sa[i]), lat = worst_if_nan(c.latency[i]);
  const double w = -c.width[i], l = c.lam[i];
  switch (prefer) {
    case kAccurate: return {sa, ra, lat, w, l};
    case kFast: return {lat, ra, sa, w, l};
    default: return {ra, sa, lat, w, l};
  }
}

inline bool feasible(const Candidates& c, int64_t i, double min_ra, double min_sa, double max_lat) {
  if (!std::isnan(min_ra) && !(c.ra[i] >= min_ra - kAccTol)) return false;
  if (!std::isnan(min_sa) && !(c.sa[i] >= min_sa - kAccTol)) return false;
  if (!std::isnan(max_lat) && !(c.latency[i] <= max_lat)) return false;
  return true;
}

inline double shortfall(const Candidates& c, int64_t i, double min_ra, double min_sa, double max_lat) {
  const double inf = std::numeric_limits<double>::infinity();
  double s = 0.0;
  if (!std::isnan(min_ra)) s += std::isnan(c.ra[i]) ? inf : std::max(0.0, min_ra - c.ra[i]);
  if (!std::isnan(min_sa)) s += std::isnan(c.sa[i]) ? inf : std::max(0.0, min_sa - c.sa[i]);
  if (!std::isnan(max_lat))
    s += std::isnan(c.latency[i]) ? inf : std::max(0.0, c.latency[i] - max_lat) / std::max(max_lat, 1e-12);
  return s;
}

// Returns the index of the chosen candidate, or -1 with `closest` filled (best first, at most
// n_closest) when no candidate is feasible.
inline int64_t select_mode(const Candidates& c, double min_ra, double min_sa, double max_lat, int prefer,
                           int n_closest, std::vector<int64_t>* closest) {
  int64_t best = -1;
  std::array<double, 5> best_key{};
  for (int64_t i = 0; i < c.n; ++i) {
    if (!feasible(c, i, min_ra, min_sa, max_lat)) continue;
    const auto key = rank_key(c, i, prefer);
    if (best < 0 || key < best_key) {
      best = i;
      best_key = key;
    }
  }
  if (best >= 0 || closest == nullptr) return best;
  std::vector<int64_t> order(static_cast<size_t>(c.n));
  std::iota(order.begin(), order.end(), int64_t(0));
  std::vector<double> miss(static_cast<size_t>(c.n));
  for (int64_t i = 0; i < c.n; ++i) miss[i] = shortfall(c, i, min_ra, min_sa, max_lat);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    if (miss[a] != miss[b]) return miss[a] < miss[b];
    return rank_key(c, a, prefer) < rank_key(c, b, prefer);
  });
  order.resize(std::min<size_t>(order.size(), static_cast<size_t>(std::max(n_closest, 0))));
  *closest = std::move(order);
  return -1;
}

}  // namespace oatedge
