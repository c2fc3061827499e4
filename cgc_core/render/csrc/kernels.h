// The CPU kernels that bindings.cpp exposes to Python, one declaration each.
//
// The kernel files include only the ATen headers they use (tensor, dispatch, the few factory
// functions), not <torch/extension.h>: that header pulls in all of libtorch's C++ API and took
// about 25 s of compiler time per file, most of a fresh `make demo`'s extension build. Only
// bindings.cpp includes the pybind11 glue.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <cstdint>
#include <vector>

// rasterize.cpp: tile rasterization of 2D splats; every function's semantics are those of
// render/reference.py and render/torch_backend.py's torch paths (the tests' oracles).
std::vector<at::Tensor> rasterize_forward(at::Tensor means2d, at::Tensor conics, at::Tensor opacities,
                                          at::Tensor colors, at::Tensor radii, at::Tensor background,
                                          at::Tensor tile_offsets, at::Tensor sorted_ids, int64_t width,
                                          int64_t height, int64_t tile_size);
std::vector<at::Tensor> rasterize_backward(at::Tensor means2d, at::Tensor conics, at::Tensor opacities,
                                           at::Tensor colors, at::Tensor radii, at::Tensor background,
                                           at::Tensor tile_offsets, at::Tensor sorted_ids,
                                           at::Tensor final_t, at::Tensor n_visited,
                                           at::Tensor grad_image, at::Tensor grad_alpha, int64_t width,
                                           int64_t height, int64_t tile_size);
std::vector<at::Tensor> blend_weights(at::Tensor means2d, at::Tensor conics, at::Tensor opacities,
                                      at::Tensor radii, at::Tensor tile_offsets, at::Tensor sorted_ids,
                                      int64_t width, int64_t height, int64_t tile_size);
std::vector<at::Tensor> bin_tiles(at::Tensor means2d, at::Tensor radii, at::Tensor depths, int64_t width,
                                  int64_t height, int64_t tile_size);

// neighbours.cpp: the spatial regulariser's k nearest and l farthest points of each query.
std::vector<at::Tensor> near_far(at::Tensor queries, at::Tensor points, at::Tensor self_index,
                                 int64_t k, int64_t l, bool near_includes_self);

// projection.cpp: 3D Gaussians to 2D splats, and SH colour, with their hand-written gradients.
std::vector<at::Tensor> project_forward(at::Tensor means, at::Tensor quats, at::Tensor scales,
                                        at::Tensor viewmat, at::Tensor K, int64_t width, int64_t height,
                                        double eps2d);
std::vector<at::Tensor> project_backward(at::Tensor means, at::Tensor quats, at::Tensor scales,
                                         at::Tensor viewmat, at::Tensor K, int64_t width, int64_t height,
                                         double eps2d, at::Tensor grad_means2d, at::Tensor grad_conics,
                                         at::Tensor grad_depths);
at::Tensor sh_colour_forward(at::Tensor dirs, at::Tensor coeffs, int64_t degree);
std::vector<at::Tensor> sh_colour_backward(at::Tensor dirs, at::Tensor coeffs, int64_t degree,
                                           at::Tensor grad);
