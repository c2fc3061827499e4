"""`cgc`: the command line for everything outside Prefect (stages run through the same cached code).

    cgc synthetic --out DIR [--preset demo|hard|tiny]   write the embedded scene (LERF-Mask layout)
    cgc scene-info PATH                                  read a dataset and summarise it
    cgc calibrate --scene SOURCE [--force]               run (or reuse) the calibrate stage
    cgc masks run --scene SOURCE [--force]               run (or reuse) the masks stage
    cgc masks show --scene SOURCE --image NAME [-o PNG]  overlay one image's stored masks
    cgc config [--config FILE] [--set k=v ...]           print the resolved config as YAML

Every command takes `--config FILE` and repeated `--set section.field=value` overrides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml

from .config import ConfigError, load_config, to_dict

app = typer.Typer(help="Contrastive Gaussian Clustering: scenes, calibration and benchmarks.", no_args_is_help=True)
masks_app = typer.Typer(help="Automatic 2D masks: generate and look at them.", no_args_is_help=True)
app.add_typer(masks_app, name="masks")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML config file")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override: section.field=value (repeatable)")]


def _config(config: Optional[Path], overrides: Optional[list[str]]):
    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


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
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
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
    """Run (or reuse) the calibrate stage of one scene, without Prefect."""
    _, result = _calibrated(_config(config, set_), scene, force=force)
    info = result.manifest.info
    typer.echo(f"{result.reason}; {info.get('n_registered')}/{info.get('n_images')} registered, "
               f"{info.get('n_points')} points -> {result.stage_dir}")


def _calibrated(cfg, scene_source: str, force: bool = False):
    """The calibrated scene and the calibrate stage's result; errors end the command with code 1."""
    from .calibrate import CalibrationError
    from .pipeline import calibrate_stage, scene_stage
    from .scene import SceneError

    try:
        loaded, _ = scene_stage(cfg, scene_source)
        return calibrate_stage(cfg, loaded, force=force)
    except (CalibrationError, SceneError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@masks_app.command("run")
def masks_run(scene: Annotated[str, typer.Option(help="synthetic, synthetic-<preset>, or a dataset folder")],
              force: bool = False, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Run (or reuse) the masks stage of one scene (calibrating first if needed), without Prefect."""
    from .masks.generators import MaskGeneratorError
    from .pipeline import masks_stage

    cfg = _config(config, set_)
    calibrated, _ = _calibrated(cfg, scene)

    def progress(done: int, total: int, name: str) -> None:
        typer.echo(f"\rmasks: {done}/{total} {name}", nl=done == total)

    try:
        store, result = masks_stage(cfg, calibrated, force=force, progress=progress)
    except MaskGeneratorError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    info = result.manifest.info
    typer.echo(f"{result.reason}; {info.get('images')} images ({info.get('reused')} reused) -> {store.root}")


@masks_app.command("show")
def masks_show(scene: Annotated[str, typer.Option(help="scene source, as for `cgc masks run`")],
               image: Annotated[str, typer.Option(help="image name, e.g. view_001.png")],
               out: Annotated[Optional[Path], typer.Option("-o", "--out", help="PNG to write")] = None,
               min_area: int = 0, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Write an overlay PNG of one image's stored masks (label map, smaller masks on top)."""
    from .masks.overlay import write_overlay
    from .masks.store import MaskStore, MaskStoreError
    from .pipeline import safe_name, scene_dir, scene_name_of

    cfg = _config(config, set_)
    calibrated, _ = _calibrated(cfg, scene)
    store = MaskStore(scene_dir(cfg, scene_name_of(scene)) / "masks" / "store")
    out = out or scene_dir(cfg, scene_name_of(scene)) / "mask_overlays" / f"{safe_name(Path(image).stem)}.png"
    try:
        path = write_overlay(calibrated.load_image(image), store.read_label_map(image, min_area=min_area), out)
    except MaskStoreError as exc:
        typer.echo(f"error: {exc} (run `cgc masks run --scene {scene}` first)", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"wrote {path}")


if __name__ == "__main__":
    app()
