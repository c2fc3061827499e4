"""Training of the CGC Gaussian feature field, as gsplat's example trainer organises it: a `Trainer`
holds the parameters, optimizers, densification strategy, label maps and step counter; each
`step()` renders one view through its `frames` source, sums the loss terms due at that step
(photometric, contrastive, regulariser: small objects that own their cadence and weights), steps
the optimizers and the strategy, and calls the hooks due (the depth cut, the health log).
`train()` is the stage's entry: build, resume from the newest valid checkpoint, step, finish.

Determinism: the view order of an epoch and the regulariser's samples are drawn from generators
seeded by (seed, epoch) and (seed, step), and the global torch RNG (used by densification) is
saved in every checkpoint, so a resumed run reproduces an uninterrupted one on CPU.
"""

from __future__ import annotations

import dataclasses
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

from .config import ContrastiveConfig, DensifyConfig, RegularizerConfig, TrainConfig, to_dict
from .gaussians import init_features, init_params, load_ply, save_ply
from .health import collapse_warning, feature_separation, mean_separation
from .losses import multilevel_contrastive_loss, photometric_loss, sample_neighbours, spatial_regularization
from .masks.depth_split import cut_at_depth_edges
from .masks.store import MaskStore
from .render import FrozenViews, Gaussians, render, resolve_backend
from .scene.model import Camera, Scene
from .stage import StageOutputs, hash_file

CHECKPOINT_DIR = "checkpoints"
logger = logging.getLogger("cgc")
PLY_NAME = "point_cloud.ply"
RECORD_NAME = "train.json"
"""The training record: steps, preset, every train value that ran, seconds, Gaussian count, health."""
SPLIT_LABELS_NAME = "depth_split_labels.npz"
"""The label maps cut at depth edges (`train.depth_split.at`), kept so that a resumed run reads the same."""


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
        loaded["features"] = init_features(loaded["means"].shape[0], seed=cfg.seed)
    return loaded


class NoDensification:
    """gsplat's strategy interface, doing nothing (`densify.strategy=none`, frozen geometry)."""

    def initialize_state(self, **_) -> dict:
        return {}

    def check_sanity(self, *_) -> None: ...
    def step_pre_backward(self, *_) -> None: ...
    def step_post_backward(self, *_, **__) -> None: ...


def densification_strategy(cfg: DensifyConfig):
    """gsplat's strategy object for the config (`NoDensification` for `none`), built from the
    config's fields of the same names; features are densified with the other parameters."""
    from gsplat.strategy import DefaultStrategy, MCMCStrategy

    cls = {"default": DefaultStrategy, "mcmc": MCMCStrategy}.get(cfg.strategy)
    if cls is None:
        return NoDensification()
    return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if hasattr(cfg, f.name)})


@dataclass
class Frame:
    """One view rendered for a step: colour (None where geometry is frozen on cached weights), the
    features (None on steps that do not read them) and the rasterizer's meta for densification."""

    rgb: Tensor | None
    features: Tensor | None
    meta: dict


class RasterizedFrames:
    """Every step through the rasterizer; the features are blended only on steps that read them
    (elsewhere their gradient is zero whatever is rendered: 4 channels instead of 20)."""

    def __init__(self, cfg: TrainConfig):
        self.backend = cfg.backend
        self.background = torch.tensor(cfg.background, dtype=torch.float32)
        self.idle_grad = cfg.contrastive.features_grad_between

    def __call__(self, params, name: str, camera: Camera, sh_degree: int, with_features: bool) -> Frame:
        out = render(Gaussians.from_params(params), camera, sh_degree=sh_degree,
                     background=self.background.to(params["means"].device),
                     features=params["features"] if with_features else None, backend=self.backend)
        return Frame(out.rgb, out.features, out.meta)

    def idle_features_grad(self, features: Tensor) -> Tensor | None:
        """The features' gradient on a step without a feature loss: `zero` (the released code's
        one-pass render hands them zeros, and Adam moves them on momentum) or `none` (Adam skips them)."""
        return torch.zeros_like(features) if self.idle_grad == "zero" else None

    def final_features(self, features: Tensor) -> Tensor:
        return features


class CachedWeightFrames:
    """Frozen geometry on the CPU: the blending weights never change, so each view's are computed
    once (`render.FrozenViews`) and the features render as one sparse product; no colour."""

    def __init__(self, params, cameras: dict[str, Camera], cfg: TrainConfig):
        self.views = FrozenViews(Gaussians.from_params({k: v.detach() for k, v in params.items()}),
                                 cameras, cfg.frozen.cache_gb * 2**30)
        self.back_project = cfg.frozen.back_project

    def __call__(self, params, name: str, camera: Camera, sh_degree: int, with_features: bool) -> Frame:
        return Frame(None, self.views.render(name, params["features"]) if with_features else None, {})

    def idle_features_grad(self, features: Tensor) -> Tensor | None:
        return None  # nothing was rendered: Adam leaves the features

    def final_features(self, features: Tensor) -> Tensor:
        """Back-projected (`FrozenViews.back_project`), so that Gaussians the contrastive steps barely
        reached agree with what they render, as 3D clustering needs."""
        return self.views.back_project(features) if self.back_project else features


@dataclass
class StepInputs:
    """What a loss term or hook reads on one step."""

    step: int
    view: str
    camera: Camera
    target: Tensor
    labels: Tensor
    frame: Frame
    params: torch.nn.ParameterDict


class PhotometricTerm:
    """3DGS's L1 + SSIM on the rendered colour, every step (only where the geometry trains)."""

    name, reads_features, trains_features = "photometric", False, False

    def due(self, step: int) -> bool:
        return True

    def __call__(self, inputs: StepInputs) -> Tensor:
        return photometric_loss(inputs.frame.rgb, inputs.target)


class ContrastiveTerm:
    """The contrastive clustering loss on the view's mask levels, every `every` steps, times `weight`."""

    name, reads_features, trains_features = "cc", True, True

    def __init__(self, cfg: ContrastiveConfig):
        self.cfg = cfg
        self.options = {"min_pixels": cfg.min_pixels, "temperature_scale": cfg.temperature_scale,
                        "temperature_clip": tuple(cfg.temperature_clip) if cfg.temperature_clip is not None else None,
                        "detach_temperature": cfg.detach_temperature, "reference_segments": cfg.reference_segments}

    def due(self, step: int) -> bool:
        return self.cfg.enabled and step % self.cfg.every == 0

    def __call__(self, inputs: StepInputs) -> Tensor:
        return self.cfg.weight * multilevel_contrastive_loss(inputs.frame.features, inputs.labels,
                                                             self.cfg.level_dims, **self.options)


class RegularizerTerm:
    """The spatial-similarity regulariser on sampled Gaussians and their near and far ones, every
    `every` steps; its samples are drawn from a generator seeded by (seed, step)."""

    name, reads_features, trains_features = "reg", False, True

    def __init__(self, cfg: RegularizerConfig, enabled: bool, seed: int):
        self.cfg, self.seed = cfg, seed
        self.enabled = enabled and bool(cfg.lambda_near or cfg.lambda_far)

    def due(self, step: int) -> bool:
        return self.enabled and step % self.cfg.every == 0

    def __call__(self, inputs: StepInputs) -> Tensor:
        cfg, params = self.cfg, inputs.params
        samples, near, far = sample_neighbours(
            params["means"], cfg.samples, cfg.k_near, cfg.l_far, cfg.max_points,
            generator=torch.Generator().manual_seed(self.seed * 1_000_003 + inputs.step),
            near_includes_self=cfg.near_includes_self)
        return spatial_regularization(params["features"], samples, near, far, lambda_near=cfg.lambda_near,
                                      lambda_far=cfg.lambda_far, sigmoid_of_mean=cfg.sigmoid_of_mean,
                                      far_similarity=cfg.far_similarity)


def uses_regularizer(cfg: TrainConfig) -> bool:
    """`regularizer.enabled`, where None is on except on frozen geometry: from U[0, 1) features on a
    finished model the regulariser collapsed the field, and the final back-projection gives the 3D
    agreement instead (RESULTS.md, "The train defaults")."""
    return not cfg.frozen.enabled if cfg.regularizer.enabled is None else cfg.regularizer.enabled


class HealthLog:
    """Every `health.every` steps and on the last: every loss term, the norm of each feature term's
    gradient on the features (which term moves them), the Gaussian count and the view's feature
    separation (`cgc_core.health`), appended to `history`."""

    def __init__(self, cfg: TrainConfig):
        self.every, self.iterations, self.min_pixels = cfg.health.every, cfg.iterations, cfg.contrastive.min_pixels
        self.history: list[dict] = []

    def due(self, step: int) -> bool:
        return bool(self.every) and (step % self.every == 0 or step + 1 == self.iterations)

    def gradients(self, losses: dict[str, Tensor], features: Tensor) -> dict[str, float]:
        norms = {}
        for key in ("cc", "reg"):
            if key in losses:
                (grad,) = torch.autograd.grad(losses[key], features, retain_graph=True, allow_unused=True)
                norms[f"grad_{key}"] = 0.0 if grad is None else float(grad.norm())
        return norms

    def record(self, inputs: StepInputs, latest: dict) -> dict:
        measure = feature_separation(inputs.frame.features.detach(), inputs.labels[0], self.min_pixels)
        latest |= {k: v for k, v in (measure.as_dict() if measure else {}).items() if k != "segments"}
        self.history.append({"step": inputs.step + 1, "view": inputs.view, **latest})
        return latest


class DepthCut:
    """At `depth_split.at` × iterations, every view's label maps are cut where the model's depth
    jumps (`depth_split_labels`); a run resumed after that step reads the stored cut."""

    def __init__(self, cfg: TrainConfig, path: Path):
        self.cfg, self.path = cfg, path
        self.at = round(cfg.depth_split.at * cfg.iterations) if cfg.depth_split.at > 0 else None
        self.record: dict | None = None

    def due(self, step: int) -> bool:
        return step == self.at

    def after_resume(self, step: int) -> bool:
        return self.at is not None and step > self.at

    def __call__(self, params, views, labels: dict[str, Tensor]) -> dict[str, Tensor]:
        cut, self.record = depth_split_labels(params, views, labels, self.cfg, self.path)
        return cut


def load_newest_checkpoint(out_dir: Path) -> tuple[dict, Path] | None:
    """The newest checkpoint whose checksum matches, that loads (weights only) and has every field;
    others are skipped with a warning on the `cgc` logger."""
    folder = out_dir / CHECKPOINT_DIR
    paths = sorted(folder.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1])) if folder.is_dir() else []
    for path in reversed(paths):
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


class Trainer:
    """The state of one training run and its steps (gsplat's `Runner`, for the CGC feature field).

    Attributes:
        params: The parameter dict (means, quats, scales, opacities, sh0, shN, features); where the
            geometry is frozen only `features` takes gradients.
        optimizers: One Adam per trained parameter.
        strategy, strategy_state: gsplat's densification strategy and its state.
        views, labels: Each training view's (camera, image) and [levels, H, W] label maps.
        frames: Renders a view for a step (`RasterizedFrames` or `CachedWeightFrames`).
        terms: The loss terms (`PhotometricTerm`, `ContrastiveTerm`, `RegularizerTerm`).
        health, depth_cut: The hooks called at their steps.
        step_count: Steps done; `resumed_from` the checkpoint step it restored, if any.
    """

    def __init__(self, scene: Scene, store: MaskStore, out_dir: str | Path, cfg: TrainConfig):
        if cfg.frozen.enabled and not cfg.init_ply:
            raise TrainingError("train.frozen.enabled needs train.init_ply: a trained 3DGS .ply to freeze")
        if not cfg.init_ply and (scene.points is None or len(scene.points) < 4):
            raise TrainingError(f"{scene.name}: no sparse points to initialise Gaussians from; run calibration first")
        self.scene, self.out_dir, self.cfg = scene, Path(out_dir), cfg
        # gsplat rasterizes on the GPU: the parameters, images and label maps live there too.
        self.device = torch.device("cuda" if resolve_backend(cfg.backend) == "gsplat" else "cpu")
        torch.manual_seed(cfg.seed)
        self.names = sorted(n for n in scene.train_names if n in scene.cameras)
        self.views = {}
        for n in self.names:
            camera, image = train_view(scene, n, cfg.downscale)
            self.views[n] = (camera, image.to(self.device))
        # The label maps feed the contrastive loss and the health measure (also when it is off).
        self.labels = {n: label_map_at(store, n, *self.views[n][1].shape[:2], cfg.contrastive.mask_levels).to(self.device)
                       for n in self.names}
        self.scale = scene_scale([scene.cameras[n] for n in self.names])
        initial = (model_params(cfg) if cfg.init_ply else init_params(
            scene.points, scene.point_colors, cfg.sh_degree, init_opacity=cfg.init_opacity, seed=cfg.seed))
        self._set_params(initial)
        self.strategy = NoDensification() if cfg.frozen.enabled else densification_strategy(cfg.densify)
        self.strategy_state = self.strategy.initialize_state(scene_scale=self.scale)
        self.step_count, self.resumed_from = 0, None
        self.health = HealthLog(cfg)
        self.depth_cut = DepthCut(cfg, self.out_dir / SPLIT_LABELS_NAME)
        cached = cfg.frozen.enabled and resolve_backend(cfg.backend) == "torch"
        self.frames = (CachedWeightFrames(self.params, {n: v[0] for n, v in self.views.items()}, cfg) if cached
                       else RasterizedFrames(cfg))
        self.terms = ([] if cfg.frozen.enabled else [PhotometricTerm()]) + [
            ContrastiveTerm(cfg.contrastive),
            RegularizerTerm(cfg.regularizer, uses_regularizer(cfg), cfg.seed)]
        self.latest: dict[str, float] = {}  # the last value of every term, also on steps that skip it
        self.last_good: Path | None = None
        self.started = time.perf_counter()

    def _set_params(self, values: dict[str, Tensor], optimizer_states: dict | None = None) -> None:
        frozen = self.cfg.frozen.enabled
        self.params = torch.nn.ParameterDict({k: torch.nn.Parameter(v.detach().clone().to(self.device),
                                                                    requires_grad=not frozen
                                                                    or k == "features") for k, v in values.items()})
        lr = self.cfg.lr
        rates = ({"features": lr.features} if frozen else {
            "means": lr.means * self.scale, "quats": lr.quats, "scales": lr.scales, "opacities": lr.opacities,
            "sh0": lr.sh0, "shN": lr.shN, "features": lr.features})
        self.optimizers = {k: torch.optim.Adam([{"params": self.params[k], "lr": rate, "name": k}], eps=1e-15)
                           for k, rate in rates.items()}
        if optimizer_states is not None:
            for k, optimizer in self.optimizers.items():
                optimizer.load_state_dict(optimizer_states[k])
        # A loaded model may hold fewer SH bands than `sh_degree`.
        self.model_sh_degree = math.isqrt(self.params["shN"].shape[1] + 1) - 1

    def restore(self) -> int | None:
        """Resume from the newest valid checkpoint in `out_dir` (parameters, optimizer moments,
        strategy state, RNG, health history, and the depth cut if it is past); its step, or None."""
        found = load_newest_checkpoint(self.out_dir)
        if found is not None:
            state, _ = found
            self._set_params(state["params"], state["optimizers"])
            self.strategy_state = state["strategy_state"]
            torch.set_rng_state(state["rng"])
            self.step_count = self.resumed_from = int(state["step"])
            self.health.history = list(state.get("health", []))
        self.strategy.check_sanity(self.params, self.optimizers)
        if self.depth_cut.after_resume(self.step_count):
            self.labels = self.depth_cut(self.params, self.views, self.labels)
        self.started = time.perf_counter()
        return self.resumed_from

    def save(self, step: int | None = None) -> Path:
        """An atomic checkpoint `checkpoints/step_XXXXXX.pt` with its checksum beside it."""
        step = self.step_count if step is None else step
        folder = self.out_dir / CHECKPOINT_DIR
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{step:06d}.pt"
        tmp = path.with_suffix(".pt.tmp")
        # Through a Python file object: a full disk then raises OSError(ENOSPC), where torch.save on a
        # path raises an opaque "unexpected pos" RuntimeError.
        with open(tmp, "wb") as handle:
            torch.save({"step": step, "params": {k: v.detach().cpu() for k, v in self.params.items()},
                        "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                        "strategy_state": self.strategy_state, "rng": torch.get_rng_state(),
                        "health": list(self.health.history)}, handle)
        # The checksum goes in first, then the checkpoint is renamed into place: every step_*.pt has
        # its .sha256, and a flipped byte in either is caught on resume.
        sidecar = path.with_suffix(".pt.sha256")
        sidecar_tmp = sidecar.with_suffix(".sha256.tmp")
        sidecar_tmp.write_text(hash_file(tmp))
        os.replace(sidecar_tmp, sidecar)
        os.replace(tmp, path)
        return path

    def view_at(self, step: int) -> str:
        """The training view of a step: each epoch visits every view once, in a seeded order."""
        epoch, index = divmod(step, len(self.names))
        order = torch.randperm(len(self.names), generator=torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch))
        return self.names[int(order[index])]

    def step(self) -> dict[str, float]:
        """One iteration; returns the latest value of every loss term (and `n`, the Gaussian count)."""
        step, cfg = self.step_count, self.cfg
        if self.depth_cut.due(step):
            self.labels = self.depth_cut(self.params, self.views, self.labels)
        name = self.view_at(step)
        camera, target = self.views[name]
        terms = [term for term in self.terms if term.due(step)]
        health = self.health.due(step)
        sh_degree = min(step // cfg.sh_degree_every, cfg.sh_degree, self.model_sh_degree)
        frame = self.frames(self.params, name, camera, sh_degree, any(t.reads_features for t in terms) or health)
        inputs = StepInputs(step, name, camera, target, self.labels[name], frame, self.params)
        losses = {term.name: term(inputs) for term in terms}
        loss = sum(losses.values(), torch.zeros(()))
        if health:
            self.latest |= self.health.gradients(losses, self.params["features"])
        if not torch.isfinite(loss):
            raise TrainingError(
                f"{self.scene.name}: loss became {loss.item()} at step {step}; the last good checkpoint is "
                f"{self.last_good or 'none yet'} (lower the learning rates and resume)")
        self.strategy.step_pre_backward(self.params, self.optimizers, self.strategy_state, step, frame.meta)
        if loss.requires_grad:  # frozen geometry on a step without a feature loss: nothing to learn
            loss.backward()
        if not any(t.trains_features for t in terms):
            self.params["features"].grad = self.frames.idle_features_grad(self.params["features"])
        self._optimizer_step(step)
        # MCMC's relocation noise follows the means' learning rate; the default strategy needs `packed`.
        extra = ({"lr": self.optimizers["means"].param_groups[0]["lr"]} if self.cfg.densify.strategy == "mcmc"
                 else {"packed": False})
        self.strategy.step_post_backward(self.params, self.optimizers, self.strategy_state, step, frame.meta, **extra)
        self.step_count = done = step + 1
        self.latest |= {k: float(v.detach()) for k, v in losses.items()} | {"n": int(self.params["means"].shape[0])}
        if health:
            self.latest = self.health.record(inputs, self.latest)
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.iterations:
            self.last_good = self.save()
        return dict(self.latest)

    def _optimizer_step(self, step: int) -> None:
        lr = self.cfg.lr
        decay = (lr.means_final / lr.means) ** (1.0 / max(self.cfg.iterations, 1))
        for group in self.optimizers["means"].param_groups if "means" in self.optimizers else ():
            group["lr"] = lr.means * self.scale * decay**step
        for optimizer in self.optimizers.values():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def finish(self) -> TrainResult:
        """Write the final model (`point_cloud.ply`, Gaussians with non-finite parameters left out),
        its last checkpoint and `train.json` (steps, schedule, seconds, health)."""
        cfg, out_dir = self.cfg, self.out_dir
        final = {k: v.detach() for k, v in self.params.items()}  # on the training device until saved
        final["features"] = self.frames.final_features(final["features"])
        final, diverged = drop_non_finite_gaussians(final)
        if diverged:
            logger.warning("%s: %d of %d Gaussians have non-finite parameters (diverged in training); left out of %s",
                           self.scene.name, diverged, diverged + final["means"].shape[0], out_dir / PLY_NAME)
        if cfg.iterations > (self.resumed_from or 0) or not (out_dir / PLY_NAME).exists():
            self.save(cfg.iterations)
        ply = save_ply(final, out_dir / PLY_NAME)
        seconds = time.perf_counter() - self.started
        final_health = final_feature_health(final, self.views, self.labels, self.scene.name, cfg)
        if final_health["warning"]:
            logger.warning("%s", final_health["warning"])
        (out_dir / RECORD_NAME).write_text(json.dumps({
            "steps": cfg.iterations, "schedule": cfg.schedule, "config": to_dict(cfg),
            "resumed_from": self.resumed_from, "seconds": seconds,
            "n_gaussians": int(final["means"].shape[0]), "non_finite_dropped": diverged, "scene_scale": self.scale,
            "depth_split": self.depth_cut.record, "health": {"history": self.health.history, **final_health},
        }, indent=2))
        return TrainResult({k: v.cpu() for k, v in final.items()}, cfg.iterations, seconds, self.resumed_from, ply)


def train(scene: Scene, store: MaskStore, out_dir: str | Path, cfg: TrainConfig,
          progress: Callable[[int, int, dict], None] | None = None) -> TrainResult:
    """Train (or resume training of) the scene's Gaussians with features.

    Args:
        scene: The calibrated scene (sparse points initialise the Gaussians).
        store: Masks of the training images (label maps for the contrastive loss).
        out_dir: Checkpoints go to `out_dir/checkpoints/`; the final model to `out_dir/point_cloud.ply`.
        cfg: The train config section (its preset already applied: `config.load_config`).
        progress: Called as progress(step, total, losses) after every iteration.

    Raises:
        TrainingError: a non-finite loss (the last good checkpoint is kept and named), or no points.
    """
    trainer = Trainer(scene, store, out_dir, cfg)
    trainer.restore()
    while trainer.step_count < cfg.iterations:
        latest = trainer.step()
        if progress is not None:
            progress(trainer.step_count, cfg.iterations, latest)
    return trainer.finish()


def drop_non_finite_gaussians(params: dict[str, Tensor]) -> tuple[dict[str, Tensor], int]:
    """The parameter dict without the Gaussians any of whose parameters is not finite, and how
    many those were. Such a Gaussian renders nothing (the projection culls it), so the loss never
    shows it, but every median, bound or viewer that reads the saved model would."""
    n = params["means"].shape[0]
    finite = torch.ones(n, dtype=torch.bool, device=params["means"].device)
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
    own, or only the finest with `cfg.depth_split.levels=finest`; `cut_at_depth_edges`), and a
    record of the mean number of segments per view before and after. Read from `path` when it is
    there (a resumed run), else computed and written there atomically."""
    cut = {}
    if path.is_file():
        with np.load(path) as stored:
            cut = {n: torch.as_tensor(stored[n]) for n in labels}
    else:
        gaussians = Gaussians.from_params({k: v.detach() for k, v in params.items()})

        # `finest`: only level 0 is cut; the object levels stay as generated.
        n_cut = 1 if cfg.depth_split.levels == "finest" else None
        with torch.no_grad():
            for name, (camera, _) in views.items():
                depth = render(gaussians, camera, sh_degree=0, backend=cfg.backend).depth.cpu().numpy()
                levels = labels[name].numpy()
                cut_levels = cut_at_depth_edges(levels[:n_cut], depth, cfg.depth_split, camera.K)
                cut[name] = torch.as_tensor(np.concatenate([cut_levels, levels[len(cut_levels):]]))
        path.parent.mkdir(parents=True, exist_ok=True)  # before the first checkpoint it may not exist yet
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **{n: v.numpy().astype(np.int32) for n, v in cut.items()})
        os.replace(tmp, path)

    def segments_per_view(maps: dict[str, Tensor]) -> float:
        return float(np.mean([len(torch.unique(v[0][v[0] > 0])) for v in maps.values()]))

    def supervised_share(maps: dict[str, Tensor]) -> float:
        # Pixels in a segment large enough for the contrastive loss (`contrastive.min_pixels`), finest level.
        shares = []
        for v in maps.values():
            counts = torch.bincount(v[0].flatten())
            shares.append(float(((v[0] > 0) & (counts[v[0]] >= cfg.contrastive.min_pixels)).float().mean()))
        return float(np.mean(shares))

    return cut, {"segments_per_view_before": segments_per_view(labels), "segments_per_view_after": segments_per_view(cut),
                 "supervised_share_before": supervised_share(labels), "supervised_share_after": supervised_share(cut)}


def final_feature_health(params: dict[str, Tensor], views: dict[str, tuple[Camera, Tensor]],
                         labels: dict[str, Tensor], scene_name: str, cfg: TrainConfig) -> dict:
    """The feature separation of the trained model over `cfg.health.views` evenly spaced training
    views, and the collapse warning (None when the features separate)."""
    names = sorted(views)
    count = min(cfg.health.views, len(names))
    chosen = [names[round(i * (len(names) - 1) / max(count - 1, 1))] for i in range(count)] if count else []
    gaussians = Gaussians.from_params(params)
    measures = []
    with torch.no_grad():
        for name in dict.fromkeys(chosen):
            features = render(gaussians, views[name][0], features=params["features"], backend=cfg.backend).features
            measures.append(feature_separation(features, labels[name][0], cfg.contrastive.min_pixels))
    measure = mean_separation(measures)
    return {"final": measure.as_dict() if measure else None, "views": len(set(chosen)),
            "collapse_between": cfg.health.collapse_between,
            "warning": collapse_warning(measure, scene_name, len(set(chosen)), cfg.health.collapse_between)}


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
