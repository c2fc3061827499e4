// The spatial regulariser's neighbour search on the CPU: for each query, its k nearest and l
// farthest points by Euclidean distance, in one pass over the points per query (no M x N distance
// matrix and no top-k over it). Semantics of cgc_core.losses.sample_neighbours' torch path, which
// the tests hold this to: nearest ascending, farthest descending, the query's own row (`self_index`,
// -1 for none) never among the farthest and among the nearest only when `near_includes_self`.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <limits>
#include <vector>

namespace {

// Keeps the `size` best (key, index) pairs seen so far, best first; `better(a, b)` orders keys.
template <typename Better>
inline void keep_best(std::vector<std::pair<float, int64_t>>& best, int64_t size, float key, int64_t index,
                      Better better) {
  if (static_cast<int64_t>(best.size()) == size && !better(key, best.back().first)) return;
  auto it = best.begin();
  while (it != best.end() && !better(key, it->first)) ++it;  // equal keys: earlier index first
  best.insert(it, {key, index});
  if (static_cast<int64_t>(best.size()) > size) best.pop_back();
}

}  // namespace

std::vector<torch::Tensor> near_far(torch::Tensor queries, torch::Tensor points, torch::Tensor self_index,
                                    int64_t k, int64_t l, bool near_includes_self) {
  TORCH_CHECK(queries.dim() == 2 && queries.size(1) == 3 && points.dim() == 2 && points.size(1) == 3,
              "near_far: queries [M, 3] and points [N, 3]");
  TORCH_CHECK(points.size(0) > k && points.size(0) > l, "near_far: fewer points than neighbours asked for");
  auto q = queries.to(torch::kFloat32).contiguous();
  auto p = points.to(torch::kFloat32).contiguous();
  auto self = self_index.to(torch::kInt64).contiguous();
  const int64_t m = q.size(0), n = p.size(0);
  auto near = torch::empty({m, k}, torch::kInt64);
  auto far = torch::empty({m, l}, torch::kInt64);
  const float* qp = q.data_ptr<float>();
  const float* pp = p.data_ptr<float>();
  const int64_t* sp = self.data_ptr<int64_t>();
  int64_t* np_ = near.data_ptr<int64_t>();
  int64_t* fp = far.data_ptr<int64_t>();
  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    std::vector<std::pair<float, int64_t>> nearest, farthest;
    for (int64_t s = begin; s < end; ++s) {
      nearest.clear();
      farthest.clear();
      const float x = qp[3 * s], y = qp[3 * s + 1], z = qp[3 * s + 2];
      for (int64_t i = 0; i < n; ++i) {
        const float dx = pp[3 * i] - x, dy = pp[3 * i + 1] - y, dz = pp[3 * i + 2] - z;
        const float d = dx * dx + dy * dy + dz * dz;  // squared: the same order as the distance
        if (i == sp[s]) {
          if (near_includes_self) keep_best(nearest, k, 0.0f, i, std::less<float>());
          continue;
        }
        keep_best(nearest, k, d, i, std::less<float>());
        keep_best(farthest, l, d, i, std::greater<float>());
      }
      for (int64_t j = 0; j < k; ++j) np_[s * k + j] = nearest[j].second;
      for (int64_t j = 0; j < l; ++j) fp[s * l + j] = farthest[j].second;
    }
  });
  return {near, far};
}
