// Tile-based alpha blending of projected 2D Gaussians on the CPU: forward and backward.
//
// The maths is exactly that of render/reference.py (the oracle): per pixel, Gaussians in depth
// order; a Gaussian counts only where the pixel centre lies inside its radius box, its power
// sigma = 0.5 d^T conic d is non-negative and alpha = min(0.99, opacity * exp(-sigma)) >= 1/255;
// blending stops before the Gaussian that would take the transmittance below 1e-4.
// Tiles run in parallel (at::parallel_for); within a tile, blocks of 4 x 2 pixels (4 x 1 without
// AVX) are blended as SIMD lanes, one per pixel. The backward pass accumulates per-Gaussian gradients in one
// buffer per thread, summed at the end, so no atomics are needed.
#include "kernels.h"

#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

namespace {

constexpr double kAlphaMax = 0.99;
constexpr double kAlphaMin = 1.0 / 255.0;
constexpr double kTransmittanceMin = 1e-4;

// A block of pixels is one machine vector of floats, a pixel per lane: 8 lanes with AVX (the
// extension is built with -mavx2 where the CPU has it), 4 with SSE. Wider vector types than the
// machine's compile to slow code (each operation spilled through memory), hence no fixed 16.
#if defined(__AVX__)
constexpr int kBlockPixels = 8;
#else
constexpr int kBlockPixels = 4;
#endif
// Blocks are 4 pixels wide and 2 (AVX) or 1 high. A tile's splat list is split per block: most
// splats are a few pixels across, so a block sees a small part of a 16 x 16 tile's list, and its
// pixels test only those (see for_each_block).
constexpr int64_t kBlockWidth = 4;
constexpr int64_t kBlockHeight = kBlockPixels / kBlockWidth;

// One value per pixel of a block, as a GCC/Clang vector type: arithmetic, comparisons (lane masks
// M of 0 or -1) and selects (mask ? a : b) act on all lanes at once and compile to the
// machine's SIMD instructions (as many registers as it takes), with no branch per pixel.
template <typename scalar_t>
struct Lanes {
  typedef scalar_t V __attribute__((vector_size(kBlockPixels * sizeof(scalar_t))));
  typedef decltype(V() < V()) M;  // integers of the scalar's width
};

// Sum of a vector's lanes, halving it until one is left (in registers: a shuffle, not a trip
// through memory, which stalls on loading part of a wide store).
template <int n, typename T, typename Vec>
inline T lane_sum_of(const Vec& v) {
  if constexpr (n == 8) {
    return lane_sum_of<4, T>(__builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7));
  } else if constexpr (n == 4) {
    return lane_sum_of<2, T>(__builtin_shufflevector(v, v, 0, 1) + __builtin_shufflevector(v, v, 2, 3));
  } else {
    static_assert(n == 2);
    return v[0] + v[1];
  }
}
template <typename scalar_t>
inline scalar_t lane_sum(const typename Lanes<scalar_t>::V& v) { return lane_sum_of<kBlockPixels, scalar_t>(v); }
// Whether any lane of a mask is on (lanes are 0 or -1, so their sum is 0 exactly when none is).
template <typename M>
inline bool any_lane(const M& m) {
  return lane_sum_of<kBlockPixels, std::remove_cv_t<std::remove_reference_t<decltype(m[0])>>>(m) != 0;
}
template <typename scalar_t>
inline typename Lanes<scalar_t>::V broadcast(scalar_t x) { return typename Lanes<scalar_t>::V{} + x; }

// exp(-x) lane by lane for 0 <= x <= 80 (callers hold other lanes at 0), as arithmetic that
// vectorises: x = n ln2 - r with n an integer, exp(-x) = 2^-n exp(r), exp(r) a degree-6
// polynomial on |r| <= ln2 / 2 (Cephes' expf, within 2 ULP of the correctly rounded value), 2^-n
// written into the exponent bits. The double kernels, which the tests hold to the float64
// reference, keep std::exp.
inline Lanes<float>::V exp_neg(Lanes<float>::V x) {
  using V = Lanes<float>::V;
  using M = Lanes<float>::M;
  const V t = x * 1.44269504088896341f + 0.5f;
  const M n = __builtin_convertvector(t, M);  // t >= 0.5, so truncation is floor
  const V fn = __builtin_convertvector(n, V);
  V r = fn * 0.693359375f - x;  // ln2 in two parts, the first exact in float
  r = r - fn * 2.12194440e-4f;
  V p = 1.9875691500e-4f * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const V e = p * r * r + r + 1.0f;
  const M exponent = (127 - n) << 23;  // 2^-n, a normal float for n <= 116
  V scale;
  std::memcpy(&scale, &exponent, sizeof(V));
  return e * scale;
}
inline Lanes<double>::V exp_neg(Lanes<double>::V x) {
  for (int q = 0; q < kBlockPixels; ++q) x[q] = std::exp(-x[q]);
  return x;
}

template <typename scalar_t>
struct Splat {
  scalar_t mx, my, a, b, c, opacity;
  scalar_t sigma_cut;  // beyond this power alpha is surely below 1/255: no exp needed to know it
  scalar_t rx, ry;     // the integer radii, held as floats: no conversion in every pair's box test
};

template <typename scalar_t>
std::vector<Splat<scalar_t>> gather_splats(const at::Tensor& means2d, const at::Tensor& conics,
                                           const at::Tensor& opacities, const at::Tensor& radii) {
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

// Every block of every tile, tiles in parallel: fn(tile, rows, cols, block) for the block's pixel
// rows [rows.first, rows.second) and columns likewise, where `block` holds, in depth order, the
// tile's splats whose radius box reaches the block. Each splat of the tile's list is appended to
// the lists of the blocks its box spans (computed from the box, not tested block by block, so
// the cost follows the entries made). A block gets a splat unless the box misses every pixel
// centre of the block's full 4-pixel-wide extent by more than a rounding margin, so it drops only
// splats the per-pixel box test would skip anyway: every pixel blends exactly the splats it would
// blend walking the whole tile list.
template <typename scalar_t, typename Fn>
void for_each_block(const std::vector<Splat<scalar_t>>& splats, const int64_t* offsets, const int64_t* ids,
                    int64_t width, int64_t height, int64_t tile_size, Fn&& fn) {
  const int64_t tiles_x = (width + tile_size - 1) / tile_size;
  const int64_t tiles_y = (height + tile_size - 1) / tile_size;
  const scalar_t margin = scalar_t(1e-3);
  at::parallel_for(0, tiles_x * tiles_y, 1, [&](int64_t begin, int64_t end) {
    std::vector<BlockList<scalar_t>> blocks;
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t ty = tile / tiles_x, tx = tile % tiles_x;
      const int64_t x0 = tx * tile_size, y0 = ty * tile_size;
      const int64_t y_end = std::min(height, y0 + tile_size), x_end = std::min(width, x0 + tile_size);
      const int64_t blocks_x = (x_end - x0 + kBlockWidth - 1) / kBlockWidth;
      const int64_t blocks_y = (y_end - y0 + kBlockHeight - 1) / kBlockHeight;
      blocks.resize(std::max<size_t>(blocks.size(), blocks_x * blocks_y));
      for (int64_t i = 0; i < blocks_x * blocks_y; ++i) {
        blocks[i].splats.clear();
        blocks[i].positions.clear();
      }
      for (int64_t k = offsets[tile]; k < offsets[tile + 1]; ++k) {
        const Splat<scalar_t>& s = splats[ids[k]];
        // block column c holds pixel centres x0 + c w + 0.5 ... x0 + c w + w - 0.5 (w its width):
        // it is reached when mx - rx <= its last centre + margin and mx + rx >= its first - margin
        const scalar_t c0 = std::ceil((s.mx - s.rx - x0 - (kBlockWidth - scalar_t(0.5)) - margin) / kBlockWidth);
        const scalar_t c1 = std::floor((s.mx + s.rx - x0 - scalar_t(0.5) + margin) / kBlockWidth);
        const scalar_t r0 = std::ceil((s.my - s.ry - y0 - (kBlockHeight - scalar_t(0.5)) - margin) / kBlockHeight);
        const scalar_t r1 = std::floor((s.my + s.ry - y0 - scalar_t(0.5) + margin) / kBlockHeight);
        const scalar_t first_col = std::max(c0, scalar_t(0)), last_col = std::min(c1, scalar_t(blocks_x - 1));
        const scalar_t first_row = std::max(r0, scalar_t(0)), last_row = std::min(r1, scalar_t(blocks_y - 1));
        if (!(first_col <= last_col && first_row <= last_row)) continue;  // misses the tile (or NaN)
        const int32_t position = static_cast<int32_t>(k - offsets[tile]);
        for (int64_t r = static_cast<int64_t>(first_row); r <= static_cast<int64_t>(last_row); ++r) {
          for (int64_t c = static_cast<int64_t>(first_col); c <= static_cast<int64_t>(last_col); ++c) {
            blocks[r * blocks_x + c].splats.push_back(s);
            blocks[r * blocks_x + c].positions.push_back(position);
          }
        }
      }
      for (int64_t r = 0; r < blocks_y; ++r) {
        for (int64_t c = 0; c < blocks_x; ++c) {
          const int64_t by = y0 + r * kBlockHeight, bx = x0 + c * kBlockWidth;
          fn(tile, std::make_pair(by, std::min(y_end, by + kBlockHeight)),
             std::make_pair(bx, std::min(x_end, bx + kBlockWidth)), blocks[r * blocks_x + c]);
        }
      }
    }
  });
}

// The pixels of one block: flat index into the image and, as lanes, the pixel centres, row by
// row. Lanes past `count` (a block cut by the image's edge) sit far outside every splat's box and
// are off in `inside`.
template <typename scalar_t>
struct BlockPixels {
  using V = typename Lanes<scalar_t>::V;
  using M = typename Lanes<scalar_t>::M;
  int count = 0;
  int64_t pixel[kBlockPixels];
  V px = broadcast(scalar_t(-1e30)), py = broadcast(scalar_t(-1e30));
  M inside = M{};

  BlockPixels(std::pair<int64_t, int64_t> rows, std::pair<int64_t, int64_t> cols, int64_t width) {
    for (int64_t i = rows.first; i < rows.second; ++i) {
      for (int64_t j = cols.first; j < cols.second; ++j, ++count) {
        pixel[count] = i * width + j;
        px[count] = j + scalar_t(0.5);
        py[count] = i + scalar_t(0.5);
        inside[count] = -1;
      }
    }
  }
};

// A splat at every pixel of a block at once. counts: the pixel centre lies in the splat's box, its
// power sigma = 0.5 d^T conic d satisfies 0 <= sigma <= sigma_cut (a NaN fails) and alpha =
// min(0.99, opacity exp(-sigma)) >= 1/255. gauss = exp(-sigma) and clamped (alpha held at 0.99,
// so no gradient reaches the splat through it) serve the backward pass; lanes that do not count
// hold finite values.
template <typename scalar_t>
struct BlockAlphas {
  using V = typename Lanes<scalar_t>::V;
  using M = typename Lanes<scalar_t>::M;
  V alpha, gauss;
  M counts, clamped;

  BlockAlphas(const Splat<scalar_t>& s, const BlockPixels<scalar_t>& pixels) {
    const V dx = s.mx - pixels.px, dy = s.my - pixels.py;
    const V sigma = scalar_t(0.5) * (s.a * dx * dx + s.c * dy * dy) + s.b * dx * dy;
    const V abs_dx = dx < 0 ? -dx : dx, abs_dy = dy < 0 ? -dy : dy;
    const M may_count = (abs_dx <= s.rx) & (abs_dy <= s.ry) & (sigma >= 0) & (sigma <= s.sigma_cut);
    gauss = exp_neg(may_count ? sigma : V{});
    const V raw = s.opacity * gauss;
    clamped = raw > scalar_t(kAlphaMax);
    alpha = clamped ? broadcast(scalar_t(kAlphaMax)) : raw;
    counts = may_count & (alpha >= scalar_t(kAlphaMin));
  }
};

// A block's splats blended into each of its pixels, front to back, splats outside and the
// pixels as lanes inside (a splat's data is read once per block): for each splat blended into one
// pixel or more, visit(b, w, blended) with b its index in the block's list, blended its pixels and
// w = alpha * T there (T the pixel's transmittance before it), 0 elsewhere. A pixel stops before
// the splat that would take its T below 1e-4. On return T is each pixel's final transmittance and
// last the number of tile-list entries up to its last blended splat (where the backward pass
// starts).
template <typename scalar_t, typename Visit>
inline void blend_block(const BlockList<scalar_t>& block, const BlockPixels<scalar_t>& pixels,
                        typename Lanes<scalar_t>::V& T, typename Lanes<scalar_t>::M& last, Visit&& visit) {
  using V = typename Lanes<scalar_t>::V;
  using M = typename Lanes<scalar_t>::M;
  T = broadcast(scalar_t(1));
  last = M{};
  M open = pixels.inside;
  const int64_t splat_count = static_cast<int64_t>(block.splats.size());
  for (int64_t b = 0; b < splat_count; ++b) {
    const BlockAlphas<scalar_t> here(block.splats[b], pixels);
    const M reaches = here.counts & open;
    if (!any_lane(reaches)) continue;
    const V next_t = T * (1 - here.alpha);
    const M stop = reaches & (next_t < scalar_t(kTransmittanceMin));  // stops before this splat
    const M blended = reaches & ~stop;
    const V w = blended ? here.alpha * T : V{};
    T = blended ? next_t : T;
    last = blended ? M{} + (block.positions[b] + 1) : last;
    if (any_lane(blended)) visit(b, w, blended);
    open &= ~stop;
    if (!any_lane(open)) break;
  }
}

}  // namespace

// Returns image [H, W, C] (background included), final transmittance [H, W] and, per pixel, the
// number of tile-list entries visited before blending stopped [H, W] (int32).
std::vector<at::Tensor> rasterize_forward(at::Tensor means2d, at::Tensor conics, at::Tensor opacities,
                                          at::Tensor colors, at::Tensor radii, at::Tensor background,
                                          at::Tensor tile_offsets, at::Tensor sorted_ids, int64_t width,
                                          int64_t height, int64_t tile_size) {
  const int64_t channels = colors.size(1);
  auto image = at::empty({height, width, channels}, colors.options());
  auto final_t = at::empty({height, width}, colors.options());
  auto n_visited = at::zeros({height, width}, radii.options());

  AT_DISPATCH_FLOATING_TYPES(colors.scalar_type(), "rasterize_forward", [&] {
    using V = typename Lanes<scalar_t>::V;
    using M = typename Lanes<scalar_t>::M;
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
      V T;
      M last;
      thread_local std::vector<V> acc;  // acc[ch]: channel ch of the block's pixels
      acc.assign(channels, V{});
      const int64_t* tile_ids = ids + offsets[tile];
      blend_block(block, pixels, T, last, [&](int64_t b, const V& w, const M&) {
        const scalar_t* cg = col + tile_ids[block.positions[b]] * channels;
        V* __restrict a = acc.data();
        for (int64_t ch = 0; ch < channels; ++ch) a[ch] = a[ch] + w * cg[ch];
      });
      for (int q = 0; q < pixels.count; ++q) {
        const int64_t p = pixels.pixel[q];
        for (int64_t ch = 0; ch < channels; ++ch) img[p * channels + ch] = acc[ch][q] + T[q] * bg[ch];
        tout[p] = T[q];
        visited[p] = static_cast<int32_t>(last[q]);
      }
    });
  });
  return {image, final_t, n_visited};
}

// Gradients of the loss with respect to means2d [N, 2], conics [N, 3], opacities [N] and
// colors [N, C], given the gradients of the image [H, W, C] and of alpha = 1 - T_final [H, W].
std::vector<at::Tensor> rasterize_backward(at::Tensor means2d, at::Tensor conics, at::Tensor opacities,
                                           at::Tensor colors, at::Tensor radii, at::Tensor background,
                                           at::Tensor tile_offsets, at::Tensor sorted_ids,
                                           at::Tensor final_t, at::Tensor n_visited,
                                           at::Tensor grad_image, at::Tensor grad_alpha, int64_t width,
                                           int64_t height, int64_t tile_size) {
  const int64_t n = means2d.size(0);
  const int64_t channels = colors.size(1);
  const int64_t stride = 6 + channels;  // mx, my, a, b, c, opacity, colors...
  const int64_t n_threads = at::get_num_threads();
  // One gradient row per Gaussian and thread, zeroed when the thread first touches it (most
  // rows of a large model are never touched by one of the threads, and zeroing and summing them
  // all cost as much as a tenth of the backward pass).
  auto buffers = at::empty({n_threads, n, stride}, colors.options());
  std::vector<uint8_t> touched(n_threads * n, 0);
  auto grad_means2d = at::empty({n, 2}, colors.options());
  auto grad_conics = at::empty({n, 3}, colors.options());
  auto grad_opacities = at::empty({n}, colors.options());
  auto grad_colors = at::empty({n, channels}, colors.options());

  AT_DISPATCH_FLOATING_TYPES(colors.scalar_type(), "rasterize_backward", [&] {
    using V = typename Lanes<scalar_t>::V;
    using M = typename Lanes<scalar_t>::M;
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

    // Splats outside, back to front, the block's pixels as lanes inside, each lane with the
    // arithmetic its pixel would have alone (lanes where a splat is not blended compute too and
    // are masked out); a splat's gradient from the whole block is summed over the lanes, then
    // added to the thread's buffer once, not once per pixel.
    for_each_block(splats, offsets, ids, width, height, tile_size, [&](int64_t tile, std::pair<int64_t, int64_t> rows,
                                                                       std::pair<int64_t, int64_t> cols,
                                                                       const BlockList<scalar_t>& block) {
      scalar_t* grads = buf + at::get_thread_num() * n * stride;
      uint8_t* mine = touched.data() + at::get_thread_num() * n;
      const int64_t start = offsets[tile];
      const BlockPixels<scalar_t> pixels(rows, cols, width);
      V T = broadcast(scalar_t(1));  // transmittance after the current Gaussian
      V after = V{};                 // sum over later Gaussians of w_j (G . c_j)
      V tail = V{};                  // loss terms that scale with the final transmittance: background, alpha
      M reached = M{};               // tile-list entries the forward pass walked
      thread_local std::vector<V> grad_by_channel;  // [ch]: the image gradient of channel ch, 0 off the image
      grad_by_channel.assign(channels, V{});
      int32_t most = 0;
      for (int q = 0; q < pixels.count; ++q) {
        const int64_t p = pixels.pixel[q];
        const scalar_t* G = gimg + p * channels;
        scalar_t g_bg = 0;
        for (int64_t ch = 0; ch < channels; ++ch) {
          g_bg += G[ch] * bg[ch];
          grad_by_channel[ch][q] = G[ch];
        }
        tail[q] = tfin[p] * (g_bg - galpha[p]);
        T[q] = tfin[p];
        reached[q] = visited[p];
        most = std::max(most, visited[p]);
      }
      const auto& positions = block.positions;
      const int64_t first = std::lower_bound(positions.begin(), positions.end(), most) - positions.begin();
      for (int64_t b = first - 1; b >= 0; --b) {
        const auto& s = block.splats[b];
        const int32_t position = positions[b];
        const BlockAlphas<scalar_t> here(s, pixels);
        const M blended = here.counts & (position < reached);  // ... and the pixel's forward pass reached it
        if (!any_lane(blended)) continue;
        const V inv_one_minus = 1 / (1 - here.alpha);  // one division for the two uses below
        T = blended ? T * inv_one_minus : T;  // transmittance before this Gaussian
        const V w = blended ? here.alpha * T : V{};
        const int64_t g = ids[start + position];
        const scalar_t* cg = col + g * channels;
        scalar_t* gg = grads + g * stride;
        if (!mine[g]) {
          std::fill(gg, gg + stride, scalar_t(0));
          mine[g] = 1;
        }
        V g_dot_c = V{};
        for (int64_t ch = 0; ch < channels; ++ch) g_dot_c += grad_by_channel[ch] * cg[ch];
        // colour gradient: the image gradients of the blended pixels weighted by w, pixel by pixel
        // (a sum along the channels, which vectorise; no sum across lanes per channel)
        for (int q = 0; q < pixels.count; ++q) {
          if (!blended[q]) continue;
          const scalar_t wq = w[q];
          const scalar_t* G = gimg + pixels.pixel[q] * channels;
          for (int64_t ch = 0; ch < channels; ++ch) gg[6 + ch] += wq * G[ch];
        }
        const V d_alpha = T * g_dot_c - (after + tail) * inv_one_minus;
        after += w * g_dot_c;  // w = 0 where not blended
        // alpha = 0.99 (clamped) does not depend on the Gaussian's parameters
        const M moves = blended & ~here.clamped;
        const V d_sigma = moves ? -here.alpha * d_alpha : V{};  // d alpha / d sigma = -alpha
        // offsets 0 where the splat does not move: a padding lane's overflow to inf times 0 is NaN
        const V dx = moves ? s.mx - pixels.px : V{}, dy = moves ? s.my - pixels.py : V{};
        gg[0] += lane_sum<scalar_t>(d_sigma * (s.a * dx + s.b * dy));
        gg[1] += lane_sum<scalar_t>(d_sigma * (s.c * dy + s.b * dx));
        gg[2] += lane_sum<scalar_t>(d_sigma * scalar_t(0.5) * dx * dx);
        gg[3] += lane_sum<scalar_t>(d_sigma * dx * dy);
        gg[4] += lane_sum<scalar_t>(d_sigma * scalar_t(0.5) * dy * dy);
        gg[5] += lane_sum<scalar_t>(moves ? d_alpha * here.gauss : V{});
      }
    });
    // the threads' rows summed, straight into the four gradients
    scalar_t* out_m = grad_means2d.data_ptr<scalar_t>();
    scalar_t* out_q = grad_conics.data_ptr<scalar_t>();
    scalar_t* out_o = grad_opacities.data_ptr<scalar_t>();
    scalar_t* out_c = grad_colors.data_ptr<scalar_t>();
    at::parallel_for(0, n, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        for (int64_t j = 0; j < stride; ++j) {
          scalar_t sum = 0;
          for (int64_t t = 0; t < n_threads; ++t) {
            if (touched[t * n + g]) sum += buf[(t * n + g) * stride + j];
          }
          if (j < 2) out_m[2 * g + j] = sum;
          else if (j < 5) out_q[3 * g + j - 2] = sum;
          else if (j == 5) out_o[g] = sum;
          else out_c[g * channels + j - 6] = sum;
        }
      }
    });
  });
  return {grad_means2d, grad_conics, grad_opacities, grad_colors};
}

// The blending weights w = alpha * T of every (pixel, Gaussian) pair that the forward pass blends,
// as CSR rows over pixels (row p = i * width + j): crow [H*W + 1] int64, col [nnz] int64 (Gaussian
// ids), weight [nnz]. Any per-Gaussian channel then renders as weights @ values (background 0):
// the frozen-geometry path renders features without re-running the rasterizer. Same loop, same
// tests as rasterize_forward, so the weights are exactly those it blends with.
std::vector<at::Tensor> blend_weights(at::Tensor means2d, at::Tensor conics, at::Tensor opacities,
                                      at::Tensor radii, at::Tensor tile_offsets, at::Tensor sorted_ids,
                                      int64_t width, int64_t height, int64_t tile_size) {
  auto crow = at::zeros({height * width + 1}, tile_offsets.options());
  at::Tensor col, weight;

  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "blend_weights", [&] {
    using V = typename Lanes<scalar_t>::V;
    using M = typename Lanes<scalar_t>::M;
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
        V T;
        M last;
        blend_block(block, pixels, T, last, [&](int64_t b, const V& w, const M& blended) {
          for (int q = 0; q < pixels.count; ++q) {
            if (!blended[q]) continue;
            if (pass) {
              cols_out[out[q]] = ids[offsets[tile] + block.positions[b]];
              ws[out[q]] = w[q];
            }
            ++out[q];
          }
        });
        if (!pass) {
          for (int q = 0; q < pixels.count; ++q) rows_out[pixels.pixel[q] + 1] = out[q];
        }
      });
      if (!pass) {
        crow = crow.cumsum(0);
        const int64_t nnz = crow[height * width].item<int64_t>();
        col = at::empty({nnz}, tile_offsets.options());
        weight = at::empty({nnz}, means2d.options());
      }
    }
  });
  return {crow, col, weight};
}

namespace {

// Indices of the visible splats (both radii > 0), nearest first, ties in index order: an LSD
// radix sort (stable) on the depths' bits, mapped so that unsigned order is numeric order.
template <typename scalar_t>
std::vector<int64_t> depth_order(const at::Tensor& depths, const at::Tensor& radii) {
  using Key = std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>;
  constexpr Key sign = Key(1) << (8 * sizeof(Key) - 1);
  const int64_t n = depths.size(0);
  const scalar_t* z = depths.data_ptr<scalar_t>();
  auto r = radii.accessor<int32_t, 2>();
  std::vector<int64_t> order, spare;
  std::vector<Key> keys, spare_keys;
  for (int64_t g = 0; g < n; ++g) {
    if (r[g][0] <= 0 || r[g][1] <= 0) continue;
    Key bits;
    std::memcpy(&bits, z + g, sizeof(Key));
    keys.push_back((bits & sign) ? ~bits : (bits | sign));  // negatives reversed, below positives
    order.push_back(g);
  }
  spare.resize(order.size());
  spare_keys.resize(keys.size());
  for (int shift = 0; shift < int(8 * sizeof(Key)); shift += 8) {
    int64_t start[257] = {0};
    for (const Key k : keys) ++start[((k >> shift) & 0xFF) + 1];
    if (start[((keys.empty() ? 0 : keys[0]) >> shift & 0xFF) + 1] == int64_t(keys.size())) continue;  // one digit: as is
    for (int d = 0; d < 256; ++d) start[d + 1] += start[d];
    for (size_t i = 0; i < keys.size(); ++i) {
      const int64_t at = start[(keys[i] >> shift) & 0xFF]++;
      spare_keys[at] = keys[i];
      spare[at] = order[i];
    }
    keys.swap(spare_keys);
    order.swap(spare);
  }
  return order;
}

}  // namespace

// Per tile, the visible splats (radii > 0) whose radius box touches it, nearest first (ties in
// index order): CSR offsets [n_tiles + 1] and ids [n_pairs] (int64). The splats are put in depth
// order, then counting-sorted by tile: one pass counts each tile's splats, a second writes them
// in depth order. A splat's tiles are floor((m -+ r) / tile_size) clamped to the image's tiles,
// computed in the splats' dtype exactly as render/torch_backend.py's bin_tiles_torch (the oracle)
// does.
std::vector<at::Tensor> bin_tiles(at::Tensor means2d, at::Tensor radii, at::Tensor depths, int64_t width,
                                  int64_t height, int64_t tile_size) {
  const int64_t tiles_x = (width + tile_size - 1) / tile_size, tiles_y = (height + tile_size - 1) / tile_size;
  auto offsets = at::zeros({tiles_x * tiles_y + 1}, at::dtype(at::kLong));
  at::Tensor ids;
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "bin_tiles", [&] {
    auto m = means2d.accessor<scalar_t, 2>();
    auto r = radii.accessor<int32_t, 2>();
    const std::vector<int64_t> order = depth_order<scalar_t>(depths, radii);
    const int64_t n = static_cast<int64_t>(order.size());
    const int64_t* o = order.data();
    std::vector<int32_t> box(4 * n);  // x0, x1, y0, y1 of each splat in `order`
    auto tile_of = [&](scalar_t v, int64_t last) {
      const scalar_t t = std::floor(v / scalar_t(tile_size));
      return static_cast<int32_t>(std::min<scalar_t>(std::max<scalar_t>(t, 0), scalar_t(last)));
    };
    int64_t* counts = offsets.data_ptr<int64_t>() + 1;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t g = o[i];
      const scalar_t rx = scalar_t(r[g][0]), ry = scalar_t(r[g][1]);
      int32_t* b = box.data() + 4 * i;
      b[0] = tile_of(m[g][0] - rx, tiles_x - 1);
      b[1] = tile_of(m[g][0] + rx, tiles_x - 1);
      b[2] = tile_of(m[g][1] - ry, tiles_y - 1);
      b[3] = tile_of(m[g][1] + ry, tiles_y - 1);
      for (int32_t ty = b[2]; ty <= b[3]; ++ty)
        for (int32_t tx = b[0]; tx <= b[1]; ++tx) ++counts[ty * tiles_x + tx];
    }
    int64_t* off = offsets.data_ptr<int64_t>();
    for (int64_t t = 0; t < tiles_x * tiles_y; ++t) off[t + 1] += off[t];
    ids = at::empty({off[tiles_x * tiles_y]}, at::dtype(at::kLong));
    int64_t* out = ids.data_ptr<int64_t>();
    std::vector<int64_t> next(off, off + tiles_x * tiles_y);
    for (int64_t i = 0; i < n; ++i) {
      const int32_t* b = box.data() + 4 * i;
      for (int32_t ty = b[2]; ty <= b[3]; ++ty)
        for (int32_t tx = b[0]; tx <= b[1]; ++tx) out[next[ty * tiles_x + tx]++] = o[i];
    }
  });
  return {offsets, ids};
}
