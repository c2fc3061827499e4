"""Training of the CGC Gaussian feature field: 3DGS photometric loss, contrastive clustering on the
2D masks every `cc_every` iterations, the spatial regulariser every `reg_every`, gsplat's
densification strategy (features ride along in the parameter dict), atomic checkpoints with
resume from the newest valid one, and a NaN guard.

Determinism: the view order of an epoch and the regulariser's samples are drawn from generators
seeded by (seed, epoch) and (seed, step), and the global torch RNG (used by densification) is
saved in every checkpoint, so a resumed run reproduces an uninterrupted one on CPU.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .config import DensifyConfig, TrainConfig
from .gaussians import init_features, init_params, load_ply, save_ply
from .health import collapse_warning, feature_separation, mean_separation
from .losses import multilevel_contrastive_loss, photometric_loss, sample_neighbours, spatial_regularization
from .masks.depth_split import split_at_depth_edges
from .masks.store import MaskStore
from .render import BlendWeights, Gaussians, blend_weights, render, resolve_backend
from .scene.model import Camera, Scene
from .stage import StageOutputs, hash_file

CHECKPOINT_DIR = "checkpoints"
logger = logging.getLogger("cgc")
PLY_NAME = "point_cloud.ply"
RECORD_NAME = "train.json"
"""The training record: steps, schedule, seconds, Gaussian count, health history."""
SPLIT_LABELS_NAME = "depth_split_labels.npz"
"""The label maps cut at depth edges (`train.depth_split_at`), kept so that a resumed run reads the same."""


@dataclass(frozen=True)
class TrainOutputs(StageOutputs):
    """The train stage's files: `ply` (standard 3DGS attributes plus feat_0..15) and `record`
    (train.json read: steps, schedule, seconds, Gaussian count, health history)."""

    ply = property(lambda self: self.folder / PLY_NAME)
    record_path = property(lambda self: self.folder / RECORD_NAME)
    record = property(lambda self: json.loads(self.record_path.read_text()))


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, bad checkpoint, no points); the message says what to do."""


@dataclass
class TrainResult:
    params: dict[str, Tensor]
    steps: int
    seconds: float
    resumed_from: int | None
    ply_path: Path


def scene_scale(cameras: list[Camera]) -> float:
    """1.1 × the largest distance of a camera centre from their mean (3DGS's normalisation radius)."""
    centers = np.stack([c.center for c in cameras])
    return float(1.1 * np.linalg.norm(centers - centers.mean(0), axis=1).max())


SCHEDULES: dict[str, dict[str, float | int]] = {
    # The released code's (PROTOCOL.md): 30k iterations, L_CC every 50, L_reg every 100, 3DGS's
    # densification (until 15k, every 100, gradient 2e-4) and SH schedule (a degree per 1000).
    # Its λ, far term and masks as generated, too (the CPU defaults differ: TrainConfig says why).
    "paper": {"iterations": 30_000, "cc_every": 50, "reg_every": 100, "sh_degree_every": 1000,
              "lambda_near": 0.05, "lambda_far": 0.15, "reg_far_similarity": "signed", "depth_split_at": 0.0,
              "checkpoint_every": 5000, "densify": {"refine_start_iter": 500, "refine_stop_iter": 15_000,
                                                    "refine_every": 100, "reset_every": 3000, "grow_grad2d": 2e-4}},
    # TrainConfig's defaults: 1,500 iterations on 2 CPU cores, every rate scaled to keep about as
    # many contrastive steps; SH degree 3 is reached at iteration 1,125.
    "cpu-short": {},
}


def resolve_schedule(cfg: TrainConfig, cuda: bool | None = None) -> TrainConfig:
    """The train config with its schedule applied: `auto` becomes `paper` on CUDA (the gsplat
    backend, or `auto` with a GPU) and `cpu-short` otherwise, and the schedule's values replace
    the fields still at their defaults (a field set by the user keeps its value). `use_reg` left
    unset (None) is on, except on frozen geometry: there the features train with the contrastive
    loss alone, since from U[0, 1) features on a finished model the regulariser collapsed the field
    (demo: click mIoU 0.62 with it, 0.95 without, `benchmarks/RESULTS.md`) and the final
    back-projection gives the 3D agreement instead.

    Args:
        cfg: The train section.
        cuda: Whether training runs on CUDA; None decides from `cfg.backend` and the machine.
    """
    name = cfg.schedule
    if name == "auto":
        if cuda is None:
            cuda = cfg.backend == "gsplat" or (cfg.backend == "auto" and torch.cuda.is_available())
        name = "paper" if cuda else "cpu-short"
    if name not in SCHEDULES:
        raise ValueError(f"train.schedule: unknown schedule {name!r} (auto, {', '.join(SCHEDULES)})")

    def apply(section, defaults, values: dict):
        changes = {k: apply(getattr(section, k), getattr(defaults, k), v) if isinstance(v, dict) else v
                   for k, v in values.items() if isinstance(v, dict) or getattr(section, k) == getattr(defaults, k)}
        return replace(section, **changes)

    use_reg = not cfg.freeze_geometry if cfg.use_reg is None else cfg.use_reg
    return replace(apply(cfg, TrainConfig(), SCHEDULES[name]), schedule=name, use_reg=use_reg)


def train_view(scene: Scene, name: str, downscale: int) -> tuple[Camera, Tensor]:
    """The camera and the [H, W, 3] image of a training view at the training resolution."""
    camera = scene.cameras[name]
    image = scene.load_image(name)
    if downscale > 1:
        h, w = image.shape[0] // downscale, image.shape[1] // downscale
        image = np.asarray(Image.fromarray((image * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BOX)) / 255.0
        camera = camera.scaled(w, h)
    return camera, torch.as_tensor(np.asarray(image), dtype=torch.float32)


def label_map_at(store: MaskStore, name: str, height: int, width: int, levels: int = 1) -> Tensor:
    """[levels, H, W]: the stored label maps of an image's mask levels (finest first), resized
    (nearest) to the training resolution."""
    maps = store.read_label_maps(name, levels)
    if maps.shape[1:] != (height, width):
        maps = np.stack([np.asarray(Image.fromarray(m).resize((width, height), Image.Resampling.NEAREST)) for m in maps])
    return torch.as_tensor(maps.astype(np.int64))


def model_params(cfg: TrainConfig) -> dict[str, Tensor]:
    """The parameters of `cfg.init_ply` (a trained 3DGS model), with features drawn as for a new
    model where the file has none (`GaussianFileError` names a bad file)."""
    loaded = load_ply(cfg.init_ply)
    if "features" not in loaded:
        loaded["features"] = init_features(loaded["means"].shape[0], feature_init=cfg.feature_init, seed=cfg.seed)
    return loaded


def _parameters(values: dict[str, Tensor], cfg: TrainConfig) -> torch.nn.ParameterDict:
    return torch.nn.ParameterDict({k: torch.nn.Parameter(v.detach().clone(), requires_grad=not cfg.freeze_geometry
                                                         or k == "features") for k, v in values.items()})


def _optimizers(params: torch.nn.ParameterDict, cfg: TrainConfig, scale: float) -> dict[str, torch.optim.Optimizer]:
    rates = {"means": cfg.lr_means * scale, "quats": cfg.lr_quats, "scales": cfg.lr_scales,
             "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN, "features": cfg.lr_features}
    if cfg.freeze_geometry:
        rates = {"features": cfg.lr_features}
    return {k: torch.optim.Adam([{"params": params[k], "lr": lr, "name": k}], eps=1e-15) for k, lr in rates.items()}


def densification_strategy(cfg: DensifyConfig):
    """gsplat's strategy object for the config (None for `none`); features are densified with the
    other parameters because they sit in the same parameter dict."""
    from gsplat.strategy import DefaultStrategy, MCMCStrategy

    if cfg.strategy == "mcmc":
        return MCMCStrategy(cap_max=cfg.mcmc_cap_max, refine_start_iter=cfg.refine_start_iter,
                            refine_stop_iter=cfg.refine_stop_iter, refine_every=cfg.refine_every)
    if cfg.strategy == "default":
        return DefaultStrategy(refine_start_iter=cfg.refine_start_iter, refine_stop_iter=cfg.refine_stop_iter,
                               refine_every=cfg.refine_every, reset_every=cfg.reset_every, grow_grad2d=cfg.grow_grad2d)
    return None


def _checkpoints(out_dir: Path) -> list[Path]:
    folder = out_dir / CHECKPOINT_DIR
    return sorted(folder.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1])) if folder.is_dir() else []


def _save_checkpoint(out_dir: Path, step: int, params, optimizers, strategy_state, health: list | None = None) -> Path:
    folder = out_dir / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:06d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    # Through a Python file object: a full disk then raises OSError(ENOSPC), where torch.save on a
    # path raises an opaque "unexpected pos" RuntimeError.
    with open(tmp, "wb") as handle:
        torch.save({
            "step": step, "params": {k: v.detach() for k, v in params.items()},
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "strategy_state": strategy_state, "rng": torch.get_rng_state(), "health": list(health or []),
        }, handle)
    # The checksum goes in first, then the checkpoint is renamed into place: every step_*.pt has
    # its .sha256, and a flipped byte in either is caught on resume.
    sidecar = path.with_suffix(".pt.sha256")
    sidecar_tmp = sidecar.with_suffix(".sha256.tmp")
    sidecar_tmp.write_text(hash_file(tmp))
    os.replace(sidecar_tmp, sidecar)
    os.replace(tmp, path)
    return path


def load_newest_checkpoint(out_dir: Path) -> tuple[dict, Path] | None:
    """The newest checkpoint whose checksum matches, that loads (weights only) and has every field;
    others are skipped with a warning on the `cgc` logger."""
    for path in reversed(_checkpoints(out_dir)):
        sidecar = path.with_suffix(".pt.sha256")
        try:
            if not sidecar.is_file() or sidecar.read_text().strip() != hash_file(path):
                raise TrainingError("checksum mismatch (the file changed after it was written)")
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not {"step", "params", "optimizers", "strategy_state", "rng"} <= set(state):
                raise TrainingError("fields missing")
            return state, path
        except Exception as exc:  # a damaged file of any kind: fall back to the previous one
            logger.warning("%s: skipped, not resuming from it (%s)", path, exc)
            continue
    return None


def train(scene: Scene, store: MaskStore, out_dir: str | Path, cfg: TrainConfig,
          progress: Callable[[int, int, dict], None] | None = None) -> TrainResult:
    """Train (or resume training of) the scene's Gaussians with features.

    Args:
        scene: The calibrated scene (sparse points initialise the Gaussians).
        store: Masks of the training images (label maps for the contrastive loss).
        out_dir: Checkpoints go to `out_dir/checkpoints/`; the final model to `out_dir/point_cloud.ply`.
        cfg: The train config section.
        progress: Called as progress(step, total, losses) after every iteration.

    Raises:
        TrainingError: a non-finite loss (the last good checkpoint is kept and named), or no points.
    """
    out_dir = Path(out_dir)
    cfg = resolve_schedule(cfg)
    if cfg.freeze_geometry and not cfg.init_ply:
        raise TrainingError("train.freeze_geometry needs train.init_ply: a trained 3DGS .ply to freeze")
    if not cfg.init_ply and (scene.points is None or len(scene.points) < 4):
        raise TrainingError(f"{scene.name}: no sparse points to initialise Gaussians from; run calibration first")
    torch.manual_seed(cfg.seed)
    names = sorted(n for n in scene.train_names if n in scene.cameras)
    views = {n: train_view(scene, n, cfg.downscale) for n in names}
    # The label maps feed the contrastive loss and the health measure (also when use_cc is off).
    labels = {n: label_map_at(store, n, *views[n][1].shape[:2], cfg.mask_levels) for n in names}
    scale = scene_scale([scene.cameras[n] for n in names])
    initial = (init_params(scene.points, scene.point_colors, cfg.sh_degree, init_opacity=cfg.init_opacity,
                           seed=cfg.seed, feature_init=cfg.feature_init) if not cfg.init_ply else model_params(cfg))
    # Frozen geometry: only the features are parameters that learn (and take gradients).
    params = _parameters(initial, cfg)
    optimizers = _optimizers(params, cfg, scale)
    strategy = densification_strategy(cfg.densify) if not cfg.freeze_geometry else None
    strategy_state = strategy.initialize_state(scene_scale=scale) if strategy is not None else {}
    start_step, resumed_from = 0, None
    health: list[dict] = []
    found = load_newest_checkpoint(out_dir)
    if found is not None:
        state, path = found
        params = _parameters(state["params"], cfg)
        optimizers = _optimizers(params, cfg, scale)
        for k, o in optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        strategy_state = state["strategy_state"]
        torch.set_rng_state(state["rng"])
        start_step = resumed_from = int(state["step"])
        health = list(state.get("health", []))
    if strategy is not None:
        strategy.check_sanity(params, optimizers)
    background = torch.tensor(cfg.background, dtype=torch.float32)
    model_sh_degree = math.isqrt(params["shN"].shape[1] + 1) - 1  # a loaded model may hold fewer bands
    decay = (cfg.lr_means_final / cfg.lr_means) ** (1.0 / max(cfg.iterations, 1))
    started = time.perf_counter()
    # Frozen geometry on the CPU: the blending weights never change, so each view's are computed
    # once (on first use) and the features render as one sparse product, without the rasterizer.
    frozen = FrozenViews(Gaussians.from_params({k: v.detach() for k, v in params.items()}),
                         {n: v[0] for n, v in views.items()}, cfg.frozen_cache_gb * 2**30) if (
        cfg.freeze_geometry and resolve_backend(cfg.backend) == "torch") else None
    last_good = None
    latest: dict[str, float] = {}  # the last value of every term, also on steps that skip it
    split_step = round(cfg.depth_split_at * cfg.iterations) if cfg.depth_split_at > 0 else None
    split_record = None
    if split_step is not None and start_step > split_step:  # resumed after the split: read what it cut
        labels, split_record = depth_split_labels(params, views, labels, cfg, out_dir / SPLIT_LABELS_NAME)
    for step in range(start_step, cfg.iterations):
        if step == split_step:
            labels, split_record = depth_split_labels(params, views, labels, cfg, out_dir / SPLIT_LABELS_NAME)
        epoch, index = divmod(step, len(names))
        order = torch.randperm(len(names), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        name = names[int(order[index])]
        camera, target = views[name]
        sh_degree = min(step // cfg.sh_degree_every, cfg.sh_degree, model_sh_degree)
        cc_step = cfg.use_cc and step % cfg.cc_every == 0
        reg_step = cfg.use_reg and step % cfg.reg_every == 0 and bool(cfg.lambda_near or cfg.lambda_far)
        health_step = bool(cfg.health_every) and (step % cfg.health_every == 0 or step + 1 == cfg.iterations)
        if frozen is None:
            # The features are blended only on steps that read them: elsewhere their gradient is zero
            # whatever is rendered (4 channels instead of 20: about 10-15 % of the blend's time).
            out = render(Gaussians.from_params(params), camera, sh_degree=sh_degree, background=background,
                         features=params["features"] if cc_step or health_step else None, backend=cfg.backend)
            rendered_features, meta = out.features, out.meta
        else:  # the features through the view's fixed weights, only on a step that reads them
            rendered_features = frozen.render(name, params["features"]) if cc_step or health_step else None
        losses = {} if cfg.freeze_geometry else {"photometric": photometric_loss(out.rgb, target)}
        if cc_step:
            clip = tuple(cfg.cc_temperature_clip) if cfg.cc_temperature_clip is not None else None
            losses["cc"] = cfg.cc_weight * multilevel_contrastive_loss(
                rendered_features, labels[name], cfg.level_dims, min_pixels=cfg.cc_min_pixels,
                temperature_scale=cfg.cc_temperature_scale, temperature_clip=clip,
                detach_temperature=cfg.cc_detach_temperature, reduction=cfg.cc_reduction)
        if reg_step:
            samples, near, far = sample_neighbours(
                params["means"], cfg.reg_samples, cfg.k_near, cfg.l_far, cfg.reg_max_points,
                generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + step), far=cfg.reg_far,
                near_includes_self=cfg.reg_near_includes_self)
            losses["reg"] = spatial_regularization(params["features"], samples, near, far, cfg.lambda_near,
                                                   cfg.lambda_far, cfg.reg_sigmoid_of_mean, cfg.reg_far_similarity,
                                                   cfg.reg_near_pairs)
        loss = sum(losses.values(), torch.zeros(()))
        if health_step:
            # Which term moves the features: the norm of each term's gradient on them (the
            # photometric loss does not reach the features; densification does not read these).
            for key in ("cc", "reg"):
                if key in losses:
                    (grad,) = torch.autograd.grad(losses[key], params["features"], retain_graph=True, allow_unused=True)
                    latest[f"grad_{key}"] = 0.0 if grad is None else float(grad.norm())
        if not torch.isfinite(loss):
            raise TrainingError(
                f"{scene.name}: loss became {loss.item()} at step {step}; "
                f"the last good checkpoint is {last_good or 'none yet'} (lower the learning rates and resume)")
        if strategy is not None:
            strategy.step_pre_backward(params, optimizers, strategy_state, step, meta)
        if loss.requires_grad:  # frozen geometry on a step without a feature loss: nothing to learn
            loss.backward()
        if frozen is None and not ({"cc", "reg"} & set(losses)):
            # No feature loss on this step. `zero` (the released code's behaviour: its one-pass render
            # hands them zeros) lets Adam keep moving them on momentum; `none` makes Adam skip them.
            params["features"].grad = (torch.zeros_like(params["features"])
                                       if cfg.features_grad_between_cc == "zero" else None)
        for group in optimizers["means"].param_groups if "means" in optimizers else ():
            group["lr"] = cfg.lr_means * scale * decay**step
        for optimizer in optimizers.values():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if strategy is not None:
            if cfg.densify.strategy == "mcmc":
                strategy.step_post_backward(params, optimizers, strategy_state, step, meta,
                                            lr=optimizers["means"].param_groups[0]["lr"])
            else:
                strategy.step_post_backward(params, optimizers, strategy_state, step, meta, packed=False)
        done = step + 1
        latest |= {k: float(v.detach()) for k, v in losses.items()} | {"n": int(params["means"].shape[0])}
        if health_step:
            measure = feature_separation(rendered_features.detach(), labels[name][0], cfg.cc_min_pixels)
            latest |= {k: v for k, v in (measure.as_dict() if measure else {}).items() if k != "segments"}
            health.append({"step": done, "view": name, **latest})
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.iterations:
            last_good = _save_checkpoint(out_dir, done, params, optimizers, strategy_state, health)
        if progress is not None:
            progress(done, cfg.iterations, dict(latest))
    final = {k: v.detach() for k, v in params.items()}
    if frozen is not None and cfg.frozen_back_project:
        final["features"] = frozen.back_project(final["features"])
    final, diverged = drop_non_finite_gaussians(final)
    if diverged:
        logger.warning("%s: %d of %d Gaussians have non-finite parameters (diverged in training); left out of %s",
                       scene.name, diverged, diverged + final["means"].shape[0], out_dir / PLY_NAME)
    if cfg.iterations > start_step or not (out_dir / PLY_NAME).exists():
        _save_checkpoint(out_dir, cfg.iterations, params, optimizers, strategy_state, health)
    ply = save_ply(final, out_dir / PLY_NAME)
    seconds = time.perf_counter() - started
    final_health = final_feature_health(final, views, labels, scene.name, cfg)
    if final_health["warning"]:
        logger.warning("%s", final_health["warning"])
    (out_dir / RECORD_NAME).write_text(json.dumps({
        "steps": cfg.iterations, "schedule": cfg.schedule, "resumed_from": resumed_from, "seconds": seconds,
        "n_gaussians": int(final["means"].shape[0]), "non_finite_dropped": diverged, "scene_scale": scale,
        "depth_split": split_record,
        "health": {"history": health, **final_health},
    }, indent=2))
    return TrainResult(final, cfg.iterations, seconds, resumed_from, ply)


def drop_non_finite_gaussians(params: dict[str, Tensor]) -> tuple[dict[str, Tensor], int]:
    """The parameter dict without the Gaussians any of whose parameters is not finite, and how
    many those were. Such a Gaussian renders nothing (the projection culls it), so the loss never
    shows it, but every median, bound or viewer that reads the saved model would."""
    n = params["means"].shape[0]
    finite = torch.ones(n, dtype=torch.bool)
    for values in params.values():
        finite &= torch.isfinite(values.reshape(n, -1)).all(dim=1)
    dropped = int(n - finite.sum())
    return ({k: v[finite] for k, v in params.items()} if dropped else params), dropped


def describe_depth_split(record: dict) -> str:
    """One line on a run's depth cut (`train.json`'s `depth_split` record), for the benchmarks."""
    nan = float("nan")
    return (f"depth cut {record['segments_per_view_before']:.1f} -> {record['segments_per_view_after']:.1f} "
            f"segments per view, supervised pixels {record.get('supervised_share_before', nan):.3f} -> "
            f"{record.get('supervised_share_after', nan):.3f}")


def depth_split_labels(params: dict[str, Tensor], views: dict[str, tuple[Camera, Tensor]],
                       labels: dict[str, Tensor], cfg: TrainConfig, path: Path) -> tuple[dict[str, Tensor], dict]:
    """Every view's label maps cut where the depth of the current Gaussians jumps (each level on its
    own, or only the finest with `cfg.depth_split_levels=finest`; `split_at_depth_edges` with
    `cfg.depth_split_jump`, `_sharpness`, `_fill` and `_min_pixels`), and a record of the mean
    number of segments per view before and after. Read from `path` when it is there (a resumed
    run), else computed and written there atomically."""
    cut = {}
    if path.is_file():
        with np.load(path) as stored:
            cut = {n: torch.as_tensor(stored[n]) for n in labels}
    else:
        gaussians = Gaussians.from_params({k: v.detach() for k, v in params.items()})

        def cut_level(index: int, level: Tensor, depth: np.ndarray) -> np.ndarray:
            if index > 0 and cfg.depth_split_levels == "finest":
                return level.numpy()  # an object level stays as generated
            return split_at_depth_edges(
                level.numpy(), depth, cfg.depth_split_jump,
                min_pixels=cfg.depth_split_min_pixels if cfg.depth_split_fill else 0,
                sharpness=cfg.depth_split_sharpness, fill_distance=cfg.depth_split_fill)

        with torch.no_grad():
            for name, (camera, _) in views.items():
                depth = render(gaussians, camera, sh_degree=0, backend=cfg.backend).depth.cpu().numpy()
                levels = [cut_level(i, level, depth) for i, level in enumerate(labels[name])]
                cut[name] = torch.as_tensor(np.stack(levels))
        path.parent.mkdir(parents=True, exist_ok=True)  # before the first checkpoint it may not exist yet
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **{n: v.numpy().astype(np.int32) for n, v in cut.items()})
        os.replace(tmp, path)

    def segments_per_view(maps: dict[str, Tensor]) -> float:
        return float(np.mean([len(torch.unique(v[0][v[0] > 0])) for v in maps.values()]))

    def supervised_share(maps: dict[str, Tensor]) -> float:
        # Pixels in a segment large enough for the contrastive loss (`cc_min_pixels`), finest level.
        shares = []
        for v in maps.values():
            counts = torch.bincount(v[0].flatten())
            shares.append(float(((v[0] > 0) & (counts[v[0]] >= cfg.cc_min_pixels)).float().mean()))
        return float(np.mean(shares))

    return cut, {"segments_per_view_before": segments_per_view(labels), "segments_per_view_after": segments_per_view(cut),
                 "supervised_share_before": supervised_share(labels), "supervised_share_after": supervised_share(cut)}


class FrozenViews:
    """The blending weights of fixed Gaussians in each training view, computed on first use and kept
    while they fit in `max_bytes` (about 16 bytes per blended Gaussian-pixel pair: 57 MB per 320×240
    view of the demo's 33k Gaussians); views beyond the budget are rendered by the rasterizer."""

    def __init__(self, gaussians: Gaussians, cameras: dict[str, Camera], max_bytes: float = float("inf")):
        self.gaussians = gaussians
        self.cameras = cameras
        self.max_bytes = max_bytes
        self.weights: dict[str, BlendWeights] = {}
        self.over_budget: set[str] = set()

    def view(self, name: str) -> BlendWeights:
        """The view's weights (kept if the budget allows)."""
        if name in self.weights:
            return self.weights[name]
        weights = blend_weights(self.gaussians, self.cameras[name])
        if sum(w.nbytes for w in self.weights.values()) + weights.nbytes <= self.max_bytes:
            self.weights[name] = weights
        else:
            self.over_budget.add(name)
        return weights

    def render(self, name: str, features: Tensor) -> Tensor:
        """[H, W, D]: the features blended into view `name` (differentiable in `features`)."""
        if name in self.over_budget:  # computing its weights again would cost more than a render
            return render(self.gaussians, self.cameras[name], features=features, backend="torch").features
        return self.view(name).render(features)

    @torch.no_grad()
    def back_project(self, features: Tensor, min_weight: float = 1e-3) -> Tensor:
        """[N, D] unit features: each Gaussian's is the mean of the normalised rendered features of
        the pixels it is blended into (over every view, weighted by its blending weight); one that no
        view shows (total weight below `min_weight`) takes its nearest shown neighbour's. Gaussians
        that a frozen run barely reaches keep their random start otherwise, which the rendered maps
        hide but 3D clustering does not."""
        from scipy.spatial import cKDTree

        total = torch.zeros_like(features)
        weight = torch.zeros(features.shape[0], dtype=features.dtype)
        for name in self.cameras:
            view = self.view(name)
            rendered = torch.nn.functional.normalize(view.matrix @ features, dim=-1)
            total += view.transposed @ rendered
            weight += view.transposed @ torch.ones(rendered.shape[0], 1, dtype=features.dtype)[:, 0]
        shown = weight >= min_weight
        out = torch.nn.functional.normalize(features, dim=-1).clone()
        out[shown] = torch.nn.functional.normalize(total[shown], dim=-1)
        if shown.any() and not shown.all():
            means = self.gaussians.means.numpy()
            _, nearest = cKDTree(means[shown.numpy()]).query(means[~shown.numpy()])
            out[~shown] = out[shown][torch.as_tensor(nearest)]
        return out


def final_feature_health(params: dict[str, Tensor], views: dict[str, tuple[Camera, Tensor]],
                         labels: dict[str, Tensor], scene_name: str, cfg: TrainConfig) -> dict:
    """The feature separation of the trained model over `cfg.health_views` evenly spaced training
    views, and the collapse warning (None when the features separate)."""
    names = sorted(views)
    count = min(cfg.health_views, len(names))
    chosen = [names[round(i * (len(names) - 1) / max(count - 1, 1))] for i in range(count)] if count else []
    gaussians = Gaussians.from_params(params)
    measures = []
    with torch.no_grad():
        for name in dict.fromkeys(chosen):
            features = render(gaussians, views[name][0], features=params["features"], backend=cfg.backend).features
            measures.append(feature_separation(features, labels[name][0], cfg.cc_min_pixels))
    measure = mean_separation(measures)
    return {"final": measure.as_dict() if measure else None, "views": len(set(chosen)),
            "collapse_between": cfg.collapse_between,
            "warning": collapse_warning(measure, scene_name, len(set(chosen)), cfg.collapse_between)}


def train_with_oom_retries(scene: Scene, store: MaskStore, out_dir: Path, train_cfg, progress=None):
    """`train`, retried at twice the image downscale after a CUDA out-of-memory error, up to
    `train_cfg.oom_retries` times; says so in the log. Returns the result and the downscale used."""
    downscale = train_cfg.downscale
    for attempt in range(train_cfg.oom_retries + 1):
        try:
            return train(scene, store, out_dir, replace(train_cfg, downscale=downscale), progress), downscale
        except torch.OutOfMemoryError as exc:
            if attempt == train_cfg.oom_retries:
                raise TrainingError(f"{scene.name}: out of GPU memory at train.downscale={downscale} after "
                                    f"{attempt} retries; raise train.downscale or use a larger GPU") from exc
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            logger.warning(
                "%s: CUDA out of memory while training at train.downscale=%d; retrying at train.downscale=%d "
                "(resuming from the newest checkpoint)", scene.name, downscale, downscale * 2)
            downscale *= 2
    raise AssertionError("unreachable")


def feature_renderer(params: dict[str, Tensor], scene: Scene, backend: str = "auto",
                     sh_degree: int | None = None) -> Callable[[str], Tensor]:
    """A function from a view name to its rendered [H, W, D] feature map (for `evaluate_scene`)."""
    gaussians = Gaussians.from_params(params)

    @torch.no_grad()
    def render_features(name: str) -> Tensor:
        return render(gaussians, scene.cameras[name], features=params["features"], sh_degree=sh_degree,
                      backend=backend).features

    return render_features
