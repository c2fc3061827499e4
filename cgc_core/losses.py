"""CGC's losses: photometric (L1 + D-SSIM), contrastive clustering (Eq. 3), spatial regularisation (Eq. 4).

Each vectorised loss has a slow loop version beside it (`*_reference`), the oracle of the tests.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# --- photometric -------------------------------------------------------------------------------


def _gaussian_kernel(size: int, sigma: float, dtype, device) -> Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM of two [H, W, C] images in [0, 1] (Gaussian window 11, σ 1.5, as 3DGS).

    The five local moments (means, variances, covariance) are filtered in one grouped convolution,
    and the Gaussian window as its two 1D passes (22 products per pixel instead of 121): the same
    sums as the 2D window of `ssim_reference`, in another order."""
    x, y = a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]
    channels = x.shape[1]
    g = _gaussian_kernel(window, sigma, x.dtype, x.device)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    pad = window // 2
    stack = F.conv2d(stack, g.view(1, 1, -1, 1).expand(5 * channels, 1, window, 1), padding=(pad, 0), groups=5 * channels)
    stack = F.conv2d(stack, g.view(1, 1, 1, -1).expand(5 * channels, 1, 1, window), padding=(0, pad), groups=5 * channels)
    mu_x, mu_y, exx, eyy, exy = stack.split(channels, dim=1)
    return _ssim_map(mu_x, mu_y, exx - mu_x**2, eyy - mu_y**2, exy - mu_x * mu_y).mean()


def _ssim_map(mu_x: Tensor, mu_y: Tensor, sxx: Tensor, syy: Tensor, sxy: Tensor) -> Tensor:
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))


def ssim_reference(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """`ssim` with the 2D Gaussian window applied to each moment separately (3DGS's code): the oracle."""
    x, y = a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]
    channels = x.shape[1]
    g = _gaussian_kernel(window, sigma, x.dtype, x.device)
    w = (g[:, None] @ g[None, :]).expand(channels, 1, window, window).contiguous()

    def blur(z: Tensor) -> Tensor:
        return F.conv2d(z, w, padding=window // 2, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    return _ssim_map(mu_x, mu_y, blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y).mean()


def photometric_loss(rendered: Tensor, target: Tensor, ssim_weight: float = 0.2) -> Tensor:
    """3DGS's L = (1 − λ)·L1 + λ·(1 − SSIM), λ = 0.2."""
    return (1 - ssim_weight) * (rendered - target).abs().mean() + ssim_weight * (1 - ssim(rendered, target))


# --- contrastive clustering (Eq. 3) ---------------------------------------------------------------


def segment_pixels(features: Tensor, labels: Tensor, min_pixels: int) -> tuple[Tensor, Tensor, int] | None:
    """The unit features of the pixels of every segment with more than `min_pixels` pixels.

    Args:
        features: [H, W, D] rendered features (any norm).
        labels: [H, W] int segment ids; 0 is unlabelled.
        min_pixels: Smaller segments are left out.

    Returns:
        (f [P, D] L2-normalised features of the kept pixels, seg [P] their segment index 0..K-1 in
        increasing id order, K), or None with fewer than two such segments.
    """
    flat_labels = labels.reshape(-1)
    ids, counts = torch.unique(flat_labels[flat_labels > 0], return_counts=True)
    ids = ids[counts > min_pixels]
    if len(ids) < 2:
        return None
    keep = torch.isin(flat_labels, ids)
    f = F.normalize(features.reshape(-1, features.shape[-1])[keep], dim=-1)
    return f, torch.searchsorted(ids, flat_labels[keep]), len(ids)


def contrastive_clustering_loss(features: Tensor, labels: Tensor, min_pixels: int = 100, eps: float = 100.0,
                                temperature_scale: float = 10.0, temperature_clip: tuple[float, float] | None = (0.1, 1.0),
                                detach_temperature: bool = True,
                                reference_segments: int | None = None) -> Tensor:
    """Contrastive clustering of rendered features by (view-inconsistent) 2D segments.

        f_q = rendered feature of pixel q, L2-normalised;  f̄^p = mean of {f_q : q ∈ p}
        φ^p = Σ_{q∈p} ‖f_q − f̄^p‖₂ / (N_p · log(N_p + ε))        (per-segment temperature)
        L_CC = −(1/N_k) Σ_p Σ_{q∈p} log( exp(f_q·f̄^p / φ^p) / Σ_s exp(f_q·f̄^s / φ^s) )

    The released code multiplies φ by 10, clips it to [0.1, 1] and detaches it: the defaults.

    With K segments in the view, a pixel whose own centroid beats every other by a margin Δ in
    cosine has p(own) = 1 / (1 + (K − 1) e^(−Δ/φ)): at one temperature, the more segments a view
    holds the flatter the loss. `reference_segments` = K₀ multiplies φ by log K₀ / log K, so that
    a margin buys the same p(own) in every view as it does with K₀ segments.

    Args:
        features: [H, W, D] rendered features (any norm).
        labels: [H, W] int segment ids; 0 is unlabelled and ignored.
        min_pixels: Only segments with more than this many pixels take part.
        eps: ε in the temperature.
        temperature_scale: Factor on φ (code: 10; paper: 1).
        temperature_clip: (low, high) clip of φ after scaling, or None.
        detach_temperature: Stop gradients through φ (code: yes).
        reference_segments: None (paper and code): φ as above. K₀ ≥ 2: φ also times log K₀ / log K,
            K the view's segments (sharper in views with more segments than K₀, softer with fewer).

    Returns:
        The scalar loss (0 with fewer than two segments).
    """
    found = segment_pixels(features, labels, min_pixels)
    if found is None:
        return features.sum() * 0.0
    f, seg, k = found
    n_p = torch.bincount(seg, minlength=k).to(f.dtype)
    centroids = torch.zeros(k, f.shape[1], dtype=f.dtype, device=f.device).index_add_(0, seg, f) / n_p[:, None]
    spread = torch.zeros(k, dtype=f.dtype, device=f.device).index_add_(0, seg, (f - centroids[seg]).norm(dim=-1))
    phi = spread / (n_p * torch.log(n_p + eps)) * temperature_scale
    if reference_segments is not None:
        phi = phi * (math.log(reference_segments) / math.log(k))
    if temperature_clip is not None:
        phi = phi.clamp(*temperature_clip)
    if detach_temperature:
        phi = phi.detach()
    logits = (f @ centroids.T) / phi[None, :]
    return F.cross_entropy(logits, seg, reduction="sum") / k


def contrastive_clustering_loss_reference(features: Tensor, labels: Tensor, min_pixels: int = 100, eps: float = 100.0,
                                          temperature_scale: float = 10.0,
                                          temperature_clip: tuple[float, float] | None = (0.1, 1.0),
                                          detach_temperature: bool = True,
                                          reference_segments: int | None = None) -> Tensor:
    """Eq. 3 with explicit loops over segments and pixels (slow; the tests' oracle)."""
    segments = []
    for sid in sorted(int(v) for v in torch.unique(labels) if v > 0):
        mask = labels == sid
        if int(mask.sum()) > min_pixels:
            segments.append(F.normalize(features[mask], dim=-1))
    if len(segments) < 2:
        return features.sum() * 0.0
    centroids = [s.mean(0) for s in segments]
    per = len(segments)
    phis = []
    for s, c in zip(segments, centroids):
        n = s.shape[0]
        phi = sum((s[q] - c).norm() for q in range(n)) / (n * math.log(n + eps)) * temperature_scale
        if reference_segments is not None:
            phi = phi * math.log(reference_segments) / math.log(per)
        if temperature_clip is not None:
            phi = phi.clamp(*temperature_clip)
        phis.append(phi.detach() if detach_temperature else phi)
    total = features.sum() * 0.0
    for p, s in enumerate(segments):
        for q in range(s.shape[0]):
            scores = torch.stack([(s[q] @ centroids[j]) / phis[j] for j in range(len(segments))])
            total = total - (scores[p] - torch.logsumexp(scores, 0))
    return total / per


def multilevel_contrastive_loss(features: Tensor, level_labels: Tensor, level_dims: list[int] | tuple[int, ...],
                                **options) -> Tensor:
    """The contrastive clustering loss at several mask granularities, on nested feature channels:

        L = (1/L) Σ_l L_CC(features[..., :level_dims[l]], level_labels[l])

    Level 0 is the finest masks (parts) on the most channels; each coarser level (objects,
    groups) on a prefix of them, so the leading channels agree across an object's parts while the
    remaining ones tell the parts apart. With one level and all channels it is Eq. 3.

    Args:
        features: [H, W, D] rendered features.
        level_labels: [L, H, W] int label maps, finest first (`MaskStore.read_label_maps`).
        level_dims: Channels of each level, at least L of them; D or fewer.
        **options: `contrastive_clustering_loss`'s (min_pixels, eps, temperature...).
    """
    levels = level_labels.shape[0]
    if len(level_dims) < levels:
        raise ValueError(f"multilevel_contrastive_loss: {levels} label levels but only {len(level_dims)} level_dims")
    terms = [contrastive_clustering_loss(features[..., : level_dims[l]], level_labels[l], **options)
             for l in range(levels)]
    return torch.stack(terms).mean()


def multilevel_contrastive_loss_reference(features: Tensor, level_labels: Tensor, level_dims: list[int] | tuple[int, ...],
                                          **options) -> Tensor:
    """`multilevel_contrastive_loss` through the loop reference of Eq. 3 (the tests' oracle)."""
    total = features.sum() * 0.0
    for l in range(level_labels.shape[0]):
        total = total + contrastive_clustering_loss_reference(features[..., : level_dims[l]], level_labels[l], **options)
    return total / level_labels.shape[0]


# --- spatial-similarity regularisation (Eq. 4) -----------------------------------------------------


def near_and_far(queries: Tensor, points: Tensor, self_index: Tensor, k: int, l: int,
                 near_includes_self: bool = False) -> tuple[Tensor, Tensor]:
    """Each query's k nearest (ascending) and l farthest (descending) rows of `points`, in one pass
    per query in C++ (CPU): no [M, N] distance matrix. `near_and_far_reference` is its oracle.

    Args:
        queries: [M, 3]; points: [N, 3].
        self_index: [M] the row of `points` that is the query itself (never among the farthest; among
            the nearest only with `near_includes_self`).
        k, l: How many nearest and farthest (fewer than N).

    Returns:
        near [M, k] and far [M, l], row indices into `points`.
    """
    from .render.torch_backend import extension

    return tuple(extension().near_far(queries, points, self_index, k, l, near_includes_self))


def near_and_far_reference(queries: Tensor, points: Tensor, self_index: Tensor, k: int, l: int,
                           near_includes_self: bool = False) -> tuple[Tensor, Tensor]:
    """`near_and_far` through the full distance matrix and top-k (obviously correct, M × N memory)."""
    distances = torch.cdist(queries, points)
    rows = torch.arange(len(queries))
    if not near_includes_self:
        distances[rows, self_index] = float("inf")
    near = torch.topk(distances, k, dim=1, largest=False).indices
    distances[rows, self_index] = -1.0
    return near, torch.topk(distances, l, dim=1, largest=True).indices


def sample_neighbours(means: Tensor, n_samples: int, k_near: int, l_far: int, max_points: int = 300_000,
                      generator: torch.Generator | None = None, near_includes_self: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Sample Gaussians and find, by 3D distance (positions detached), their near and far ones.

    Args:
        means: [N, 3] Gaussian centres.
        n_samples: How many Gaussians to sample (M).
        k_near: Nearest neighbours per sample (the similarity term).
        l_far: Farthest Gaussians per sample (the dissimilarity term; paper and code).
        max_points: Neighbours are searched in a random pool of at most this many Gaussians.
        generator: Seeds the sampling.
        near_includes_self: The released code's top-k over distances that include the sample's
            own (0): the sample is one of its K nearest. Default: it is left out.

    Returns:
        samples [M], near [M, K] (excluding the sample itself unless `near_includes_self`), far [M, L] indices.
    """
    n = means.shape[0]
    pool = torch.randperm(n, generator=generator)[:max_points] if n > max_points else torch.arange(n)
    positions = torch.randperm(len(pool), generator=generator)[: min(n_samples, len(pool))]
    samples = pool[positions]
    queries, points = means.detach()[samples], means.detach()[pool]
    search = near_and_far if means.device.type == "cpu" else near_and_far_reference
    near, far_ids = search(queries, points, positions, k_near, l_far, near_includes_self)
    return samples, pool[near], pool[far_ids]


def spatial_regularization(features: Tensor, samples: Tensor, near: Tensor, far: Tensor, lambda_near: float = 0.05,
                           lambda_far: float = 0.15, sigmoid_of_mean: bool = True,
                           far_similarity: str = "signed") -> Tensor:
    """Spatial-similarity regulariser on Gaussian features (cosine similarity s = f_j·f_i):

        paper:  λ_near/(MK) Σ_i Σ_{j∈near(i)} σ(1 − s_ij) + λ_far/(ML) Σ_i Σ_{j∈far(i)} σ(s_ij)
        code:   λ_near · σ(mean over near of (1 − s)) + λ_far · σ(mean over far of s)   (default)

    Args:
        features: [N, D] Gaussian features (normalised here).
        samples, near, far: From `sample_neighbours`.
        lambda_near, lambda_far: Term weights; a zero λ drops its term (the ablations "no near" /
            "no far").
        sigmoid_of_mean: The code's form (True) or the paper's (False).
        far_similarity: `signed` (paper) uses s in the far term; `positive` uses max(s, 0), so
            a feature orthogonal to its far ones is already "dissimilar". With `signed`, every
            object whose far Gaussians are the same walls is pushed towards the walls' opposite
            direction, i.e. towards one shared feature.
    """
    if far_similarity not in ("signed", "positive"):
        raise ValueError(f"spatial_regularization: unknown far_similarity={far_similarity!r} (signed, positive)")
    f = F.normalize(features, dim=-1)
    sim_near = (f[near] * f[samples][:, None]).sum(-1)
    sim_far = (f[far] * f[samples][:, None]).sum(-1)
    if far_similarity == "positive":
        sim_far = sim_far.clamp(min=0)
    if sigmoid_of_mean:
        return lambda_near * torch.sigmoid((1 - sim_near).mean()) + lambda_far * torch.sigmoid(sim_far.mean())
    return lambda_near * torch.sigmoid(1 - sim_near).mean() + lambda_far * torch.sigmoid(sim_far).mean()


def spatial_regularization_reference(features: Tensor, samples: Tensor, near: Tensor, far: Tensor,
                                     lambda_near: float = 0.05, lambda_far: float = 0.15,
                                     sigmoid_of_mean: bool = True, far_similarity: str = "signed") -> Tensor:
    """Eq. 4 with loops (slow; the tests' oracle)."""
    def cos(i, j):
        return F.normalize(features[i], dim=0) @ F.normalize(features[j], dim=0)

    def far_sim(i, j):
        s = cos(i, j)
        return torch.clamp(s, min=0) if far_similarity == "positive" else s

    near_terms = [1 - cos(int(i), int(j)) for row, i in enumerate(samples) for j in near[row]]
    far_terms = [far_sim(int(i), int(j)) for row, i in enumerate(samples) for j in far[row]]
    if sigmoid_of_mean:
        return (lambda_near * torch.sigmoid(torch.stack(near_terms).mean())
                + lambda_far * torch.sigmoid(torch.stack(far_terms).mean()))
    return (lambda_near * torch.stack([torch.sigmoid(t) for t in near_terms]).mean()
            + lambda_far * torch.stack([torch.sigmoid(t) for t in far_terms]).mean())
