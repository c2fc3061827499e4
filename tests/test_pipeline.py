"""Stage definitions: names that become paths, and what the calibrate stage is keyed on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cgc_core.config import CgcConfig
from cgc_core.pipeline import calibrate_inputs, scene_dir, scene_name_of
from cgc_core.stage import safe_name
from cgc_core.scene import load_scene


@pytest.mark.parametrize(
    "name, expected",
    [("rubber duck with red hat", "rubber_duck_with_red_hat"), ("../../etc", "etc"), ("a/b\\c", "a_b_c"),
     ("synthetic-hard", "synthetic-hard"), ("..", None), ("  ", None)],
)
def test_safe_name_never_leaves_the_data_folder(name, expected, tmp_path):
    if expected is None:
        with pytest.raises(ValueError, match="no usable characters"):
            safe_name(name)
        return
    assert safe_name(name) == expected
    cfg = CgcConfig(data_dir=str(tmp_path))
    assert scene_dir(cfg, name).resolve().parent == tmp_path.resolve()


def test_scene_names_of_sources():
    assert scene_name_of("synthetic") == "synthetic"
    assert scene_name_of("synthetic-hard") == "synthetic-hard"
    assert scene_name_of("/datasets/lerf_mask/figurines") == "figurines"


def test_calibrate_inputs_follow_image_content_and_mode(tiny_scene_dir, tmp_path):
    copy = Path(shutil.copytree(tiny_scene_dir, tmp_path / "scene"))
    scene = load_scene(copy)
    cfg = CgcConfig()
    base = calibrate_inputs(cfg, scene)
    assert sum(k.startswith("image:") for k in base) == len(scene.image_names)
    assert "poses" not in base  # the synthetic scene's poses are never an input
    cfg_known = CgcConfig()
    cfg_known.calibrate.mode = "known_poses"
    assert "poses" in calibrate_inputs(cfg_known, scene)
    # same bytes under another folder: same key material; one changed byte: different
    assert calibrate_inputs(cfg, load_scene(tiny_scene_dir)) == base
    image = copy / "images" / scene.image_names[0]
    data = bytearray(image.read_bytes())
    data[-10] ^= 0xFF
    image.write_bytes(bytes(data))
    changed = calibrate_inputs(cfg, scene)
    assert changed != base
    assert {k for k in base if base[k] != changed[k]} == {f"image:{scene.image_names[0]}"}


def test_a_new_stage_is_one_spec(tiny_scene_dir, tmp_path, monkeypatch):
    # A trial stage that reads the scene stage: declaring its spec is all it takes for
    # run_scene_stage to run it (its upstream cached), and for a forced scene to recompute it.
    import json

    from cgc_core import pipeline
    from cgc_core.stage import run_stage

    def count_views(cfg, scene, upstream, force, progress):
        def compute(work):
            (work / "views.json").write_text(json.dumps(len(scene.image_names)))
            return {"views": len(scene.image_names)}

        return scene, run_stage(scene_dir(cfg, scene.name) / "views", "views", {"scene": str(scene.root)}, None,
                                compute, force=force)

    trial = pipeline.StageSpec("views", ("scene",), count_views)
    specs = (pipeline.SCENE_SPECS[0], trial, *pipeline.SCENE_SPECS[1:])
    monkeypatch.setattr(pipeline, "SCENE_SPECS", specs)
    monkeypatch.setattr(pipeline, "SPECS", {s.name: s for s in (*specs, pipeline.REPORT_SPEC)})
    cfg = CgcConfig(data_dir=str(tmp_path))
    scene, result = pipeline.run_scene_stage(cfg, str(tiny_scene_dir), "views")
    assert not result.cached and json.loads((result.stage_dir / "views.json").read_text()) == len(scene.image_names)
    assert pipeline.run_scene_stage(cfg, str(tiny_scene_dir), "views")[1].cached
    assert "views" in pipeline.with_downstream(["scene"]) and "views" not in pipeline.with_downstream(["calibrate"])
    with pytest.raises(ValueError, match="unknown scene stage 'report'"):
        pipeline.run_scene_stage(cfg, str(tiny_scene_dir), "report")


def test_each_stage_returns_its_typed_outputs_and_they_name_files_it_wrote(tiny_scene_dir, tmp_path):
    # Later stages, the CLI and the viewer read a stage through its outputs object (paths and
    # summary), never through file names of their own.
    from cgc_core import pipeline
    from cgc_core.cluster import ClusterOutputs
    from cgc_core.config import load_config
    from cgc_core.evaluate import EvaluateOutputs
    from cgc_core.masks.store import MasksOutputs
    from cgc_core.train import TrainOutputs

    cfg = load_config(None, [f"data_dir={tmp_path}", "calibrate.mode=known_poses", "train.iterations=6",
                             "train.checkpoint_every=0", "train.health.views=1", "cluster.min_cluster_size=20"])
    results, reports = {}, []
    for stage in ("scene", "calibrate", "masks", "train", "cluster", "evaluate"):
        scene, results[stage] = pipeline.run_scene_stage(cfg, str(tiny_scene_dir), stage,
                                                         progress=lambda *r: reports.append((stage, *r)))
    # The cluster stage reports the clustering, then each training view's consistent masks.
    clustering = [r for r in reports if r[0] == "cluster"]
    assert clustering[0][3].startswith("HDBSCAN") and clustering[-1][1:] == (21, 21, "consistent masks (views)")
    masks, trained, clustered, evaluated = (results[s].outputs for s in ("masks", "train", "cluster", "evaluate"))
    assert isinstance(masks, MasksOutputs) and set(masks.store.images()) == set(scene.train_names)
    assert isinstance(trained, TrainOutputs) and trained.ply.is_file() and trained.record["steps"] == 6
    assert isinstance(clustered, ClusterOutputs) and clustered.clusters_ply.is_file() and clustered.palette.is_file()
    assert clustered.instance_masks.is_dir() and clustered.summary["n_gaussians"] == trained.record["n_gaussians"]
    assert isinstance(evaluated, EvaluateOutputs) and evaluated.results_table.is_file()
    assert evaluated.summary["protocol"] == "click-oracle"
    from conftest import miou_from_predictions

    assert evaluated.summary["miou"] == pytest.approx(miou_from_predictions(scene, evaluated.folder, "click-oracle"),
                                                      abs=1e-9)
    # A cached rerun hands back the same kind of outputs.
    assert isinstance(pipeline.run_scene_stage(cfg, str(tiny_scene_dir), "train")[1].outputs, TrainOutputs)


def test_the_steps_protocol_climbs_the_cluster_stages_tree_and_follows_its_settings(tiny_scene_dir, tmp_path,
                                                                                      monkeypatch):
    # click-oracle-steps walks the cluster stage's tree (built once, there); the one-click protocol does not read it.
    from cgc_core import cluster, pipeline
    from cgc_core.config import load_config

    built = []
    monkeypatch.setattr(cluster, "model_tree", lambda *a, real=cluster.model_tree, **k: built.append(1) or real(*a, **k))
    base = [f"data_dir={tmp_path}", "calibrate.mode=known_poses", "train.iterations=6", "train.checkpoint_every=0",
            "train.health.views=1", "cluster.min_cluster_size=20"]

    def evaluated(*overrides: str):
        cfg = load_config(None, [*base, *overrides])
        for stage in ("scene", "calibrate", "masks", "train", "cluster"):
            pipeline.run_scene_stage(cfg, str(tiny_scene_dir), stage)
        return pipeline.run_scene_stage(cfg, str(tiny_scene_dir), "evaluate")[1]

    steps = "evaluate.protocol=[click-oracle, click-oracle-steps]"
    assert not evaluated(steps).cached and evaluated(steps).cached
    assert len(built) == 1  # by the cluster stage; evaluate read its tree.json
    assert not evaluated(steps, "cluster.tree_radius=3").cached
    assert not evaluated().cached and evaluated("cluster.tree_radius=4").cached
