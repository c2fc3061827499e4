"""The fast CPU backend: tiles binned in torch, blending in a C++ extension (forward and backward).

The extension (`csrc/rasterize.cpp`) is compiled by `torch.utils.cpp_extension.load` on first
use (about 25 s with 2 cores; cached under torch's extensions folder afterwards), so a fresh
clone needs no build step. Its maths is that of `reference.py`, which the tests hold it to.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

from .projection import depth_order

logger = logging.getLogger("cgc")
TILE_SIZE = 16
_SOURCES = [Path(__file__).parent / "csrc" / name for name in
            ("rasterize.cpp", "neighbours.cpp", "projection.cpp", "bindings.cpp")]
_lock = threading.Lock()
_module = None


def extension():
    """The compiled C++ module (built once per source version and machine)."""
    global _module
    with _lock:
        if _module is None:
            _module = build_extension(torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"))
    return _module


def build_extension_in_background() -> threading.Thread:
    """Start compiling the C++ kernels in a daemon thread and return it, so that a run whose first
    stages do not render (scene, calibration, masks) overlaps the compiler with them: on a fresh
    checkout that build is about 25 s of a 5-minute demo. `extension()` waits for it (one lock);
    if it fails, the error is left for `extension()` to raise where the kernels are needed."""

    def build() -> None:
        try:
            extension()
        except Exception as exc:  # raised again, with its context, by the caller that needs it
            logger.debug("background build of the CPU kernels failed: %s", exc)

    thread = threading.Thread(target=build, name="cgc-build-cpu-kernels", daemon=True)
    thread.start()
    return thread


def build_extension(avx2: bool):
    """Compile (or load from torch's extension cache) the C++ kernels.

    The blend kernel works on one SIMD vector of pixels at a time: 8 floats with AVX2, 4 with the
    x86-64 baseline (avx2=False, also what any other CPU gets). `extension()` builds for this
    machine's CPU, as torch's own kernels are chosen at run time; each variant has its own name,
    so machines sharing a cache folder do not rebuild over each other.
    """
    from torch.utils.cpp_extension import load

    flags = ["-O3"] + (["-mavx2", "-mfma"] if avx2 else []) + (["-fopenmp"] if os.name != "nt" else [])
    return load(name="cgc_rasterize_cpu" + ("_avx2" if avx2 else ""), sources=[str(path) for path in _SOURCES],
                extra_cflags=flags, extra_ldflags=["-fopenmp"] if os.name != "nt" else [], verbose=False)


@torch.no_grad()
def bin_tiles(means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int,
              tile_size: int = TILE_SIZE) -> tuple[Tensor, Tensor]:
    """Per tile, the splats whose radius box touches it, nearest first.

    Returns:
        tile_offsets [n_tiles + 1] int64 (CSR offsets) and sorted_ids [n_pairs] int64.

    A radix sort by depth and a counting sort by tile in the C++ extension; `bin_tiles_torch` is the
    same in torch ops (the tests' oracle).
    """
    return tuple(extension().bin_tiles(means2d.detach().contiguous(), radii.to(torch.int32).contiguous(),
                                       depths.detach().to(means2d.dtype).contiguous(), width, height, tile_size))


@torch.no_grad()
def bin_tiles_torch(means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int,
                    tile_size: int = TILE_SIZE) -> tuple[Tensor, Tensor]:
    """`bin_tiles` in torch ops: every (splat, tile) pair, then a stable sort by tile."""
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    order = depth_order(depths, radii)
    m, r = means2d[order].detach(), radii[order].to(means2d.dtype)
    x0 = torch.floor((m[:, 0] - r[:, 0]) / tile_size).clamp(0, tiles_x - 1).long()
    x1 = torch.floor((m[:, 0] + r[:, 0]) / tile_size).clamp(0, tiles_x - 1).long()
    y0 = torch.floor((m[:, 1] - r[:, 1]) / tile_size).clamp(0, tiles_y - 1).long()
    y1 = torch.floor((m[:, 1] + r[:, 1]) / tile_size).clamp(0, tiles_y - 1).long()
    span_x = x1 - x0 + 1
    counts = span_x * (y1 - y0 + 1)
    owner = torch.repeat_interleave(torch.arange(len(order)), counts)  # position in depth order
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(int(counts.sum())) - first[owner]
    tile = (y0[owner] + local // span_x[owner]) * tiles_x + x0[owner] + local % span_x[owner]
    tile_sorted, perm = torch.sort(tile, stable=True)  # stable: depth order kept within a tile
    sorted_ids = order[owner[perm]]
    offsets = torch.zeros(tiles_x * tiles_y + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.bincount(tile_sorted, minlength=tiles_x * tiles_y), 0)
    return offsets, sorted_ids.contiguous()


class _Rasterize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, radii, background, tile_offsets, sorted_ids,
                width, height, tile_size):
        ext = extension()
        image, final_t, n_visited = ext.forward(means2d, conics, opacities, colors, radii, background,
                                                tile_offsets, sorted_ids, width, height, tile_size)
        ctx.save_for_backward(means2d, conics, opacities, colors, radii, background, tile_offsets, sorted_ids,
                              final_t, n_visited)
        ctx.size = (width, height, tile_size)
        ctx.mark_non_differentiable(n_visited)
        return image, 1 - final_t

    @staticmethod
    def backward(ctx, grad_image, grad_alpha):
        (means2d, conics, opacities, colors, radii, background, tile_offsets, sorted_ids, final_t,
         n_visited) = ctx.saved_tensors
        width, height, tile_size = ctx.size
        g_means, g_conics, g_opac, g_colors = extension().backward(
            means2d, conics, opacities, colors, radii, background, tile_offsets, sorted_ids, final_t, n_visited,
            grad_image.contiguous(), grad_alpha.contiguous(), width, height, tile_size,
        )
        return g_means, g_conics, g_opac, g_colors, None, None, None, None, None, None, None


@torch.no_grad()
def blend_weight_matrix(means2d: Tensor, conics: Tensor, opacities: Tensor, radii: Tensor, depths: Tensor,
                        width: int, height: int, tile_size: int = TILE_SIZE) -> Tensor:
    """The weights alpha·T with which `rasterize_tiles` blends each Gaussian into each pixel.

    Returns:
        A sparse CSR matrix [H*W, N] (row p = y * width + x): the blended image of any per-Gaussian
        values [N, C] is `matrix @ values` (background 0).
    """
    if means2d.device.type != "cpu":
        raise ValueError("blending weights come from the CPU kernel; move the Gaussians to the CPU")
    dtype = means2d.dtype
    offsets, ids = bin_tiles(means2d, radii, depths, width, height, tile_size)
    crow, col, weight = extension().blend_weights(
        means2d.contiguous(), conics.contiguous().to(dtype), opacities.contiguous().to(dtype),
        radii.to(torch.int32).contiguous(), offsets, ids, width, height, tile_size)
    with warnings.catch_warnings():  # "CSR support is in beta": the product it is used for is tested
        warnings.simplefilter("ignore", UserWarning)
        if len(col) < 2**31 and means2d.shape[0] < 2**31:  # 32-bit indices: a third less memory
            crow, col = crow.to(torch.int32), col.to(torch.int32)
        return torch.sparse_csr_tensor(crow, col, weight, (height * width, means2d.shape[0]), check_invariants=False)


def rasterize_tiles(means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor, radii: Tensor,
                    depths: Tensor, width: int, height: int, background: Tensor,
                    tile_size: int = TILE_SIZE) -> tuple[Tensor, Tensor]:
    """Same contract as `reference.rasterize_reference`: image [H, W, C] and alpha [H, W]."""
    if means2d.device.type != "cpu":
        raise ValueError("the torch backend's C++ kernel runs on CPU tensors; use backend='gsplat' on CUDA")
    dtype = colors.dtype
    offsets, ids = bin_tiles(means2d, radii, depths, width, height, tile_size)
    return _Rasterize.apply(
        means2d.contiguous(), conics.contiguous(), opacities.contiguous().to(dtype), colors.contiguous(),
        radii.to(torch.int32).contiguous(), background.to(dtype).contiguous(), offsets, ids, width, height, tile_size,
    )
