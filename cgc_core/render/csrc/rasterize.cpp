// Tile-based alpha blending of projected 2D Gaussians on the CPU: forward and backward.
//
// The maths is exactly that of render/reference.py (the oracle): per pixel, Gaussians in depth
// order; a Gaussian counts only where the pixel centre lies inside its radius box, its power
// sigma = 0.5 d^T conic d is non-negative and alpha = min(0.99, opacity * exp(-sigma)) >= 1/255;
// blending stops before the Gaussian that would take the transmittance below 1e-4.
// Tiles run in parallel (at::parallel_for); the backward pass accumulates per-Gaussian gradients
// in one buffer per thread, summed at the end, so no atomics are needed.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

namespace {

constexpr double kAlphaMax = 0.99;
constexpr double kAlphaMin = 1.0 / 255.0;
constexpr double kTransmittanceMin = 1e-4;

template <typename scalar_t>
struct Splat {
  scalar_t mx, my, a, b, c, opacity;
  scalar_t sigma_cut;  // beyond this power alpha is surely below 1/255: no exp needed to know it
  scalar_t rx, ry;     // the integer radii, held as floats: no conversion in every pair's box test
};

// Alpha of a splat at power sigma (one that passed the box and power tests), with the unclamped
// value's ingredients for the backward pass; false when alpha is below 1/255 (it does not count).
template <typename scalar_t>
inline bool alpha_at_power(const Splat<scalar_t>& s, scalar_t sigma, scalar_t& alpha, scalar_t& gauss,
                           bool& clamped) {
  gauss = std::exp(-sigma);
  const scalar_t raw = s.opacity * gauss;
  clamped = raw > scalar_t(kAlphaMax);
  alpha = clamped ? scalar_t(kAlphaMax) : raw;
  return alpha >= scalar_t(kAlphaMin);
}

template <typename scalar_t>
std::vector<Splat<scalar_t>> gather_splats(const torch::Tensor& means2d, const torch::Tensor& conics,
                                           const torch::Tensor& opacities, const torch::Tensor& radii) {
  const int64_t n = means2d.size(0);
  auto m = means2d.accessor<scalar_t, 2>();
  auto q = conics.accessor<scalar_t, 2>();
  auto o = opacities.accessor<scalar_t, 1>();
  auto r = radii.accessor<int32_t, 2>();
  std::vector<Splat<scalar_t>> splats(n);
  for (int64_t g = 0; g < n; ++g) {
    // opacity * exp(-sigma) < 1/255 exactly when sigma > log(255 * opacity); the margin leaves
    // every borderline pair to the exact test below, so the same pairs are blended as without it.
    const scalar_t cut = std::log(scalar_t(255) * o[g]) + scalar_t(1e-3);
    splats[g] = {m[g][0], m[g][1], q[g][0], q[g][1], q[g][2], o[g], cut, scalar_t(r[g][0]), scalar_t(r[g][1])};
  }
  return splats;
}

// A tile's splats that can count in one block of its pixels, in the tile's depth order: the
// splats themselves (copied next to each other) and their positions in the tile's list.
template <typename scalar_t>
struct BlockList {
  std::vector<Splat<scalar_t>> splats;
  std::vector<int32_t> positions;
};

// Pixels per side of the blocks a tile's list is filtered for: most splats are a few pixels
// across, so a 4 x 4 block sees about a fifth of a 16 x 16 tile's list, and each pixel tests only
// those. Filtering costs one box test per (block, splat), a sixteenth of the per-pixel tests.
constexpr int64_t kBlock = 4;

// Every block of every tile, tiles in parallel: fn(tile, rows, cols, block) for the block's pixel
// rows [rows.first, rows.second) and columns likewise, where `block` holds, in depth order, the
// tile's splats whose radius box reaches the block. The filter drops only splats whose box misses
// every pixel centre of the block (by more than a rounding margin), which the per-pixel box test
// would skip anyway, so every pixel blends exactly the splats it would blend walking the whole
// tile list.
template <typename scalar_t, typename Fn>
void for_each_block(const std::vector<Splat<scalar_t>>& splats, const int64_t* offsets, const int64_t* ids,
                    int64_t width, int64_t height, int64_t tile_size, Fn&& fn) {
  const int64_t tiles_x = (width + tile_size - 1) / tile_size;
  const int64_t tiles_y = (height + tile_size - 1) / tile_size;
  const scalar_t margin = scalar_t(1e-3);
  at::parallel_for(0, tiles_x * tiles_y, 1, [&](int64_t begin, int64_t end) {
    BlockList<scalar_t> block;
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t ty = tile / tiles_x, tx = tile % tiles_x;
      const int64_t y_end = std::min(height, (ty + 1) * tile_size), x_end = std::min(width, (tx + 1) * tile_size);
      for (int64_t by = ty * tile_size; by < y_end; by += kBlock) {
        for (int64_t bx = tx * tile_size; bx < x_end; bx += kBlock) {
          const int64_t by_end = std::min(y_end, by + kBlock), bx_end = std::min(x_end, bx + kBlock);
          // pixel centres of the block: x in [bx + 0.5, bx_end - 0.5], y likewise
          const scalar_t x_lo = bx + scalar_t(0.5) - margin, x_hi = bx_end - scalar_t(0.5) + margin;
          const scalar_t y_lo = by + scalar_t(0.5) - margin, y_hi = by_end - scalar_t(0.5) + margin;
          block.splats.clear();
          block.positions.clear();
          for (int64_t k = offsets[tile]; k < offsets[tile + 1]; ++k) {
            const Splat<scalar_t>& s = splats[ids[k]];
            if (s.mx + s.rx < x_lo || s.mx - s.rx > x_hi || s.my + s.ry < y_lo || s.my - s.ry > y_hi) continue;
            block.splats.push_back(s);
            block.positions.push_back(static_cast<int32_t>(k - offsets[tile]));
          }
          fn(tile, std::make_pair(by, by_end), std::make_pair(bx, bx_end), block);
        }
      }
    }
  });
}

constexpr int kBlockPixels = kBlock * kBlock;

// The pixels of one block: flat index into the image and pixel centre, row by row. Entries past
// `count` (a block cut by the image's edge) sit far outside every splat's box.
template <typename scalar_t>
struct BlockPixels {
  int count = 0;
  int64_t pixel[kBlockPixels];
  scalar_t px[kBlockPixels], py[kBlockPixels];

  BlockPixels(std::pair<int64_t, int64_t> rows, std::pair<int64_t, int64_t> cols, int64_t width) {
    std::fill(px, px + kBlockPixels, scalar_t(-1e30));
    std::fill(py, py + kBlockPixels, scalar_t(-1e30));
    for (int64_t i = rows.first; i < rows.second; ++i) {
      for (int64_t j = cols.first; j < cols.second; ++j, ++count) {
        pixel[count] = i * width + j;
        px[count] = j + scalar_t(0.5);
        py[count] = i + scalar_t(0.5);
      }
    }
  }
};

// A splat's box and power tests at every pixel of a block at once: a loop of fixed length without
// branches, which the compiler vectorises. power[q] is sigma at pixel q, and may_count[q] whether
// the pixel centre lies inside the splat's box and 0 <= sigma <= sigma_cut (a NaN passes neither);
// alpha_at_power decides the rest.
template <typename scalar_t>
inline void block_powers(const Splat<scalar_t>& s, const BlockPixels<scalar_t>& pixels, scalar_t* power,
                         uint8_t* may_count) {
  for (int q = 0; q < kBlockPixels; ++q) {
    const scalar_t dx = s.mx - pixels.px[q], dy = s.my - pixels.py[q];
    const scalar_t sigma = scalar_t(0.5) * (s.a * dx * dx + s.c * dy * dy) + s.b * dx * dy;
    power[q] = sigma;
    may_count[q] = (std::abs(dx) <= s.rx) & (std::abs(dy) <= s.ry) & (sigma >= 0) & (sigma <= s.sigma_cut);
  }
}

// A block's splats blended into each of its pixels, front to back, splats outside and pixels
// inside (a splat's data is read once per block): visit(q, k, w) for pixel q, k the splat's
// position in the tile's list and w = alpha * T, T the pixel's transmittance before it; a pixel
// stops before the splat that would take its T below 1e-4. On return T[q] is the pixel's final
// transmittance and last[q] the number of tile-list entries up to its last blended splat (where
// the backward pass starts).
template <typename scalar_t, typename Visit>
inline void blend_block(const BlockList<scalar_t>& block, const BlockPixels<scalar_t>& pixels, scalar_t* T,
                        int32_t* last, Visit&& visit) {
  scalar_t power[kBlockPixels];
  uint8_t may_count[kBlockPixels];
  bool done[kBlockPixels];
  std::fill(T, T + pixels.count, scalar_t(1));
  std::fill(last, last + pixels.count, 0);
  std::fill(done, done + kBlockPixels, false);
  int open = pixels.count;
  const int64_t splat_count = static_cast<int64_t>(block.splats.size());
  for (int64_t b = 0; b < splat_count && open > 0; ++b) {
    const auto& s = block.splats[b];
    block_powers(s, pixels, power, may_count);
    for (int q = 0; q < pixels.count; ++q) {
      scalar_t alpha, gauss;
      bool clamped;
      if (done[q] || !may_count[q] || !alpha_at_power(s, power[q], alpha, gauss, clamped)) continue;
      const scalar_t next_t = T[q] * (1 - alpha);
      if (next_t < scalar_t(kTransmittanceMin)) {  // this pixel stops before this splat
        done[q] = true;
        --open;
        continue;
      }
      visit(q, block.positions[b], alpha * T[q]);
      T[q] = next_t;
      last[q] = block.positions[b] + 1;
    }
  }
}

}  // namespace

// Returns image [H, W, C] (background included), final transmittance [H, W] and, per pixel, the
// number of tile-list entries visited before blending stopped [H, W] (int32).
std::vector<torch::Tensor> rasterize_forward(torch::Tensor means2d, torch::Tensor conics, torch::Tensor opacities,
                                             torch::Tensor colors, torch::Tensor radii, torch::Tensor background,
                                             torch::Tensor tile_offsets, torch::Tensor sorted_ids, int64_t width,
                                             int64_t height, int64_t tile_size) {
  const int64_t channels = colors.size(1);
  auto image = torch::empty({height, width, channels}, colors.options());
  auto final_t = torch::empty({height, width}, colors.options());
  auto n_visited = torch::zeros({height, width}, radii.options());

  AT_DISPATCH_FLOATING_TYPES(colors.scalar_type(), "rasterize_forward", [&] {
    const auto splats = gather_splats<scalar_t>(means2d, conics, opacities, radii);
    const scalar_t* col = colors.data_ptr<scalar_t>();
    const scalar_t* bg = background.data_ptr<scalar_t>();
    const int64_t* offsets = tile_offsets.data_ptr<int64_t>();
    const int64_t* ids = sorted_ids.data_ptr<int64_t>();
    scalar_t* img = image.data_ptr<scalar_t>();
    scalar_t* tout = final_t.data_ptr<scalar_t>();
    int32_t* visited = n_visited.data_ptr<int32_t>();

    for_each_block(splats, offsets, ids, width, height, tile_size, [&](int64_t tile, std::pair<int64_t, int64_t> rows,
                                                                       std::pair<int64_t, int64_t> cols,
                                                                       const BlockList<scalar_t>& block) {
      const BlockPixels<scalar_t> pixels(rows, cols, width);
      scalar_t T[kBlockPixels];
      int32_t last[kBlockPixels];
      thread_local std::vector<scalar_t> acc;
      acc.assign(kBlockPixels * channels, scalar_t(0));
      const int64_t* tile_ids = ids + offsets[tile];
      blend_block(block, pixels, T, last, [&](int q, int32_t k, scalar_t w) {
        const scalar_t* cg = col + tile_ids[k] * channels;
        scalar_t* a = acc.data() + q * channels;
        for (int64_t ch = 0; ch < channels; ++ch) a[ch] += w * cg[ch];
      });
      for (int q = 0; q < pixels.count; ++q) {
        const int64_t p = pixels.pixel[q];
        const scalar_t* a = acc.data() + q * channels;
        for (int64_t ch = 0; ch < channels; ++ch) img[p * channels + ch] = a[ch] + T[q] * bg[ch];
        tout[p] = T[q];
        visited[p] = last[q];
      }
    });
  });
  return {image, final_t, n_visited};
}

// Gradients of the loss with respect to means2d [N, 2], conics [N, 3], opacities [N] and
// colors [N, C], given the gradients of the image [H, W, C] and of alpha = 1 - T_final [H, W].
std::vector<torch::Tensor> rasterize_backward(torch::Tensor means2d, torch::Tensor conics, torch::Tensor opacities,
                                              torch::Tensor colors, torch::Tensor radii, torch::Tensor background,
                                              torch::Tensor tile_offsets, torch::Tensor sorted_ids,
                                              torch::Tensor final_t, torch::Tensor n_visited,
                                              torch::Tensor grad_image, torch::Tensor grad_alpha, int64_t width,
                                              int64_t height, int64_t tile_size) {
  const int64_t n = means2d.size(0);
  const int64_t channels = colors.size(1);
  const int64_t stride = 6 + channels;  // mx, my, a, b, c, opacity, colors...
  const int64_t n_threads = at::get_num_threads();
  auto buffers = torch::zeros({n_threads, n, stride}, colors.options());

  AT_DISPATCH_FLOATING_TYPES(colors.scalar_type(), "rasterize_backward", [&] {
    const auto splats = gather_splats<scalar_t>(means2d, conics, opacities, radii);
    const scalar_t* col = colors.data_ptr<scalar_t>();
    const scalar_t* bg = background.data_ptr<scalar_t>();
    const int64_t* offsets = tile_offsets.data_ptr<int64_t>();
    const int64_t* ids = sorted_ids.data_ptr<int64_t>();
    const scalar_t* tfin = final_t.data_ptr<scalar_t>();
    const int32_t* visited = n_visited.data_ptr<int32_t>();
    const scalar_t* gimg = grad_image.data_ptr<scalar_t>();
    const scalar_t* galpha = grad_alpha.data_ptr<scalar_t>();
    scalar_t* buf = buffers.data_ptr<scalar_t>();

    // Splats outside, the block's pixels inside: each pixel walks its splats back to front exactly
    // as alone (same arithmetic, same order), and a splat's gradient from the whole block is summed
    // locally, then added to the thread's buffer once, not once per pixel.
    for_each_block(splats, offsets, ids, width, height, tile_size, [&](int64_t tile, std::pair<int64_t, int64_t> rows,
                                                                       std::pair<int64_t, int64_t> cols,
                                                                       const BlockList<scalar_t>& block) {
      scalar_t* grads = buf + at::get_thread_num() * n * stride;
      const int64_t start = offsets[tile];
      const BlockPixels<scalar_t> pixels(rows, cols, width);
      scalar_t T[kBlockPixels], after[kBlockPixels], tail[kBlockPixels], power[kBlockPixels];
      uint8_t may_count[kBlockPixels];
      int32_t reached[kBlockPixels];
      int32_t most = 0;
      for (int q = 0; q < pixels.count; ++q) {
        const int64_t p = pixels.pixel[q];
        const scalar_t* G = gimg + p * channels;
        scalar_t g_bg = 0;
        for (int64_t ch = 0; ch < channels; ++ch) g_bg += G[ch] * bg[ch];
        // Loss terms that scale with the transmittance after a Gaussian: background and alpha.
        tail[q] = tfin[p] * (g_bg - galpha[p]);
        T[q] = tfin[p];           // transmittance after the current Gaussian
        after[q] = 0;             // sum over later Gaussians of w_j (G . c_j)
        reached[q] = visited[p];  // tile-list entries the forward pass walked
        most = std::max(most, visited[p]);
      }
      thread_local std::vector<scalar_t> local;
      local.resize(stride);
      const auto& positions = block.positions;
      const int64_t first = std::lower_bound(positions.begin(), positions.end(), most) - positions.begin();
      for (int64_t b = first - 1; b >= 0; --b) {
        const auto& s = block.splats[b];
        const int32_t position = positions[b];
        const int64_t g = ids[start + position];
        const scalar_t* cg = col + g * channels;
        bool touched = false;
        block_powers(s, pixels, power, may_count);
        for (int q = 0; q < pixels.count; ++q) {
          scalar_t alpha, gauss;
          bool clamped;
          // beyond where this pixel's forward pass stopped, or the splat does not count here
          if (position >= reached[q] || !may_count[q] || !alpha_at_power(s, power[q], alpha, gauss, clamped)) continue;
          const scalar_t dx = s.mx - pixels.px[q], dy = s.my - pixels.py[q];
          if (!touched) {
            std::fill(local.begin(), local.end(), scalar_t(0));
            touched = true;
          }
          T[q] = T[q] / (1 - alpha);  // transmittance before this Gaussian
          const scalar_t w = alpha * T[q];
          const scalar_t* G = gimg + pixels.pixel[q] * channels;
          scalar_t g_dot_c = 0;
          for (int64_t ch = 0; ch < channels; ++ch) {
            g_dot_c += G[ch] * cg[ch];
            local[6 + ch] += w * G[ch];
          }
          const scalar_t d_alpha = T[q] * g_dot_c - (after[q] + tail[q]) / (1 - alpha);
          after[q] += w * g_dot_c;
          if (clamped) continue;  // alpha = 0.99 does not depend on the Gaussian's parameters
          const scalar_t d_sigma = -alpha * d_alpha;  // d alpha / d sigma = -alpha
          local[0] += d_sigma * (s.a * dx + s.b * dy);
          local[1] += d_sigma * (s.c * dy + s.b * dx);
          local[2] += d_sigma * scalar_t(0.5) * dx * dx;
          local[3] += d_sigma * dx * dy;
          local[4] += d_sigma * scalar_t(0.5) * dy * dy;
          local[5] += d_alpha * gauss;
        }
        if (touched) {
          scalar_t* gg = grads + g * stride;
          for (int64_t t = 0; t < stride; ++t) gg[t] += local[t];
        }
      }
    });
  });
  auto total = buffers.sum(0);
  return {total.slice(1, 0, 2).contiguous(), total.slice(1, 2, 5).contiguous(), total.select(1, 5).contiguous(),
          total.slice(1, 6, stride).contiguous()};
}

// The blending weights w = alpha * T of every (pixel, Gaussian) pair that the forward pass blends,
// as CSR rows over pixels (row p = i * width + j): crow [H*W + 1] int64, col [nnz] int64 (Gaussian
// ids), weight [nnz]. Any per-Gaussian channel then renders as weights @ values (background 0):
// the frozen-geometry path renders features without re-running the rasterizer. Same loop, same
// tests as rasterize_forward, so the weights are exactly those it blends with.
std::vector<torch::Tensor> blend_weights(torch::Tensor means2d, torch::Tensor conics, torch::Tensor opacities,
                                         torch::Tensor radii, torch::Tensor tile_offsets, torch::Tensor sorted_ids,
                                         int64_t width, int64_t height, int64_t tile_size) {
  auto crow = torch::zeros({height * width + 1}, tile_offsets.options());
  torch::Tensor col, weight;

  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "blend_weights", [&] {
    const auto splats = gather_splats<scalar_t>(means2d, conics, opacities, radii);
    const int64_t* offsets = tile_offsets.data_ptr<int64_t>();
    const int64_t* ids = sorted_ids.data_ptr<int64_t>();
    // pass 0 counts each pixel's entries, pass 1 writes them where the counts' prefix sum says
    for (int pass = 0; pass < 2; ++pass) {
      int64_t* rows_out = crow.data_ptr<int64_t>();
      int64_t* cols_out = pass ? col.data_ptr<int64_t>() : nullptr;
      scalar_t* ws = pass ? weight.data_ptr<scalar_t>() : nullptr;
      for_each_block(splats, offsets, ids, width, height, tile_size, [&](int64_t tile, std::pair<int64_t, int64_t> rows,
                                                                         std::pair<int64_t, int64_t> cols,
                                                                         const BlockList<scalar_t>& block) {
        const BlockPixels<scalar_t> pixels(rows, cols, width);
        int64_t out[kBlockPixels];  // each pixel's next entry (pass 1) or its count (pass 0)
        for (int q = 0; q < pixels.count; ++q) out[q] = pass ? rows_out[pixels.pixel[q]] : 0;
        scalar_t T[kBlockPixels];
        int32_t last[kBlockPixels];
        blend_block(block, pixels, T, last, [&](int q, int32_t k, scalar_t w) {
          if (pass) {
            cols_out[out[q]] = ids[offsets[tile] + k];
            ws[out[q]] = w;
          }
          ++out[q];
        });
        if (!pass) {
          for (int q = 0; q < pixels.count; ++q) rows_out[pixels.pixel[q] + 1] = out[q];
        }
      });
      if (!pass) {
        crow = crow.cumsum(0);
        const int64_t nnz = crow[height * width].item<int64_t>();
        col = torch::empty({nnz}, tile_offsets.options());
        weight = torch::empty({nnz}, means2d.options());
      }
    }
  });
  return {crow, col, weight};
}

// neighbours.cpp
std::vector<torch::Tensor> near_far(torch::Tensor queries, torch::Tensor points, torch::Tensor self_index,
                                    int64_t k, int64_t l, bool near_includes_self);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &rasterize_forward, "tile rasterization forward (CPU)");
  m.def("backward", &rasterize_backward, "tile rasterization backward (CPU)");
  m.def("blend_weights", &blend_weights, "per-pixel blending weights as CSR (CPU)");
  m.def("near_far", &near_far, "k nearest and l farthest points of each query (CPU)");
}
