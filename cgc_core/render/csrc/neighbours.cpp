// The spatial regulariser's neighbour search on the CPU: for each query, its k nearest and l
// farthest points by Euclidean distance, without an M x N distance matrix and without visiting
// most points. Semantics of cgc_core.losses.sample_neighbours' torch path, which the tests hold
// this to: nearest ascending, farthest descending, ties by the lower index first, the query's own
// row (`self_index`, -1 for none) never among the farthest and among the nearest only when
// `near_includes_self` (then with distance 0).
//
// Two exact prunings (a point is skipped only when no distance it could have would enter the list):
// - nearest: the points sorted by x; from the query's place in that order, walk outwards on both
//   sides and stop a side once dx² alone exceeds the k-th best squared distance (the float sum
//   dx² + dy² + dz² of non-negative terms is never below its first term, so the bound is exact);
// - farthest: the points sorted by their distance r_p to the centroid, largest first; by the
//   triangle inequality |q - p| <= r_q + r_p, so the walk stops once (r_q + r_p)², widened by a
//   margin far above float rounding, is below the l-th best squared distance.
#include "kernels.h"

#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace {

struct Candidate {
  float key;  // squared distance
  int64_t index;
};

// Keeps the `size` best candidates seen so far, best first. `nearer` selects ascending keys
// (nearest) or descending (farthest); equal keys are ordered by the lower index in both.
class BestList {
 public:
  BestList(int64_t size, bool nearer) : size_(size), nearer_(nearer) { items_.reserve(size + 1); }
  void clear() { items_.clear(); }
  bool full() const { return static_cast<int64_t>(items_.size()) == size_; }
  // The key a new candidate must reach (or tie with a lower index) to enter a full list.
  float worst() const { return items_.back().key; }
  void offer(float key, int64_t index) {
    if (full() && !better(key, index, items_.back())) return;
    auto it = items_.begin();
    while (it != items_.end() && !better(key, index, *it)) ++it;
    items_.insert(it, {key, index});
    if (static_cast<int64_t>(items_.size()) > size_) items_.pop_back();
  }
  int64_t index(int64_t j) const { return items_[j].index; }

 private:
  bool better(float key, int64_t index, const Candidate& other) const {
    if (key != other.key) return nearer_ ? key < other.key : key > other.key;
    return index < other.index;
  }
  int64_t size_;
  bool nearer_;
  std::vector<Candidate> items_;
};

inline float squared_distance(const float* p, float x, float y, float z) {
  const float dx = p[0] - x, dy = p[1] - y, dz = p[2] - z;
  return dx * dx + dy * dy + dz * dz;
}

}  // namespace

std::vector<at::Tensor> near_far(at::Tensor queries, at::Tensor points, at::Tensor self_index,
                                 int64_t k, int64_t l, bool near_includes_self) {
  TORCH_CHECK(queries.dim() == 2 && queries.size(1) == 3 && points.dim() == 2 && points.size(1) == 3,
              "near_far: queries [M, 3] and points [N, 3]");
  TORCH_CHECK(points.size(0) > k && points.size(0) > l, "near_far: fewer points than neighbours asked for");
  auto q = queries.to(at::kFloat).contiguous();
  auto p = points.to(at::kFloat).contiguous();
  auto self = self_index.to(at::kLong).contiguous();
  const int64_t m = q.size(0), n = p.size(0);
  auto near = at::empty({m, k}, at::kLong);
  auto far = at::empty({m, l}, at::kLong);
  const float* qp = q.data_ptr<float>();
  const float* pp = p.data_ptr<float>();
  const int64_t* sp = self.data_ptr<int64_t>();
  int64_t* np_ = near.data_ptr<int64_t>();
  int64_t* fp = far.data_ptr<int64_t>();

  // The points in x order (for the nearest) and by distance to the centroid, largest first (for
  // the farthest); both orders are shared by every query.
  std::vector<int64_t> by_x(n), by_reach(n);
  std::iota(by_x.begin(), by_x.end(), 0);
  std::sort(by_x.begin(), by_x.end(), [&](int64_t a, int64_t b) { return pp[3 * a] < pp[3 * b]; });
  std::vector<float> xs(n);
  for (int64_t i = 0; i < n; ++i) xs[i] = pp[3 * by_x[i]];
  double centroid[3] = {0, 0, 0};
  for (int64_t i = 0; i < n; ++i)
    for (int d = 0; d < 3; ++d) centroid[d] += pp[3 * i + d];
  for (int d = 0; d < 3; ++d) centroid[d] /= static_cast<double>(n);
  auto reach_of = [&](const float* v) {
    double s = 0;
    for (int d = 0; d < 3; ++d) s += (v[d] - centroid[d]) * (v[d] - centroid[d]);
    return std::sqrt(s);
  };
  std::vector<double> reach(n);
  for (int64_t i = 0; i < n; ++i) reach[i] = reach_of(pp + 3 * i);
  std::iota(by_reach.begin(), by_reach.end(), 0);
  std::sort(by_reach.begin(), by_reach.end(), [&](int64_t a, int64_t b) { return reach[a] > reach[b]; });

  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    BestList nearest(k, true), farthest(l, false);
    for (int64_t s = begin; s < end; ++s) {
      nearest.clear();
      farthest.clear();
      const float x = qp[3 * s], y = qp[3 * s + 1], z = qp[3 * s + 2];
      const int64_t own = sp[s];
      if (own >= 0 && near_includes_self) nearest.offer(0.0f, own);

      // Nearest: outwards from the query's place in x order, each side until dx² alone is too far.
      const int64_t start = std::lower_bound(xs.begin(), xs.end(), x) - xs.begin();
      auto visit_near = [&](int64_t j) {
        const int64_t i = by_x[j];
        if (i != own) nearest.offer(squared_distance(pp + 3 * i, x, y, z), i);
      };
      int64_t left = start - 1, right = start;
      while (left >= 0 || right < n) {  // a side that is too far is closed by moving it past its end
        const float bound = nearest.full() ? nearest.worst() : INFINITY;
        if (right < n) {
          const float dx = xs[right] - x;
          if (dx * dx <= bound) { visit_near(right++); } else { right = n; }
        }
        if (left >= 0) {
          const float dx = xs[left] - x;
          if (dx * dx <= bound) { visit_near(left--); } else { left = -1; }
        }
      }

      // Farthest: from the points farthest from the centroid inwards, until none can be far enough.
      const double own_reach = reach_of(qp + 3 * s);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t i = by_reach[j];
        if (farthest.full()) {
          const double limit = own_reach + reach[i];
          // The margin covers float rounding of the computed squared distances (relative ~1e-7).
          if (limit * limit * (1.0 + 1e-5) + 1e-12 < static_cast<double>(farthest.worst())) break;
        }
        if (i != own) farthest.offer(squared_distance(pp + 3 * i, x, y, z), i);
      }
      for (int64_t j = 0; j < k; ++j) np_[s * k + j] = nearest.index(j);
      for (int64_t j = 0; j < l; ++j) fp[s * l + j] = farthest.index(j);
    }
  });
  return {near, far};
}
