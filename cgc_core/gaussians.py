"""The Gaussian parameter dict: initialisation from sparse points, and .ply in/out.

Parameters (raw, as optimised; `render.Gaussians.from_params` activates them):
    means [N, 3], quats [N, 4] (w, x, y, z), scales [N, 3] (log), opacities [N] (logit),
    sh0 [N, 1, 3], shN [N, (d+1)² − 1, 3], features [N, 16] (CGC's per-Gaussian feature).

The .ply layout is the standard 3DGS one (`x y z nx ny nz f_dc_* f_rest_* opacity scale_* rot_*`,
`f_rest` channel-major as the reference code writes it) plus `feat_0..feat_{D-1}`, so the file
opens in common 3DGS viewers and the features ride along.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement, PlyParseError
from scipy.spatial import cKDTree
from torch import Tensor

FEATURE_DIM = 16
SH_C0 = 0.28209479177387814


class GaussianFileError(ValueError):
    """A .ply file is missing or lacks attributes; the message names the file."""


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """Degree-0 SH coefficient whose colour (after the +0.5 offset) is `rgb` in [0, 1]."""
    return (rgb - 0.5) / SH_C0


def init_features(n: int, feature_dim: int = FEATURE_DIM, seed: int = 0) -> Tensor:
    """[n, feature_dim] initial features, U[0, 1) as the released code draws them (every feature in
    one orthant: the rendered features of all objects start nearly parallel, cosine about 0.75), seeded."""
    return torch.rand(n, feature_dim, generator=torch.Generator().manual_seed(seed))


def neighbour_spacing(points: np.ndarray) -> float:
    """Median distance from a point to its nearest other point (0 for fewer than two points): the
    length scale of a splat, whatever the scene's units (the cluster tree's contact radius, an
    edit's neighbourhood)."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) < 2:
        return 0.0
    return float(np.median(cKDTree(points).query(points, k=2)[0][:, 1]))


def init_params(points: np.ndarray, colors: np.ndarray | None, sh_degree: int = 3, feature_dim: int = FEATURE_DIM,
                init_opacity: float = 0.1, seed: int = 0) -> dict[str, Tensor]:
    """3DGS initialisation from coloured sparse points, plus CGC features.

    Args:
        points: [N, 3] positions (N ≥ 4).
        colors: [N, 3] uint8 colours, or None for grey.
        sh_degree: SH degree of the colour (0–3).
        feature_dim: Length of the per-Gaussian feature (16 in CGC).
        init_opacity: Initial opacity of every Gaussian.
        seed: Seed of the feature initialisation (`init_features`).

    Returns:
        The raw parameter dict (float32 tensors). Scales start at the mean distance to the 3
        nearest neighbours, isotropic, as 3DGS does.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) < 4:
        raise ValueError(f"init_params: need at least 4 points of shape [N, 3], got {points.shape}")
    distances, _ = cKDTree(points).query(points, k=4)
    mean_dist = np.maximum(distances[:, 1:].mean(axis=1), 1e-7)
    n = len(points)
    rgb = torch.full((n, 3), 0.5) if colors is None else torch.as_tensor(np.asarray(colors), dtype=torch.float32) / 255
    features = init_features(n, feature_dim, seed)
    return {
        "means": torch.as_tensor(points, dtype=torch.float32),
        "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1),
        "scales": torch.log(torch.as_tensor(mean_dist, dtype=torch.float32))[:, None].repeat(1, 3),
        "opacities": torch.logit(torch.full((n,), init_opacity)),
        "sh0": rgb_to_sh0(rgb)[:, None, :],
        "shN": torch.zeros(n, (sh_degree + 1) ** 2 - 1, 3),
        "features": features,
    }


def save_ply(params: dict[str, Tensor], path: str | Path, extra: dict[str, np.ndarray] | None = None) -> Path:
    """Write the parameters as a 3DGS .ply with `feat_*` columns (atomically: temp file, then rename).

    Args:
        params: The raw parameter dict (`means`, `quats`, log `scales`, logit `opacities`, `sh0`,
            `shN`, optional `features`).
        path: Output file.
        extra: More per-Gaussian vertex attributes (name -> [N] array), e.g. `cluster` labels;
            integer arrays are written as int32, others as float32. `load_ply` ignores them;
            `read_ply_attribute` reads one back.
    """
    path = Path(path)
    p = {k: v.detach().cpu().float().numpy() for k, v in params.items()}
    n = len(p["means"])
    rest = p["shN"].transpose(0, 2, 1).reshape(n, -1)  # channel-major, as 3DGS writes f_rest
    columns = [("x", p["means"][:, 0]), ("y", p["means"][:, 1]), ("z", p["means"][:, 2])]
    columns += [(name, np.zeros(n, np.float32)) for name in ("nx", "ny", "nz")]
    columns += [(f"f_dc_{i}", p["sh0"][:, 0, i]) for i in range(3)]
    columns += [(f"f_rest_{i}", rest[:, i]) for i in range(rest.shape[1])]
    columns += [("opacity", p["opacities"])]
    columns += [(f"scale_{i}", p["scales"][:, i]) for i in range(3)]
    columns += [(f"rot_{i}", p["quats"][:, i]) for i in range(4)]
    if "features" in p:
        columns += [(f"feat_{i}", p["features"][:, i]) for i in range(p["features"].shape[1])]
    dtypes = [(name, "f4") for name, _ in columns]
    for name, values in (extra or {}).items():
        values = np.asarray(values)
        if values.shape != (n,):
            raise ValueError(f"extra attribute {name!r}: expected shape ({n},), got {values.shape}")
        dtypes.append((name, "i4" if np.issubdtype(values.dtype, np.integer) else "f4"))
        columns.append((name, values))
    data = np.empty(n, dtype=dtypes)
    for name, values in columns:
        data[name] = values
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    PlyData([PlyElement.describe(data, "vertex")]).write(str(tmp))
    os.replace(tmp, path)
    return path


def _numbered(names: list[str], prefix: str) -> list[str]:
    return sorted((n for n in names if n.startswith(prefix)), key=lambda n: int(n[len(prefix):]))


def _read_vertices(path: Path):
    """The `vertex` element of a .ply, after checking that the file can hold what its header claims.

    plyfile allocates the element's array from the header's count before reading a row (for ASCII
    files and whenever it cannot memory-map), so a header that claims 10^12 vertices would ask for
    terabytes: the count is checked against the bytes that follow the header first.
    """
    try:
        with open(path, "rb") as stream:
            # plyfile has no public header-only reader; _parse_header is what PlyData.read calls first.
            header = PlyData._parse_header(stream)
            body = path.stat().st_size - stream.tell()
        for element in header.elements:
            if header.text:  # at least one character and one separator per value
                row = 2 * len(element.properties)
            else:  # fixed-size values, and a list's length field (its items may be zero)
                row = sum(np.dtype(getattr(p, "len_dtype", p.val_dtype)).itemsize for p in element.properties)
            if element.count * row > body:
                raise GaussianFileError(
                    f"{path}: the header claims {element.count} {element.name} rows (at least {element.count * row} "
                    f"bytes) but only {body} bytes follow it: the file is truncated or its header is wrong")
        return PlyData.read(str(path))["vertex"]
    except GaussianFileError:
        raise
    except (OSError, KeyError, ValueError, PlyParseError, MemoryError) as exc:
        raise GaussianFileError(f"{path}: not a readable Gaussian .ply ({exc})") from exc


def load_ply(path: str | Path) -> dict[str, Tensor]:
    """Read a 3DGS .ply (with or without `feat_*`) back into the raw parameter dict.

    Raises:
        GaussianFileError: naming the file, when it is not a .ply, lacks the 3DGS attributes, or
            its header claims more rows than the file holds.
    """
    path = Path(path)
    vertex = _read_vertices(path)
    names = [prop.name for prop in vertex.properties]
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [name for name in required if name not in names]
    if missing:
        raise GaussianFileError(f"{path}: missing vertex attributes {missing}")

    def stack(cols: list[str]) -> Tensor:
        return torch.as_tensor(np.stack([np.asarray(vertex[c], dtype=np.float32) for c in cols], axis=1))

    n = len(vertex["x"])
    rest_names = _numbered(names, "f_rest_")
    if len(rest_names) % 3:
        raise GaussianFileError(f"{path}: {len(rest_names)} f_rest attributes is not a multiple of 3")
    rest = stack(rest_names) if rest_names else torch.zeros(n, 0)
    params = {
        "means": stack(["x", "y", "z"]),
        "quats": stack([f"rot_{i}" for i in range(4)]),
        "scales": stack([f"scale_{i}" for i in range(3)]),
        "opacities": torch.as_tensor(np.asarray(vertex["opacity"], dtype=np.float32)),
        "sh0": stack([f"f_dc_{i}" for i in range(3)])[:, None, :],
        "shN": rest.reshape(n, 3, -1).transpose(1, 2).contiguous(),
    }
    feat_names = _numbered(names, "feat_")
    if feat_names:
        params["features"] = stack(feat_names)
    for name, values in params.items():  # a NaN or inf would spread through every render and gradient
        if not bool(torch.isfinite(values).all()):
            raise GaussianFileError(f"{path}: {int((~torch.isfinite(values)).sum())} non-finite values in {name}")
    return params


def read_ply_attribute(path: str | Path, name: str) -> np.ndarray:
    """One vertex attribute of a .ply (e.g. the `cluster` column of a labelled scene)."""
    path = Path(path)
    vertex = _read_vertices(path)
    try:
        return np.asarray(vertex[name])
    except (KeyError, ValueError) as exc:
        raise GaussianFileError(f"{path}: no readable vertex attribute {name!r} ({exc})") from exc


def subset_params(params: dict[str, Tensor], keep: Tensor | np.ndarray) -> dict[str, Tensor]:
    """The Gaussians selected by a boolean mask or index array, every parameter alike."""
    keep = torch.as_tensor(keep)
    return {k: v[keep] for k, v in params.items()}
