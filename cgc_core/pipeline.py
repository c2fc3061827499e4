"""The benchmark's stages as plain functions: what each reads, how it is keyed, where it writes.

Every `*_stage` function has one signature, `(cfg, scene, upstream, force, progress) -> StageRun`:
the root config, the scene (its source string for the scene stage), the results of the stages it
reads by name, and back the scene for the next stages with this stage's `StageResult` (its typed
outputs, from `run_stage`). So any orchestrator (the Prefect flow in `flows/`, the `cgc` CLI, a
notebook) runs the same cached, crash-safe stage. Stage outputs live in `<data_dir>/<scene>/<stage>/`.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping, NamedTuple

from .calibrate import apply_calibration, calibrate, resolve_camera_model, resolve_mode
from .cluster import ClusterOutputs, cluster_scene
from .config import CgcConfig, SyntheticConfig, section_hash
from .evaluate import (EvaluateOutputs, check_protocol_weights, evaluate_model, protocol_queries, resolve_protocols,
                       selection_protocol)
from .fingerprint import code_fingerprint
from .gaussians import load_ply
from .hierarchy import ClusterTree
from .masks.generators import generate_scene_masks, make_generator
from .masks.store import MasksOutputs
from .report import ReportOutputs, build_report
from .scene import Scene, SceneError, load_scene, read_photos
from .scene.synthetic import read_synthetic_scene, source_preset, write_synthetic_scene
from .scene.video import extract_frames, is_video
from .selection import Selector
from .stage import StageResult, cached_only, digest, hash_file, run_stage, safe_name
from .render import feature_renderer
from .train import TrainOutputs, train_with_oom_retries


class StageRun(NamedTuple):
    """What every stage function returns: the scene for the next stages (calibrated from
    `calibrate` on) and the stage's result (None for a dataset folder read in place)."""

    scene: Scene
    result: StageResult | None


Upstream = Mapping[str, StageResult]
"""The results of the stages a stage reads, by stage name."""

logger = logging.getLogger("cgc")


@dataclass(frozen=True)
class StageSpec:
    """One stage of the DAG, declared once: `run_scene_stage`, `with_downstream`, the `cgc-scene`
    flow and its one generic Prefect task (`tasks.stage`) all read these.

    Attributes:
        name: The stage's name (its folder under `<data>/<scene>/`, its task's name).
        reads: The stages whose outputs it takes (the DAG's edges).
        run: The stage function: (cfg, scene, {read stage: its StageResult}, force, progress) ->
            `StageRun`. The scene stage gets the scene's source string instead of a Scene.
        progress_every: Log its progress every this many steps (0: it reports none).
        needs_query_weights: Its work loads the evaluation protocol's models, whose weights are
            checked before any stage runs.
        code: The code it runs, as `fingerprint.code_fingerprint` roots: its stage function here
            and the library modules that do the work (their imports follow). Part of its key.
    """

    name: str
    reads: tuple[str, ...]
    run: Callable[..., StageRun] | None
    progress_every: int = 0
    needs_query_weights: bool = False
    code: tuple[str, ...] = ()


def stage_code(stage: str) -> dict[str, str]:
    """The fingerprint of the code stage `stage` runs (`StageSpec.code`), for its cache key."""
    return code_fingerprint(*SPECS[stage].code)


def with_downstream(stages) -> set[str]:
    """The stages plus every stage that (transitively) reads their output: what a forced
    recomputation of `stages` must also recompute."""
    unknown = set(stages) - set(SPECS)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages are {list(SPECS)}")
    return _closure(stages, lambda stage: [s.name for s in SPECS.values() if stage in s.reads])


def _closure(start, neighbours: Callable[[str], list[str]]) -> set[str]:
    """The stages reachable from `start` through `neighbours` (readers or reads), `start` included."""
    out, todo = set(), list(start)
    while todo:
        stage = todo.pop()
        if stage not in out:
            out.add(stage)
            todo.extend(neighbours(stage))
    return out


def scene_dir(cfg: CgcConfig, scene_name: str) -> Path:
    """`<data_dir>/<scene>`: every stage output of one scene."""
    return Path(cfg.data_dir) / safe_name(scene_name)


def scene_name_of(source: str) -> str:
    """The data-folder name of a scene source: the embedded scene's name, or the dataset folder's name."""
    if source_preset(source, configured="") is not None:
        return source
    return Path(source).stem if is_video(source) else Path(source).name


def scene_stage(cfg: CgcConfig, source: str, upstream: Upstream | None = None, force: bool = False,
                progress: Callable | None = None) -> StageRun:
    """Load a scene; the synthetic one is first rendered into `<data>/<name>/scene/` (a cached stage).

    Args:
        cfg: Root config (reads `synthetic` for the embedded scene).
        source: `synthetic`, `synthetic-<preset>`, a dataset folder in a supported layout, or a
            video file (its frames are extracted into the stage folder; `video` config).
        upstream: Nothing (the first stage); progress: not reported.
        force: Re-render the synthetic scene (re-extract the video's frames) even when cached.

    Returns:
        The `Scene`, and the stage result (None for a dataset folder, which is read in place).
    """
    if is_video(source):  # frames extracted into the stage folder, then a photo folder
        name = scene_name_of(source)
        result = run_stage(scene_dir(cfg, name) / "scene", "scene", inputs={"video": hash_file(Path(source))},
                           config_section=cfg.video, compute=lambda tmp: extract_frames(source, tmp, cfg.video),
                           force=force, code=stage_code("scene"))
        return StageRun(read_photos(result.stage_dir, name=name), result)
    preset = source_preset(source, cfg.synthetic.preset)
    if preset is None:
        return StageRun(load_scene(source), None)
    syn_cfg = replace(cfg.synthetic, preset=preset)
    result = run_stage(
        scene_dir(cfg, source) / "scene", "scene", inputs={}, config_section=syn_cfg,
        compute=lambda tmp: _render_synthetic(syn_cfg, tmp), force=force, code=stage_code("scene"),
    )
    return StageRun(read_synthetic_scene(result.stage_dir, name=source), result)


def _render_synthetic(syn_cfg: SyntheticConfig, out_dir: Path) -> dict:
    write_synthetic_scene(syn_cfg, out_dir)
    scene = read_synthetic_scene(out_dir)
    return {"n_images": len(scene.image_names), "n_test": len(scene.test_names), "prompts": scene.prompts}


def image_hashes(scene: Scene, names: list[str]) -> dict[str, str]:
    """Content hash per image, keyed `image:<name>` (names may hold sub-folders, e.g. Blender's
    train/r_0.png and test/r_0.png)."""
    return {f"image:{n}": hash_file(scene.image_path(n)) for n in names}


def calibrate_inputs(cfg: CgcConfig, scene: Scene) -> dict[str, str]:
    """The calibrate stage's inputs: image contents, plus the shipped poses when they are used."""
    inputs = image_hashes(scene, scene.image_names)
    mode = resolve_mode(scene, cfg.calibrate)
    inputs["resolved"] = digest({"mode": mode, "camera_model": resolve_camera_model(scene, cfg.calibrate)})
    if mode == "known_poses":
        inputs["poses"] = digest({
            n: [c.K.round(9).tolist(), c.world_to_camera.round(12).tolist(), c.distortion_params]
            for n, c in sorted(scene.cameras.items())
        })
    return inputs


def calibrate_stage(cfg: CgcConfig, scene: Scene, upstream: Upstream | None = None, force: bool = False,
                    progress: Callable[[int, int, str], None] | None = None) -> StageRun:
    """Calibrate (or reuse the calibration of) a scene; returns the calibrated scene and the stage
    result. `progress(done, total, what)` follows feature extraction and matching."""
    # Checked before the key is computed: a bad image is an error naming it, never a COLMAP failure.
    scene.check_images(single_size=cfg.calibrate.single_camera and not scene.has_poses)

    def compute(tmp: Path) -> dict:
        summary = calibrate(scene, tmp, cfg.calibrate, progress)
        return {
            "mode": summary.mode, "camera_model": summary.camera_model, "n_images": summary.n_images,
            "n_registered": len(summary.registered), "registered_share": summary.registered_share,
            "n_points": summary.n_points, "timings": summary.timings,
        }

    result = run_stage(
        scene_dir(cfg, scene.name) / "calibrate", "calibrate", calibrate_inputs(cfg, scene),
        cfg.calibrate, compute, force=force, code=stage_code("calibrate"),
    )
    return StageRun(apply_calibration(scene, result.stage_dir), result)


def masks_stage(cfg: CgcConfig, scene: Scene, upstream: Upstream | None = None, force: bool = False,
                progress: Callable[[int, int, str], None] | None = None) -> StageRun:
    """Automatic masks of the training images in `<data>/<scene>/masks/store/` (resumable per
    image; the result's outputs are `masks.store.MasksOutputs`, its `store` the `MaskStore`).

    Keyed on the training images' content, the generator's name, version and config.
    """
    generator = make_generator(cfg.masks, scene)
    inputs = image_hashes(scene, scene.train_names)
    inputs["generator"] = digest({"name": generator.name, "version": generator.version,
                                  "config": generator.config_hash})

    def compute(work: Path) -> dict:
        counts = generate_scene_masks(scene, MasksOutputs(work).store, generator, progress)
        return {"generator": generator.name, "generator_version": generator.version, **counts}

    return StageRun(scene, run_stage(scene_dir(cfg, scene.name) / "masks", "masks", inputs, cfg.masks, compute,
                                     force=force, resumable=True, code=stage_code("masks")).as_outputs(MasksOutputs))


def train_stage(cfg: CgcConfig, scene: Scene, upstream: Upstream, force: bool = False,
                progress: Callable[[int, int, dict], None] | None = None) -> StageRun:
    """Train the feature field in `<data>/<scene>/train/` (its files: `train.TrainOutputs`) from
    `upstream["masks"]` and `upstream["calibrate"]`.

    Keyed on the calibration and masks stages' keys (their inputs and configs) and the train
    config; a killed or failed run resumes from its newest checkpoint.
    """
    masks = upstream["masks"]
    inputs = {"calibrate": upstream["calibrate"].manifest.key, "masks": masks.manifest.key}
    if cfg.train.init_ply:  # a model to start from is an input: its content keys the stage
        inputs["init_ply"] = hash_file(Path(cfg.train.init_ply))

    def compute(work: Path) -> dict:
        result, downscale = train_with_oom_retries(scene, masks.outputs.store, work, cfg.train,
                                                   progress)
        return {"steps": result.steps, "schedule": cfg.train.schedule, "seconds": round(result.seconds, 2),
                "resumed_from": result.resumed_from,
                "n_gaussians": int(result.params["means"].shape[0]), "downscale": downscale}

    return StageRun(scene, run_stage(scene_dir(cfg, scene.name) / "train", "train", inputs, cfg.train, compute,
                                     force=force, resumable=True, code=stage_code("train")).as_outputs(TrainOutputs))


def cluster_stage(cfg: CgcConfig, scene: Scene, upstream: Upstream, force: bool = False,
                  progress: Callable[[int, int, str], None] | None = None) -> StageRun:
    """Cluster the trained Gaussians (`upstream["train"]`) into 3D objects in `<data>/<scene>/cluster/` (`cluster.cluster_scene`:
    the files are `cluster.ClusterOutputs`), keyed on the trained model, the cluster and query
    config, the evaluation protocols (the prompts' objects are selected with their queries) and the
    query weights. `progress(done, total, what)` follows the clustering and the consistent masks' views.
    """
    trained = upstream["train"]

    def compute(work: Path) -> dict:
        params = load_ply(trained.outputs.ply)
        selector = Selector.from_config(cfg)
        queries, protocol = {}, None
        if any(scene.gt_masks.values()):  # the prompts' objects, selected with the evaluation's queries
            protocol = selection_protocol(cfg, scene)
            queries = protocol_queries(protocol, scene, feature_renderer(params, scene, cfg.train.backend), selector)
        summary = cluster_scene(params, scene, selector, queries, protocol, ClusterOutputs(work), cfg.cluster,
                                cfg.train.backend, progress, cfg.train.depth_split)
        return {k: v for k, v in summary.items() if k in ("n_clusters", "cluster_seconds", "ari", "mean_object_iou",
                                                          "mean_selection_iou")}

    return StageRun(scene, run_stage(scene_dir(cfg, scene.name) / "cluster", "cluster",
                                     {"train": trained.manifest.key, **weight_stamps(cfg)},
                                     (cfg.cluster, cfg.query, cfg.evaluate.protocol, cfg.evaluate.ovs_queries),
                                     compute, force=force, code=stage_code("cluster")).as_outputs(ClusterOutputs))


def weight_stamps(cfg: CgcConfig) -> dict[str, str]:
    """Size and modification time of the configured query weights (SAM, Grounding DINO), so that a
    replaced weights file recomputes what used it, without hashing gigabytes on every run."""
    stamps = {}
    for key, path in (("query.sam.checkpoint", cfg.query.sam.checkpoint), ("query.gdino_checkpoint",
                                                                           cfg.query.gdino_checkpoint)):
        if path is not None and Path(path).is_file():
            st = Path(path).stat()
            stamps[f"weights:{key}"] = f"{st.st_size}:{st.st_mtime_ns}"
    return stamps


def evaluate_stage(cfg: CgcConfig, scene: Scene, upstream: Upstream, force: bool = False,
                   progress: Callable | None = None) -> StageRun:
    """Evaluation of the trained model (`upstream["train"]`) on the scene's ground truth under every
    configured protocol (`evaluate.protocol`), in `<data>/<scene>/evaluate/`.

    Writes predictions per protocol (LERF-Mask result layout), every protocol's rows and a summary
    (`evaluate.evaluate_model`, `evaluate.EvaluateOutputs`). A scene without ground truth is
    recorded as skipped. Keyed on the trained model, the ground truth, the query weights, the
    evaluate and query sections, and under `click-oracle-steps` the cluster stage's output, whose
    tree (`upstream["cluster"]`, the one `cgc export` and the viewer walk) the steps climb.
    """
    trained, clustered = upstream["train"], upstream["cluster"]
    gt_files = [p for masks in scene.gt_masks.values() for p in masks.values()]
    steps = "click-oracle-steps" in resolve_protocols(cfg.evaluate.protocol, scene.layout, cfg.evaluate.ovs_queries)
    inputs = {"train": trained.manifest.key, **({"cluster": clustered.manifest.key} if steps else {}),
              **{f"gt:{p.parent.name}/{p.name}": hash_file(p) for p in gt_files}, **weight_stamps(cfg)}

    def compute(work: Path) -> dict:
        params = load_ply(trained.outputs.ply) if gt_files else None
        tree = ClusterTree.from_json(clustered.outputs.tree) if steps and gt_files else None
        summary = evaluate_model(params, scene, cfg, work, tree)
        return {k: v for k, v in summary.items() if k not in ("prompts", "protocols")}

    return StageRun(scene, run_stage(scene_dir(cfg, scene.name) / "evaluate", "evaluate", inputs, (cfg.evaluate, cfg.query),
                                     compute, force=force, code=stage_code("evaluate")).as_outputs(EvaluateOutputs))


def stage_record(result: StageResult | None, scene: Scene | None = None) -> dict:
    """What the run record keeps of one stage: folder, content key, cached or computed in this run, and
    the seconds its output took to compute (whenever that was)."""
    if result is None:  # a dataset folder read in place (no scene stage)
        return {"dir": str(scene.root) if scene else None, "key": None, "cached": True, "seconds": None}
    return {"dir": str(result.stage_dir.resolve()), "key": result.manifest.key, "cached": result.cached,
            "seconds": result.manifest.timings.get("compute_s")}


def record_scenes(cfg: CgcConfig, run_scenes: list[dict]) -> dict[str, Scene]:
    """The scenes of a run record's entries, for the report's figure strips: each as its scene stage
    wrote it, or its dataset folder; one that cannot be read is left out with a warning."""
    scenes = {}
    for entry in run_scenes:
        root = Path(entry["stages"].get("scene", {}).get("dir") or "")
        try:
            scenes[entry["scene"]] = (load_scene(root, name=entry["scene"]) if root.is_dir()
                                      else scene_stage(cfg, entry["scene"]).scene)
        except (SceneError, ValueError) as exc:
            logger.warning("%s: no figures (%s)", entry["scene"], exc)
    return scenes


def report_stage(cfg: CgcConfig, run_scenes: list[dict], force: bool = False) -> StageResult:
    """Write the run's report into `<reports_dir>/run-<key>/` (`report.ReportOutputs`).

    Args:
        cfg: Root config (reads `report` and `reports_dir`).
        run_scenes: One entry per scene: {"scene", "layout", "stages": {stage: `stage_record(...)`}};
            the figure strips read each scene's images from its folder (`record_scenes`).
        force: Rebuild even when a report of the same inputs exists.

    The folder is keyed on the content keys of every scene's cluster and evaluate outputs and the
    report config: rerunning an unchanged benchmark reuses the report (with the stage record of the
    run that wrote it); any changed number gives a new run folder.
    """
    inputs = {f"{e['scene']}:{stage}": e["stages"][stage]["key"] for e in run_scenes
              for stage in ("cluster", "evaluate") if stage in e["stages"]}
    run_id = "run-" + digest({"inputs": inputs, "report": section_hash(cfg.report)})[:12]

    def compute(work: Path) -> dict:
        record = {"run_id": run_id, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "scenes": run_scenes}
        ReportOutputs(work).run_record.write_text(json.dumps(record, indent=2))
        files = build_report(work, cfg.report, record_scenes(cfg, run_scenes))
        return {"run_id": run_id, "figures": len(files.figures), "report": files.html.name}

    return run_stage(Path(cfg.reports_dir) / run_id, "report", inputs, cfg.report, compute,
                     force=force, code=stage_code("report")).as_outputs(ReportOutputs)


def run_scene_stage(cfg: CgcConfig, source: str, stage: str, force: bool = False,
                    progress: Callable | None = None, run_upstream: bool = False) -> StageRun:
    """Run one stage of one scene; every stage before it must already be finished (cached), unless
    `run_upstream`.

    Args:
        cfg: Root config.
        source: Scene source (`synthetic`, `synthetic-<preset>`, a dataset folder).
        stage: The name of one of `SCENE_SPECS`.
        force: Recompute the stage even when its output is current.
        progress: Passed to the masks and train stages.
        run_upstream: Compute the stages it reads (transitively) when they are missing, instead of
            raising; each is still reused when current.

    Returns:
        The (calibrated, from `calibrate` on) scene and the stage's result.

    Raises:
        StageMissingError: an upstream stage has no finished output for the current inputs and
            config (without `run_upstream`); the message names its folder.
    """
    names = [spec.name for spec in SCENE_SPECS]
    if stage not in names:
        raise ValueError(f"unknown scene stage {stage!r}; stages are {names} (the report runs over a whole run)")
    target = SPECS[stage]
    needed = _closure([stage], lambda name: SPECS[name].reads)  # the target and what it reads, transitively
    scene, results = source, {}
    for spec in (s for s in SCENE_SPECS if s.name in needed):
        upstream = {name: results[name] for name in spec.reads}
        if spec.name == stage:
            scene, results[spec.name] = spec.run(cfg, scene, upstream, force, progress)
        else:
            with nullcontext() if run_upstream else cached_only():
                scene, results[spec.name] = spec.run(cfg, scene, upstream, False, None)
        if spec.name == "scene" and target.needs_query_weights:
            check_protocol_weights(cfg, scene)  # the protocol's weights, before anything is loaded or computed
    return StageRun(scene, results[stage])


SCENE_SPECS = (
    StageSpec("scene", (), scene_stage, code=("cgc_core.pipeline:scene_stage", "cgc_core.pipeline:_render_synthetic",
                                              "cgc_core.scene.synthetic", "cgc_core.scene.video")),
    StageSpec("calibrate", ("scene",), calibrate_stage, progress_every=50,
              code=("cgc_core.pipeline:calibrate_stage", "cgc_core.pipeline:calibrate_inputs", "cgc_core.calibrate")),
    StageSpec("masks", ("calibrate",), masks_stage, progress_every=10,
              code=("cgc_core.pipeline:masks_stage", "cgc_core.masks.generators")),
    StageSpec("train", ("calibrate", "masks"), train_stage, progress_every=100,
              code=("cgc_core.pipeline:train_stage", "cgc_core.train")),
    StageSpec("cluster", ("train",), cluster_stage, progress_every=10, needs_query_weights=True,
              code=("cgc_core.pipeline:cluster_stage", "cgc_core.cluster", "cgc_core.evaluate", "cgc_core.selection")),
    StageSpec("evaluate", ("train", "cluster"), evaluate_stage, needs_query_weights=True,
              code=("cgc_core.pipeline:evaluate_stage", "cgc_core.evaluate")),
)
"""The per-scene stages in the order they run (each after the stages it reads)."""
REPORT_SPEC = StageSpec("report", ("cluster", "evaluate"), None,
                        code=("cgc_core.pipeline:report_stage", "cgc_core.pipeline:record_scenes", "cgc_core.report"))
"""Runs once over every scene of a benchmark run (`report_stage`)."""
SPECS = {spec.name: spec for spec in (*SCENE_SPECS, REPORT_SPEC)}
"""Every stage by name. The graph is read from here whenever it is needed, so adding a stage is one
new `StageSpec` in `SCENE_SPECS` (and `STAGES`, the command-line choices, follows)."""
STAGES = tuple(SPECS)
