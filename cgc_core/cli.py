"""`cgc`: the command line for everything outside Prefect (stages run through the same cached code).

    cgc synthetic --out DIR [--preset demo|hard|tiny]   write the embedded scene (LERF-Mask layout)
    cgc scene-info PATH                                  read a dataset and summarise it
    cgc calibrate --scene SOURCE [--force]               run (or reuse) the calibrate stage
    cgc masks run --scene SOURCE [--force]               run (or reuse) the masks stage
    cgc masks show --scene SOURCE --image NAME [-o PNG]  overlay one image's stored masks
    cgc stage NAME --scene SOURCE [--force]              run one stage; the stages before it must exist
    cgc cluster --scene SOURCE [--force]                 cluster the trained Gaussians (the cluster stage)
    cgc export --scene SOURCE (--object P | --cluster K | --click VIEW,ROW,COL) -o OUT.ply
    cgc report --run RUN_ID                              rebuild a run's report from its files
    cgc view --scene SOURCE [--port 8080]                the interactive viewer (viser, 127.0.0.1)
    cgc config [--config FILE] [--set k=v ...]           print the resolved config as YAML

Every command takes `--config FILE` and repeated `--set section.field=value` overrides.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
import yaml

from .config import EDIT_VIEW_SHARE, ConfigError, load_config, to_dict

app = typer.Typer(help="Contrastive Gaussian Clustering: scenes, calibration and benchmarks.", no_args_is_help=True)
masks_app = typer.Typer(help="Automatic 2D masks: generate and look at them.", no_args_is_help=True)
app.add_typer(masks_app, name="masks")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML config file")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override: section.field=value (repeatable)")]


def _fail(message: str, code: int = 1) -> NoReturn:
    """End the command with `error: message` on stderr; exit status 2 for bad usage, 1 for failed work."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _config(config: Optional[Path], overrides: Optional[list[str]]):
    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        _fail(str(exc), 2)


@app.command()
def config(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved configuration."""
    typer.echo(yaml.safe_dump(to_dict(_config(config, set_)), sort_keys=False))


@app.command()
def synthetic(out: Annotated[Path, typer.Option(help="Output folder")],
              preset: Annotated[Optional[str], typer.Option(help="demo, hard or tiny")] = None,
              config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Render the embedded synthetic scene into a folder in the LERF-Mask layout."""
    from .scene.synthetic import write_synthetic_scene

    cfg = _config(config, (set_ or []) + ([f"synthetic.preset={preset}"] if preset else []))
    path = write_synthetic_scene(cfg.synthetic, out)
    typer.echo(f"wrote {cfg.synthetic.preset} scene to {path}")


@app.command("scene-info")
def scene_info(path: Path, layout: Annotated[str, typer.Option(help="auto or a reader name")] = "auto") -> None:
    """Read a dataset folder and print what it holds."""
    from .scene import SceneError, load_scene

    try:
        scene = load_scene(path, layout=layout)
    except SceneError as exc:
        _fail(str(exc), 2)
    typer.echo(f"{scene.name}: layout {scene.layout}, {len(scene.image_names)} images "
               f"({len(scene.train_names)} train, {len(scene.test_names)} test), "
               f"{len(scene.cameras)} posed, {len(scene.prompts)} prompts, "
               f"{0 if scene.points is None else len(scene.points)} sparse points")
    for prompt in scene.prompts:
        views = sum(prompt in masks for masks in scene.gt_masks.values())
        typer.echo(f"  prompt {prompt!r}: ground truth in {views} view(s)")


@app.command("calibrate")
def calibrate_cmd(scene: Annotated[str, typer.Option(help="synthetic, synthetic-<preset>, or a dataset folder")],
                  force: bool = False, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Run (or reuse) the calibrate stage of one scene (and the scene stage before it), without Prefect."""
    _, result = _stage(_config(config, set_), scene, "calibrate", force=force, run_upstream=True)
    info = result.manifest.info
    typer.echo(f"{result.reason}; {info.get('n_registered')}/{info.get('n_images')} registered, "
               f"{info.get('n_points')} points -> {result.stage_dir}")


@masks_app.command("run")
def masks_run(scene: Annotated[str, typer.Option(help="synthetic, synthetic-<preset>, or a dataset folder")],
              force: bool = False, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Run (or reuse) the masks stage of one scene (calibrating first if needed), without Prefect."""
    def progress(done: int, total: int, name: str) -> None:
        typer.echo(f"\rmasks: {done}/{total} {name}", nl=done == total)

    _, result = _stage(_config(config, set_), scene, "masks", force=force, progress=progress, run_upstream=True)
    info = result.manifest.info
    typer.echo(f"{result.reason}; {info.get('images')} images ({info.get('reused')} reused) -> "
               f"{result.outputs.store.root}")


@masks_app.command("show")
def masks_show(scene: Annotated[str, typer.Option(help="scene source, as for `cgc masks run`")],
               image: Annotated[str, typer.Option(help="image name, e.g. view_001.png")],
               out: Annotated[Optional[Path], typer.Option("-o", "--out", help="PNG to write")] = None,
               min_area: int = 0, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Write an overlay PNG of one image's stored masks (label map, smaller masks on top)."""
    from .masks.overlay import write_overlay
    from .masks.store import MaskStoreError, MasksOutputs
    from .pipeline import scene_dir, scene_name_of
    from .stage import safe_name

    cfg = _config(config, set_)
    calibrated, _ = _stage(cfg, scene, "calibrate", run_upstream=True)
    store = MasksOutputs(scene_dir(cfg, scene_name_of(scene)) / "masks").store
    out = out or scene_dir(cfg, scene_name_of(scene)) / "mask_overlays" / f"{safe_name(Path(image).stem)}.png"
    try:
        path = write_overlay(calibrated.load_image(image), store.read_label_map(image, min_area=min_area), out)
    except MaskStoreError as exc:
        _fail(f"{exc} (run `cgc masks run --scene {scene}` first)")
    typer.echo(f"wrote {path}")


def _stage(cfg, scene: str, stage: str, force: bool = False, progress=None, run_upstream: bool = False):
    """Run one scene stage (with `run_upstream`, the stages it reads too, when missing); a missing
    upstream stage or bad input ends the command with code 1."""
    from .calibrate import CalibrationError
    from .evaluate import EvaluationSetupError
    from .models import ModelLoadError
    from .pipeline import run_scene_stage
    from .scene import SceneError
    from .stage import StageMissingError
    from .train import TrainingError

    try:
        return run_scene_stage(cfg, scene, stage, force=force, progress=progress, run_upstream=run_upstream)
    except StageMissingError as exc:
        _fail(f"{exc} (`cgc stage <name> --scene {scene}` runs one; `make demo` or the "
              "cgc-benchmark flow runs them all)")
    except (CalibrationError, SceneError, ModelLoadError, EvaluationSetupError, TrainingError, ValueError) as exc:
        _fail(str(exc))


@app.command("stage")
def stage_cmd(name: Annotated[str, typer.Argument(help="scene, calibrate, masks, train, cluster or evaluate")],
              scene: Annotated[str, typer.Option(help="synthetic, synthetic-<preset>, or a dataset folder")],
              force: bool = False, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Run (or reuse) one stage of one scene, without Prefect; the stages before it must be finished."""
    def progress(done: int, total: int, detail) -> None:
        if done == total or done % 100 == 0:
            # Training passes every loss term, the Gaussian count and the feature separation.
            text = " ".join(f"{k}={v:.4g}" for k, v in detail.items()) if isinstance(detail, dict) else ""
            typer.echo(f"{name}: {done}/{total} {text}".rstrip())

    _, result = _stage(_config(config, set_), scene, name, force=force, progress=progress)
    if result is None:
        typer.echo(f"{scene}: read in place (no stage output)")
        return
    typer.echo(f"{name}: {result.reason} -> {result.stage_dir}")
    if name == "train":
        warning = result.outputs.record.get("health", {}).get("warning")
        if warning:
            typer.echo(f"WARNING: {warning}", err=True)
    for key, value in result.manifest.info.items():
        if not isinstance(value, (dict, list)):
            typer.echo(f"  {key}: {value}")


@app.command("cluster")
def cluster_cmd(scene: Annotated[str, typer.Option(help="scene source, as for `cgc stage`")],
                force: bool = False, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Cluster the trained Gaussians into 3D objects (the cluster stage; training must be finished)."""
    stage_cmd("cluster", scene, force=force, config=config, set_=set_)


ObjectOpt = Annotated[Optional[list[str]], typer.Option("--object", help="prompt: a text query, or the click-oracle "
                      "query when no detector is configured and the scene has ground truth for it")]
ClickOpt = Annotated[Optional[list[str]], typer.Option("--click", help="VIEW,ROW,COL: the feature of this pixel")]
ClusterOpt = Annotated[Optional[list[int]], typer.Option("--cluster", help="cluster id from `cgc cluster`")]
LevelOpt = Annotated[Optional[int], typer.Option(help="granularity of --object/--click on a model trained with several "
                     "mask levels: 0 = parts, higher = whole objects (default: query.level)")]
CoarserOpt = Annotated[int, typer.Option(help="coarser steps from --object/--click up the tree of the cluster stage's "
                       "clusters: a clicked part grows to its whole object")]


def _selection(cfg, scene: str, objects: list[str], clicks: list[str], clusters: list[int], level: int | None,
               coarser: int, view_share: float | None = None):
    """The trained model, its calibrated scene, the union of the given selections ([N] boolean,
    through the selection service; with `view_share`, as an edit takes it: `edit.edit_selection`
    lifted from the training views) and how to name them; a bad selection ends the command."""
    import numpy as np

    from .gaussians import load_ply, read_ply_attribute
    from .hierarchy import ClusterTree
    from .render import feature_renderer
    from .selection import Selector
    from .stage import SUMMARY

    if coarser < 0:
        _fail(f"--coarser {coarser}: steps must be >= 0", 2)
    calibrated, trained = _stage(cfg, scene, "train")
    params = load_ply(trained.outputs.ply)
    keep = np.zeros(len(params["means"]), bool)
    if clusters or coarser:
        _, clustered = _stage(cfg, scene, "cluster")
    labels = read_ply_attribute(clustered.outputs.clusters_ply, "cluster") if clusters else None
    for cluster in clusters:
        if not (labels == cluster).any():
            _fail(f"cluster {cluster} does not exist (clusters 0..{labels.max()}; see "
                  f"{clustered.outputs.folder / SUMMARY})")
        keep |= labels == cluster
    if objects or clicks:
        selector = Selector.from_config(cfg)
        if level is not None:
            if not 0 <= level < selector.levels:
                _fail(f"--level {level}: the model has levels 0..{selector.levels - 1} "
                      f"(train.contrastive.mask_levels={cfg.train.contrastive.mask_levels})", 2)
            selector = selector.at_level(level)
        render_features = feature_renderer(params, calibrated, cfg.train.backend)
        queries = []
        for click in clicks:
            try:
                view, row, col = click.split(",")
                queries.append(selector.click(render_features(view), [(int(row), int(col))], view))
            except (ValueError, KeyError, IndexError) as exc:
                _fail(f"--click {click!r}: expected VIEW,ROW,COL inside a calibrated view ({exc})", 2)
        queries += [_object_query(cfg, calibrated, render_features, selector, prompt) for prompt in objects]
        features = [q.feature for q in queries]
        if coarser:
            try:
                tree = ClusterTree.from_json(clustered.outputs.tree)
            except ValueError as exc:
                _fail(str(exc))
            features = [f for q in queries for f in tree.step_features(q.feature, coarser)]
        if view_share is None:
            keep |= selector.gaussians(params, features)
        else:
            from .edit import edit_selection

            keep |= edit_selection(selector, params, features, [calibrated.cameras[n] for n in calibrated.train_names],
                                   view_share)
    what = ", ".join([*(repr(o) for o in objects), *(f"click {c}" for c in clicks), *(f"cluster {k}" for k in clusters)])
    return calibrated, params, keep, what


@app.command("export")
def export_cmd(scene: Annotated[str, typer.Option(help="scene source, as for `cgc stage`")],
               out: Annotated[Path, typer.Option("-o", "--out", help=".ply file to write")],
               object_: ObjectOpt = None, cluster: ClusterOpt = None, click: ClickOpt = None,
               level: LevelOpt = None, coarser: CoarserOpt = 0,
               config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Write the selected objects' Gaussians to their own .ply (same attributes as the trained model)."""
    import numpy as np

    from .cluster import export_selection

    objects, clicks, clusters = object_ or [], click or [], cluster or []
    if not (objects or clicks or clusters):
        _fail("give --object, --click or --cluster (each may be repeated)", 2)
    _, params, keep, what = _selection(_config(config, set_), scene, objects, clicks, clusters, level, coarser)
    try:
        path = export_selection(params, keep, out)
    except ValueError as exc:
        _fail(f"{exc}: {what} selects no Gaussian (lower query.threshold?)")
    typer.echo(f"wrote {int(np.count_nonzero(keep))} of {len(keep)} Gaussians to {path}")


@app.command("edit")
def edit_cmd(scene: Annotated[str, typer.Option(help="scene source, as for `cgc stage`")],
             out: Annotated[Path, typer.Option("-o", "--out", help="edited .ply to write (the trained model is "
                                               "never changed)")],
             remove: Annotated[bool, typer.Option("--remove", help="remove the selected objects")] = False,
             keep: Annotated[bool, typer.Option("--keep", help="keep only the selected objects")] = False,
             object_: ObjectOpt = None, cluster: ClusterOpt = None, click: ClickOpt = None,
             level: LevelOpt = None, coarser: CoarserOpt = 0,
             grow: Annotated[float, typer.Option(help="also take the Gaussians within this many neighbour "
                             "spacings of the selection whose feature matches it loosely (cosine >= 0.5); 0: off")] = 0.0,
             floaters: Annotated[float, typer.Option(help="with --remove, also drop Gaussians fainter than this "
                                 "opacity next to what was removed; 0: off")] = 0.0,
             view_share: Annotated[float, typer.Option(help="take a Gaussian when this share of its blending weight in "
                                   "the training views paints selected pixels; 0: by its own feature")] = EDIT_VIEW_SHARE,
             views: Annotated[int, typer.Option(help="before/after strips written beside the .ply")] = 3,
             config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Remove the selected objects from the scene, or keep only them; writes the edited .ply, before/after
    strips (`<out>_before_after/`) and a turntable of the edited model (`<out>_turntable.gif`)."""
    from .edit import EditError, edit_gaussians, write_edit_figures
    from .gaussians import save_ply
    from .pipeline import scene_dir, scene_name_of

    if remove == keep:
        _fail("give exactly one of --remove and --keep", 2)
    objects, clicks, clusters = object_ or [], click or [], cluster or []
    if not (objects or clicks or clusters):
        _fail("give --object, --click or --cluster (each may be repeated)", 2)
    cfg = _config(config, set_)
    stages = scene_dir(cfg, scene_name_of(scene)).resolve()  # checked before any work
    if out.suffix != ".ply" or out.resolve().is_relative_to(stages):
        _fail(f"{out}: write the edited model as a .ply outside the stage folders ({stages}), which it would "
              "overwrite or leave stale", 2)
    calibrated, params, selected, what = _selection(cfg, scene, objects, clicks, clusters, level, coarser,
                                                    view_share=view_share)
    try:
        edit = edit_gaussians(params, selected, "remove" if remove else "keep", grow_radius=grow,
                              floater_opacity=floaters, what=what)
    except EditError as exc:
        _fail(str(exc))
    path = save_ply(edit.params, out)
    figures = write_edit_figures(params, edit.params, {n: calibrated.cameras[n] for n in
                                                       calibrated.test_names + calibrated.train_names
                                                       if n in calibrated.cameras},
                                 out.with_suffix(""), views=views, backend=cfg.train.backend,
                                 background=cfg.train.background)
    typer.echo(f"{'removed' if remove else 'kept'} {what}: {int(edit.kept.sum())} of {len(edit.kept)} Gaussians left "
               f"(grown {int(edit.grown.sum())}, floaters {int(edit.floaters.sum())}) -> {path}; before/after in "
               f"{figures['strips'][0].parent}, turntable {figures['turntable']}")


def _object_query(cfg, scene, render_features, selector, prompt: str):
    """A text query (Grounding DINO + SAM) when the detector's weights are configured; otherwise the
    click-oracle query (deepest pixel of the ground truth) for a prompt with ground truth."""
    from .evaluate import protocol_queries
    from .models import ModelLoadError

    if cfg.query.gdino_checkpoint or cfg.query.allow_random_weights:
        view = scene.test_names[0] if scene.test_names else scene.train_names[0]
        try:
            image = (scene.load_image(view) * 255 + 0.5).astype("uint8")
            query = selector.text(render_features(view), image, prompt, view)
        except ModelLoadError as exc:
            _fail(str(exc))
        if not query.detected:
            _fail(f"Grounding DINO found no {prompt!r} in {view}")
        return query
    queries = protocol_queries("click-oracle", scene, render_features, selector)
    if prompt not in queries:
        _fail(f"{prompt!r}: no text model configured (query.gdino_checkpoint) and no ground truth "
              f"for it; prompts with ground truth: {sorted(queries)}")
    typer.echo(f"{prompt!r}: no text model configured; using the click-oracle query (the deepest pixel of its "
               f"ground truth in {queries[prompt].view})")
    return queries[prompt]


@app.command("report")
def report_cmd(run: Annotated[str, typer.Option(help="run id (a folder under reports_dir) or a report folder")],
               config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Rebuild a run's report (Markdown, HTML, every row as Parquet, figures) from its run record."""

    from .pipeline import record_scenes
    from .report import ReportError, ReportOutputs, build_report

    cfg = _config(config, set_)
    folder = Path(run) if Path(run).is_dir() else Path(cfg.reports_dir) / run
    record = ReportOutputs(folder).run_record
    if not record.is_file():
        _fail(f"{record}: no run record (runs: {sorted(p.name for p in Path(cfg.reports_dir).glob('run-*'))})")
    try:
        entries = json.loads(record.read_text())["scenes"]
    except (ValueError, KeyError, TypeError) as exc:
        _fail(f"{record}: not a run record ({exc!r})")
    try:
        files = build_report(folder, cfg.report, record_scenes(cfg, entries))
    except ReportError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {files.html} ({len(files.figures)} figures), {files.markdown}, {files.results}")


@app.command("segment")
def segment_cmd(path: Annotated[Optional[str], typer.Argument(help="photos folder, video file, dataset folder, "
                                                               "or synthetic[-<preset>]")] = None,
                model: Annotated[Optional[Path], typer.Option(help="a trained 3DGS .ply: train only its features "
                                                               "(frozen geometry); give its images with --scene")] = None,
                scene: Annotated[Optional[str], typer.Option(help="the images and cameras --model was trained on")] = None,
                config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """From a capture to a segmented scene: calibrate -> masks -> train -> cluster, with progress
    bars; ends with the viewer command and the exported files."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    source = scene if model is not None else path
    if source is None or (model is not None and path is not None):
        _fail("give a PATH, or --model scene.ply with --scene PATH", 2)
    extra = ([f"train.init_ply={model.resolve()}", "train.frozen.enabled=true", "calibrate.mode=known_poses"]
             if model is not None else [])
    cfg = _config(config, [*extra, *(set_ or [])])
    columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[detail]}"),
               TimeRemainingColumn())
    with Progress(*columns, transient=False) as bars:
        for name in ("scene", "calibrate", "masks", "train", "cluster"):
            task = bars.add_task(name, total=None, detail="")

            def progress(done, total, detail, task=task):
                text = (f"loss {detail.get('photometric', detail.get('cc', 0.0)):.4g}  n {detail.get('n', 0)}"
                        if isinstance(detail, dict) else str(detail))
                bars.update(task, completed=done, total=total, detail=text)

            _, result = _stage(cfg, source, name, progress=progress)
            bars.update(task, total=1, completed=1, detail="cached" if result is None or result.cached else "done")
    clustered = result.outputs
    summary = clustered.summary
    typer.echo(f"{summary['n_clusters']} clusters of {summary['n_gaussians']} Gaussians")
    typer.echo(f"  scene with cluster ids: {clustered.clusters_ply}")
    typer.echo(f"  one .ply per cluster:   {clustered.folder} (cluster_XXX.ply)")
    if summary.get("instance_masks"):
        typer.echo(f"  consistent 2D masks:    {clustered.instance_masks} (a label PNG per view, COCO instances)")
    typer.echo(f"view it: cgc view --scene {source}" + "".join(f" --set {item}" for item in [*extra, *(set_ or [])]))


def _interrupt(signum, frame) -> NoReturn:
    raise KeyboardInterrupt


@app.command("view")
def view_cmd(scene: Annotated[str, typer.Option(help="scene source, as for `cgc stage`")],
             host: Annotated[str, typer.Option(help="interface to listen on; not loopback = reachable from the network")] = "127.0.0.1",
             port: int = 8080, max_side: int = 256,
             view: Annotated[Optional[str], typer.Option(help="camera (image name) to start at")] = None,
             config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Serve the trained scene in the browser: click to segment, see the selection in 3D, export it."""
    from .viewer import run_viewer

    cfg = _config(config, set_)
    _stage(cfg, scene, "train")  # a missing or stale model ends here with the stage's message
    # pycolmap (imported by then) installs glog's crash handler for SIGTERM, which prints a native
    # stack trace: a `kill` stops the viewer the way Ctrl-C does instead.
    signal.signal(signal.SIGTERM, _interrupt)
    run_viewer(cfg, scene, host, port, max_side, view)


view_app = typer.Typer(add_completion=False, help="The cgc viewer alone (`cgc view`).")
view_app.command()(view_cmd)
"""`cgc-view`: the same command as `cgc view`, as its own entry point."""


if __name__ == "__main__":
    app()
