"""Scene editing: remove the selected objects, or keep only them (issue 40).

A selection (the selection service's 2D masks lifted onto the Gaussians: `edit_selection`) decides
which Gaussians go. Two options answer what users of object removal complain about: `grow` adds the Gaussians
next to the selection that the feature field marks as the same object (the fringe a threshold
leaves on the shadow side, floaters stuck to the object), and `floater_opacity` drops the faint
Gaussians left where a removed object stood. The trained model is never modified: the edit is a
new parameter dict.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.spatial import cKDTree
from torch import Tensor

from .config import EDIT_VIEW_SHARE
from .gaussians import neighbour_spacing, subset_params
from .render import Gaussians, render
from .scene.model import Camera
from .selection import Query, Selector


class EditError(ValueError):
    """An edit that cannot be made: its selection matches nothing, or everything."""


@dataclass
class Edit:
    """An edited model and what went.

    Attributes:
        params: The edited parameter dict (a subset of the model's Gaussians, in their order).
        kept: [N] boolean over the model's Gaussians: those in `params`.
        selected: [N] the selection as given; grown: [N] what `grow` added to it;
        floaters: [N] faint Gaussians dropped where removed ones stood.
    """

    params: dict[str, Tensor]
    kept: np.ndarray
    selected: np.ndarray
    grown: np.ndarray
    floaters: np.ndarray


def edit_selection(selector: Selector, params: dict[str, Tensor], queries: Sequence[Query | Tensor],
                   cameras: Sequence[Camera] = (), view_share: float = EDIT_VIEW_SHARE) -> np.ndarray:
    """[N] boolean: the Gaussians an edit takes for `queries`, faint ones too.

    With cameras and `view_share` > 0, the selection's 2D masks in those views are lifted onto the
    Gaussians (`Selector.gaussians_from_views`): a Gaussian goes when at least `view_share` of its
    blending weight paints selected pixels, so the object's surface Gaussians that training left
    with another feature go too (a per-Gaussian threshold leaves them behind as a ghost). Otherwise
    the per-Gaussian threshold (`Selector.gaussians`) with the opacity floor off (the floor that
    suits exporting an object would leave its faint Gaussians behind).
    """
    selector = replace(selector, min_opacity=0.0)
    if view_share > 0 and len(cameras):
        return selector.gaussians_from_views(params, cameras, queries, min_share=view_share)
    return selector.gaussians(params, queries)


def _near(means: np.ndarray, to: np.ndarray, candidates: np.ndarray, distance: float) -> np.ndarray:
    """[N] boolean: the `candidates` (a boolean mask) within `distance` of a point of `to` (a boolean mask)."""
    near = np.zeros(len(means), bool)
    index = np.flatnonzero(candidates)
    if len(index) and to.any():
        gap, _ = cKDTree(means[to]).query(means[index], k=1)
        near[index[gap <= distance]] = True
    return near


def _spacing(means: np.ndarray) -> float:
    return neighbour_spacing(means) or 1.0  # coincident points: any unit will do


def grow_selection(params: dict[str, Tensor], selected: np.ndarray, radius: float = 2.0,
                   min_similarity: float = 0.5) -> np.ndarray:
    """The Gaussians within `radius` median nearest-neighbour distances (`gaussians.neighbour_spacing`)
    of a selected one whose feature's cosine similarity to the selection's mean unit feature is at
    least `min_similarity` (a looser threshold than the selection's, applied only next to it).
    Returns the added ones."""
    selected = np.asarray(selected, bool)
    if not selected.any() or radius <= 0:
        return np.zeros_like(selected)
    means = params["means"].detach().cpu().numpy()
    unit = F.normalize(params["features"].detach().float().cpu(), dim=-1)
    centre = F.normalize(unit[torch.as_tensor(selected)].mean(0), dim=0)
    similar = (unit @ centre).numpy() >= min_similarity
    return _near(means, selected, similar & ~selected, radius * _spacing(means))


def edit_gaussians(params: dict[str, Tensor], selected: np.ndarray, mode: Literal["remove", "keep"],
                   grow_radius: float = 0.0, grow_similarity: float = 0.5, floater_opacity: float = 0.0,
                   floater_radius: float = 2.0, what: str = "the selection") -> Edit:
    """Remove the selected Gaussians, or keep only them.

    Args:
        params: The trained parameter dict (left unchanged).
        selected: [N] boolean, the Gaussians of the selected objects (`Selector.gaussians`).
        mode: `remove` drops them; `keep` keeps only them.
        grow_radius, grow_similarity: `grow_selection` first (radius 0: not grown).
        floater_opacity: With `remove`, also drop Gaussians fainter than this (opacity in [0, 1])
            within `floater_radius` median neighbour distances of a removed one: what hung in the
            air where the object stood. 0: none.
        what: How error messages name the selection (the prompts, clicks or clusters given).

    Raises:
        EditError: the selection holds no Gaussian, or every Gaussian (nothing would be left).
    """
    selected = np.asarray(selected, bool)
    n = len(selected)
    if not selected.any():
        raise EditError(f"{what} selects no Gaussian: nothing to {mode} (lower query.threshold, or check the prompt)")
    grown = grow_selection(params, selected, grow_radius, grow_similarity) if grow_radius > 0 else np.zeros(n, bool)
    chosen = selected | grown
    floaters = np.zeros(n, bool)
    if mode == "remove" and floater_opacity > 0:
        means = params["means"].detach().cpu().numpy()
        faint = ~chosen & (torch.sigmoid(params["opacities"]).detach().cpu().numpy() < floater_opacity)
        floaters = _near(means, chosen, faint, floater_radius * _spacing(means))
    if mode == "remove":
        kept = ~(chosen | floaters)
    elif mode == "keep":
        kept = chosen
    else:
        raise ValueError(f"mode must be remove or keep, got {mode!r}")
    if not kept.any():
        raise EditError(f"{what} selects every Gaussian ({n}): removing it would leave nothing")
    if mode == "keep" and kept.all():
        raise EditError(f"{what} selects every Gaussian ({n}): keeping it changes nothing")
    return Edit(subset_params(params, torch.as_tensor(kept)), kept, selected, grown, floaters)


@torch.no_grad()
def render_rgb(params: dict[str, Tensor], camera: Camera, backend: str = "auto",
               background: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """[H, W, 3] float colour of a parameter dict from one camera."""
    return render(Gaussians.from_params(params), camera, backend=backend, background=tuple(background)).rgb \
        .clamp(0, 1).cpu().numpy()


def write_edit_figures(before: dict[str, Tensor], after: dict[str, Tensor], cameras: dict[str, Camera],
                       out_stem: str | Path, views: int = 3, turntable_frames: int = 24, backend: str = "auto",
                       background: Sequence[float] = (0.0, 0.0, 0.0)) -> dict[str, list[Path] | Path]:
    """Before/after strips of `views` cameras (`<stem>_before_after/<view>.png`, before left) and a
    turntable of the edited model through `turntable_frames` of the cameras in name order (an orbit
    for a capture that circles the scene) as `<stem>_turntable.gif`. Returns the paths."""
    out_stem = Path(out_stem)
    names = sorted(cameras)
    strips_dir = out_stem.parent / f"{out_stem.name}_before_after"
    strips_dir.mkdir(parents=True, exist_ok=True)
    strips = []
    for name in [names[int(i)] for i in np.linspace(0, len(names) - 1, min(views, len(names)))]:
        pair = [render_rgb(p, cameras[name], backend, background) for p in (before, after)]
        gap = np.ones((pair[0].shape[0], 4, 3))
        path = strips_dir / f"{Path(name).stem}.png"
        Image.fromarray((np.concatenate([pair[0], gap, pair[1]], 1) * 255 + 0.5).astype(np.uint8)).save(path)
        strips.append(path)
    frames = [Image.fromarray((render_rgb(after, cameras[names[int(i)]], backend, background) * 255 + 0.5)
                              .astype(np.uint8))
              for i in np.linspace(0, len(names) - 1, min(turntable_frames, len(names)), endpoint=False)]
    turntable = out_stem.parent / f"{out_stem.name}_turntable.gif"
    tmp = turntable.with_suffix(".tmp.gif")
    frames[0].save(tmp, save_all=True, append_images=frames[1:], duration=120, loop=0)
    tmp.replace(turntable)
    return {"strips": strips, "turntable": turntable}
