// The Python module of the CPU kernels (declared in kernels.h). torch/csrc/utils/pybind.h has the
// pybind11 casters for at::Tensor; <torch/extension.h> would bring them too, with the whole C++ API.
#include "kernels.h"

#include <torch/csrc/utils/pybind.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &rasterize_forward, "tile rasterization forward (CPU)");
  m.def("backward", &rasterize_backward, "tile rasterization backward (CPU)");
  m.def("blend_weights", &blend_weights, "per-pixel blending weights as CSR (CPU)");
  m.def("bin_tiles", &bin_tiles, "splats per tile in depth order, as CSR (CPU)");
  m.def("near_far", &near_far, "k nearest and l farthest points of each query (CPU)");
  m.def("project_forward", &project_forward, "projection of 3D Gaussians to 2D splats (CPU)");
  m.def("project_backward", &project_backward, "gradients of the projection (CPU)");
  m.def("sh_colour_forward", &sh_colour_forward, "SH colour of view directions, per Gaussian (CPU)");
  m.def("sh_colour_backward", &sh_colour_backward, "gradients of sh_colour_forward (CPU)");
}
