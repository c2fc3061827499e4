"""The benchmark report: `report.md`, a self-contained `report.html`, `results.parquet` and figures.

`build_report` reads only files: each scene's evaluate stage (`results.parquet`, `summary.json`),
its cluster stage (`summary.json`), and the run record the orchestrator wrote (`run.json`: scenes,
their stage folders, which stages were cached and how long each took). So a report can be rebuilt
from disk at any time (`cgc report --run R`). The published numbers it sets beside ours are those
of `../shared/PROTOCOL.md` (section "Numbers to put beside ours in every report").
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from .config import ReportConfig
from .evaluate import EvaluateOutputs, prediction_path
from .metrics import read_mask
from .stage import MANIFEST, SUMMARY, StageOutputs
from .train import TrainOutputs

FIGURES_HEADING = "## Figures"


def report_tables(markdown: str) -> str:
    """A report's markdown without its figures section (what a text-only viewer can show)."""
    return markdown.split("\n" + FIGURES_HEADING)[0]

# Published results (mIoU, mBIoU in %; None where the benchmark reports no mBIoU), from the paper
# (Silva et al. 2024, Tables 1-2) as gathered in PROTOCOL.md.
PUBLISHED: dict[str, dict[str, dict[str, tuple[float, float | None]]]] = {
    "LERF-Mask": {
        "LERF": {"figurines": (33.5, 30.6), "ramen": (28.3, 14.7), "teatime": (49.7, 42.6), "mean": (37.2, 29.3)},
        "Gaussian Grouping": {"figurines": (69.7, 67.9), "ramen": (77.0, 68.7), "teatime": (71.7, 66.1),
                              "mean": (72.8, 67.6)},
        "LangSplat": {"figurines": (44.3, 41.9), "ramen": (34.8, 28.7), "teatime": (54.3, 48.8), "mean": (44.5, 39.8)},
        "CGC (paper)": {"figurines": (91.6, 88.8), "ramen": (68.7, 63.1), "teatime": (80.5, 78.9), "mean": (80.3, 76.9)},
    },
    "3D-OVS": {
        "LERF": {"bed": (73.5, None), "bench": (53.2, None), "room": (46.6, None), "sofa": (27.0, None),
                 "lawn": (73.7, None), "mean": (54.8, None)},
        "Gaussian Grouping": {"bed": (97.3, None), "bench": (73.7, None), "room": (79.0, None), "sofa": (68.1, None),
                              "lawn": (96.5, None), "mean": (82.9, None)},
        "LangSplat": {"bed": (34.3, None), "bench": (84.8, None), "room": (56.3, None), "sofa": (67.7, None),
                      "lawn": (95.8, None), "mean": (67.8, None)},
        "CGC (paper)": {"bed": (95.2, None), "bench": (96.1, None), "room": (86.8, None), "sofa": (67.5, None),
                        "lawn": (91.8, None), "mean": (87.5, None)},
    },
}
BENCHMARK_OF_LAYOUT = {"lerf_mask": "LERF-Mask", "ovs3d": "3D-OVS", "synthetic": "cgc synthetic"}
PROTOCOL_TEXT = {
    "text": "text (the paper's protocol): Grounding DINO's top box for the prompt in the grounding view (the first "
            "test view with the prompt's ground truth), SAM's mask of that box, the mean rendered feature inside "
            "it as the query; a prompt not detected predicts nothing (IoU 0)",
    "box-oracle": "box-oracle (upper bound on detection): the ground truth's bounding box in the grounding view, "
                  "SAM's mask of it, the mean rendered feature inside it as the query",
    "click-oracle": "click-oracle (upper bound): the rendered feature at the deepest pixel of the prompt's ground "
                    "truth in the grounding view as the query",
    "click-oracle-steps": "click-oracle-steps (upper bound): the click-oracle's click, then coarser steps up the "
                          "tree of the Gaussians' clusters while the IoU with the ground truth in the grounding "
                          "view rises; the same step in every test view",
    "ovs-argmax": "ovs-argmax (3D-OVS's own metric): each pixel takes the class whose query it is most similar "
                  "to; per-class IoU, mean over classes per view, then over views",
}
SCORING_TEXT = ("a pixel belongs to the object when its cosine similarity to the query is >= the threshold; IoU "
                "and boundary IoU as in Gaussian Grouping's LERF-Mask script, averaged per prompt over views, per "
                "scene over prompts; a view whose ground truth and prediction are both empty is left out (NaN, "
                "as the reference script) and counted")
ORACLE_PROTOCOLS = ("box-oracle", "click-oracle", "click-oracle-steps")
"""Protocols whose query comes from the ground truth: upper bounds, never beside published numbers."""
ORACLE_MASKS = ("truth-objects",)
"""Mask generators that read the ground truth (`masks.generator=truth-objects`): every figure
trained on them is an upper bound, like an oracle protocol's."""
COMPARABLE_PROTOCOL = "text"
"""The protocol of the published CGC numbers (PROTOCOL.md): the only one set beside them."""
PAPER_PROTOCOL = ("published numbers: the papers' own text-query procedure (CGC: Grounding DINO box -> SAM mask -> "
                  "query, threshold 0.7) on LERF-Mask and 3D-OVS, as listed in PROTOCOL.md")


class ReportError(RuntimeError):
    """The run record or a stage output the report needs is missing or unreadable; names the file."""


class ReportOutputs(StageOutputs):
    """A report folder's files: `run_record` (run.json: what the run computed), `markdown`, `html`
    (figures embedded), `results` (every row, Parquet) and `figures` (figures/*.png, in order)."""

    run_record = property(lambda self: self.folder / "run.json")
    markdown = property(lambda self: self.folder / "report.md")
    html = property(lambda self: self.folder / "report.html")
    results = property(lambda self: self.folder / "results.parquet")
    figures = property(lambda self: sorted((self.folder / "figures").glob("figure_*.png")))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: cannot read ({exc})") from exc


def results_table(run: dict) -> pd.DataFrame:
    """Every (scene, view, prompt) row of the run's evaluate stages, with benchmark and protocol."""
    frames = []
    for entry in run["scenes"]:
        path = EvaluateOutputs(Path(entry["stages"]["evaluate"]["dir"])).results_table
        if not path.is_file():
            continue  # a scene without ground truth has no rows
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise ReportError(f"{path}: unreadable results table ({exc})") from exc
        frame.insert(0, "benchmark", BENCHMARK_OF_LAYOUT.get(entry.get("layout", ""), entry.get("layout", "")))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["benchmark", "scene", "view", "prompt", "iou", "biou", "missing", "protocol"])


def _pct(value) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _published(benchmark: str, scene: str, method: str = "CGC (paper)") -> tuple[float, float | None] | None:
    return PUBLISHED.get(benchmark, {}).get(method, {}).get(scene)


def scene_summaries(run: dict) -> list[dict]:
    """One row per (scene, protocol): averages, PSNR, the 3D cluster scores, the training health,
    and the published CGC figure where the scene is theirs and the protocol is the paper's."""
    rows = []
    for entry in run["scenes"]:
        benchmark = BENCHMARK_OF_LAYOUT.get(entry.get("layout", ""), entry.get("layout", ""))
        evaluate = _read_json(Path(entry["stages"]["evaluate"]["dir"]) / SUMMARY)
        cluster_dir = entry["stages"].get("cluster", {}).get("dir")
        cluster = _read_json(Path(cluster_dir) / SUMMARY) if cluster_dir else {}
        train_dir = entry["stages"].get("train", {}).get("dir")
        train_record = TrainOutputs(Path(train_dir)).record_path if train_dir else None
        health = _read_json(train_record).get("health", {}) if train_record and train_record.is_file() else {}
        masks_dir = entry["stages"].get("masks", {}).get("dir")
        masks_manifest = Path(masks_dir) / MANIFEST if masks_dir else None
        masks = (_read_json(masks_manifest).get("info", {}).get("generator")
                 if masks_manifest and masks_manifest.is_file() else None)
        protocols = evaluate.get("protocols") or {evaluate.get("protocol", "—"): evaluate}
        for k, (protocol, result) in enumerate(protocols.items()):
            paper = (_published(benchmark, entry["scene"])
                     if protocol == COMPARABLE_PROTOCOL and masks not in ORACLE_MASKS else None)
            rows.append({
                "scene": entry["scene"], "benchmark": benchmark, "protocol": protocol,
                "threshold": evaluate.get("threshold"), "miou": result.get("miou"), "mbiou": result.get("mbiou"),
                "not_detected": result.get("not_detected", []), "empty_union_views": result.get("empty_union_views"),
                "psnr": evaluate.get("psnr"), "prompts": result.get("prompts", {}), "skipped": evaluate.get("skipped"),
                "paper_miou": paper[0] / 100 if paper else None,
                "paper_mbiou": paper[1] / 100 if paper and paper[1] is not None else None,
                "first_of_scene": k == 0,
                "n_clusters": cluster.get("n_clusters"), "ari": cluster.get("ari"),
                "mean_object_iou": cluster.get("mean_object_iou"),
                "mean_selection_iou": cluster.get("mean_selection_iou"),
                "training_health": health,  # train.json's health record: history, final, views, warning
                "masks": masks,  # the mask generator the features were trained on
                "query_source": result.get("query_source", protocol),  # ovs-argmax borrows another's queries
            })
    return rows


def is_upper_bound(summary: dict) -> bool:
    """A row's figures are an upper bound: queries read from the ground truth (an oracle protocol's,
    also when another protocol such as `ovs-argmax` borrows them), or masks read from the truth."""
    return (summary["protocol"] in ORACLE_PROTOCOLS or summary.get("query_source") in ORACLE_PROTOCOLS
            or summary.get("masks") in ORACLE_MASKS)


def protocol_title(summary: dict) -> str:
    """A row's protocol as the report names it: `protocol`, marked when it is an upper bound, with
    the borrowed query source where there is one."""
    title = f"`{summary['protocol']}`"
    source = summary.get("query_source")
    if source and source != summary["protocol"]:
        title += f" with `{source}` queries"
    return title + (" (upper bound)" if is_upper_bound(summary) else "")


def _where(false_positives: dict[str, float] | None, most: int = 3) -> str:
    """`checker box 62 %, background 30 %`: the largest places of a prompt's false positives."""
    if not false_positives:
        return "none" if false_positives is not None else "—"
    return ", ".join(f"{name} {100 * share:.0f} %" for name, share in list(false_positives.items())[:most])


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table (cells are str()-ed, pipes escaped)."""
    def cell(v) -> str:
        return str(v).replace("|", "\\|")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _tables(run: dict, summaries: list[dict]) -> list[tuple[str, str, list[str], list[list[Any]]]]:
    """(title, note, header, rows) of every table in the report, in order."""
    tables = []
    present = [p for p in PROTOCOL_TEXT if any(s["protocol"] == p for s in summaries)]
    tables.append(("Results per scene and protocol", "mIoU / mBIoU in %. Protocols: " + "; ".join(
        f"`{p}`: {PROTOCOL_TEXT[p]}" for p in present) + ". Scoring: " + SCORING_TEXT + ". Rows of `box-oracle` "
        "and `click-oracle` are upper bounds with a ground-truth query, not comparable to published numbers; so "
        "is every row trained on `truth-objects` masks (true object masks, a diagnostic).",
        ["scene", "benchmark", "protocol", "threshold", "mIoU", "mBIoU", "not detected", "empty-union views",
         "test PSNR (dB)", "masks"],
        [[s["scene"], s["benchmark"], protocol_title(s),
          s["threshold"] if s["threshold"] is not None else "—", _pct(s["miou"]), _pct(s["mbiou"]),
          ", ".join(s["not_detected"]) or "none", s["empty_union_views"] if s["empty_union_views"] is not None else "—",
          f"{s['psnr']:.2f}" if s["psnr"] is not None else "—",
          f"`{s['masks']}`" + (" (true objects)" if s["masks"] in ORACLE_MASKS else "") if s["masks"] else "—"]
         for s in summaries]))
    for s in summaries:
        if s["prompts"]:
            tables.append((f"Per prompt: {s['scene']}, protocol {protocol_title(s)}",
                           PROTOCOL_TEXT.get(s["protocol"], s["protocol"]) + "; IoU, boundary IoU, precision and "
                           "recall of the selection in %, means over the test views that have the prompt; what the "
                           "selection grabbed outside the prompt's truth: the share of those pixels in each other "
                           "prompt's ground truth, or the background.",
                           ["prompt", "views", "IoU", "BIoU", "precision", "recall", "false positives lie in"],
                           [[p, v["views"], _pct(v["iou"]), _pct(v["biou"]), _pct(v.get("precision")),
                             _pct(v.get("recall")), _where(v.get("false_positives"))]
                            for p, v in sorted(s["prompts"].items())]))
    for benchmark, methods in PUBLISHED.items():
        ours = {s["scene"]: s for s in summaries if s["benchmark"] == benchmark and s["protocol"] == COMPARABLE_PROTOCOL
                and not is_upper_bound(s)}
        if not any(s["benchmark"] == benchmark for s in summaries):
            continue
        scenes = [k for k in next(iter(methods.values())) if k != "mean"] + ["mean"]
        header = ["method"] + scenes
        rows = [[m] + [(f"{v[0]:.1f}" + (f" / {v[1]:.1f}" if v[1] is not None else "")) if (v := vals.get(sc)) else "—"
                       for sc in scenes] for m, vals in methods.items()]
        our_row = ["cgc (this run, `text`)"]
        for sc in scenes:
            if sc == "mean":
                done = [ours[k] for k in scenes[:-1] if k in ours]
                full = len(done) == len(scenes) - 1
                our_row.append(f"{_pct(np.mean([d['miou'] for d in done]))} / {_pct(np.mean([d['mbiou'] for d in done]))}"
                               if full else "— (not every scene run)")
            else:
                our_row.append(f"{_pct(ours[sc]['miou'])} / {_pct(ours[sc]['mbiou'])}" if sc in ours
                               else "not run with `text`")
        tables.append((f"{benchmark}: ours beside the published numbers (text protocol only)", PAPER_PROTOCOL +
                       "; ours: only rows of the same protocol (`text`) on the same benchmark scenes; oracle and "
                       "ovs-argmax rows are never set here.", header, rows + [our_row]))
    clustered = [s for s in summaries if s["n_clusters"] is not None and s["first_of_scene"]]
    if clustered:
        tables.append(("3D clustering", "HDBSCAN on Gaussian features. On the synthetic scene each Gaussian's "
                       "truth is the id of the nearest analytic surface: ARI of clusters, mean best-cluster IoU per "
                       "object, and mean IoU of each prompt's 3D selection (sets of opaque Gaussians).",
                       ["scene", "clusters", "ARI", "object IoU", "selection IoU"],
                       [[s["scene"], s["n_clusters"], f"{s['ari']:.3f}" if s["ari"] is not None else "—",
                         _pct(s["mean_object_iou"]), _pct(s["mean_selection_iou"])] for s in clustered]))
    healthy = [(s["scene"], s["training_health"]) for s in summaries
               if s["training_health"].get("final") and s["first_of_scene"]]
    if healthy:
        tables.append(("Training health", "Feature separation of the trained model over its training views "
                       "(cgc_core.health): within = mean cosine of a pixel's feature to its mask segment's mean "
                       "direction; between = mean cosine between different segments' mean directions; confusable = "
                       "share of segment pairs at or above the 0.7 selection threshold.",
                       ["scene", "views", "within", "between", "confusable", "warning"],
                       [[scene, h["views"], f"{h['final']['within']:.2f}", f"{h['final']['between']:.2f}",
                         _pct(h["final"]["confusable"]), h["warning"] or "none"] for scene, h in healthy]))
    stage_rows = []
    for entry in run["scenes"]:
        for stage, info in entry["stages"].items():
            stage_rows.append([entry["scene"], stage, "cached" if info.get("cached") else "computed",
                               f"{info['seconds']:.1f}" if info.get("seconds") is not None else "—"])
    tables.append(("Stages", "cached: the stage's output folder was reused (same input contents, config and "
                   "version); compute seconds: the time the stage took when its output was computed.",
                   ["scene", "stage", "this run", "compute seconds"], stage_rows))
    return tables


def _figure_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def bar_chart(summaries: list[dict]) -> bytes | None:
    """PNG: our mIoU per (scene, protocol); the paper's bar only beside rows of its own protocol
    (`text`) on its own scenes, and oracle rows marked as upper bounds."""
    rows = [s for s in summaries if s["miou"] is not None and not math.isnan(s["miou"])]
    if not rows:
        return None
    x = np.arange(len(rows))
    fig = Figure(figsize=(max(4, 1.6 * len(rows) + 2), 3.4))
    ax = fig.subplots()
    colours = ["#9bb8e0" if is_upper_bound(s) else "#3b7dd8" for s in rows]
    ax.bar(x - 0.2, [100 * s["miou"] for s in rows], 0.4, label="cgc (this run)", color=colours)
    paper = [100 * s["paper_miou"] if s["paper_miou"] is not None else 0 for s in rows]
    ax.bar(x + 0.2, paper, 0.4, label="CGC paper (text protocol)", color="#d8843b")
    for i, s in enumerate(rows):
        if s["paper_miou"] is None:
            ax.text(x[i] + 0.2, 2, "n/a", ha="center", fontsize=8)
    ax.set_xticks(x, [f"{s['scene']}\n{s['protocol']}" + ("\n(upper bound)" if is_upper_bound(s)
                                                         else "") for s in rows], fontsize=8)
    ax.set_ylabel("mIoU (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("mIoU per scene and protocol")
    return _figure_bytes(fig)


def training_health_chart(scene: str, health: dict) -> bytes | None:
    """PNG: the loss terms and the feature separation (cgc_core.health) over the training steps,
    with the collapse level; None when the train stage recorded no history."""
    history = health.get("history") or []
    if not history:
        return None
    steps = [h["step"] for h in history]
    fig = Figure(figsize=(8, 2.8))
    losses, separation = fig.subplots(1, 2)
    for key, colour in (("photometric", "#555555"), ("cc", "#3b7dd8"), ("reg", "#d8843b")):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            losses.plot(steps, [float("nan") if v is None else v for v in values], label=key, color=colour)
    losses.set_yscale("log")
    losses.set_xlabel("iteration")
    losses.set_title("loss terms (as weighted)", fontsize=9)
    losses.legend(fontsize=7)
    for key, colour in (("within", "#2a9d4b"), ("between", "#c0392b")):
        separation.plot(steps, [h.get(key, float("nan")) for h in history], label=key, color=colour)
    level = health.get("collapse_between")
    if level is not None:
        separation.axhline(level, color="#c0392b", linestyle=":", linewidth=1, label="collapse level")
    separation.set_ylim(-0.3, 1.05)
    separation.set_xlabel("iteration")
    separation.set_title("feature cosine: within / between mask segments", fontsize=9)
    separation.legend(fontsize=7)
    fig.suptitle(f"{scene}: training health" + ("  (WARNING: features collapsed)" if health.get("warning") else ""),
                 fontsize=9)
    return _figure_bytes(fig)


def mask_strip(prompt: str, views: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None, float | None]]) -> bytes:
    """PNG: for each (view, image, ground truth, prediction, IoU), the image with the ground truth's
    outline in green and our mask in translucent magenta."""
    from skimage.segmentation import find_boundaries

    fig = Figure(figsize=(2.6 * len(views), 2.4))
    axes = fig.subplots(1, len(views), squeeze=False)
    for ax, (view, image, gt, pred, iou) in zip(axes[0], views):
        shown = image.copy()
        if pred is not None:
            if pred.shape != gt.shape:
                resized = Image.fromarray(pred.astype(np.uint8) * 255).resize(gt.shape[::-1], Image.Resampling.NEAREST)
                pred = np.asarray(resized) > 128
            shown[pred] = 0.45 * shown[pred] + 0.55 * np.array([1.0, 0.0, 1.0])
        if gt.shape != shown.shape[:2]:
            gt = np.zeros(shown.shape[:2], bool)
        shown[find_boundaries(gt, mode="thick")] = np.array([0.0, 1.0, 0.0])
        ax.imshow(np.clip(shown, 0, 1))
        ax.set_title(view + (f"  IoU {100 * iou:.1f}" if iou is not None else "  (no prediction)"), fontsize=7)
        ax.axis("off")
    fig.suptitle(f"{prompt} (green: ground truth outline, magenta: ours)", fontsize=8)
    return _figure_bytes(fig)


def build_report(run_dir: str | Path, cfg: ReportConfig | None = None, scenes: dict | None = None) -> ReportOutputs:
    """Write the report of one benchmark run into `run_dir`.

    Args:
        run_dir: The run's report folder; must hold `run.json` (see module docstring): {"run_id",
            "created", "scenes": [{"scene", "layout", "stages": {stage: {"dir", "cached", "seconds"}}}]}.
        cfg: Report config (title, views per prompt strip, figures on/off).
        scenes: scene name -> `Scene`, for the figure strips (test images and ground-truth masks);
            scenes missing here get no strip.

    Returns:
        The written files: report.md, report.html (images embedded, no external links),
        results.parquet (every row), figures/*.png.
    """
    cfg = cfg or ReportConfig()
    out = ReportOutputs(Path(run_dir))
    run = _read_json(out.run_record)
    summaries = scene_summaries(run)
    table = results_table(run)
    table.to_parquet(out.results, index=False)
    figures: list[tuple[str, bytes]] = []
    if cfg.figures:
        chart = bar_chart(summaries)
        if chart is not None:
            figures.append(("mIoU per scene and protocol; the CGC paper's only beside the text protocol", chart))
        for summary in (s for s in summaries if s["first_of_scene"]):
            chart = training_health_chart(summary["scene"], summary["training_health"])
            if chart is not None:
                figures.append((f"{summary['scene']}: training health (loss terms; feature separation)", chart))
        for entry in run["scenes"]:
            scene = (scenes or {}).get(entry["scene"])
            if scene is None or table.empty:
                continue
            rows = table[table["scene"] == entry["scene"]]
            if rows.empty:
                continue
            protocol = rows["protocol"].iloc[0]  # strips show the scene's first protocol
            rows = rows[rows["protocol"] == protocol]
            predictions = EvaluateOutputs(Path(entry["stages"]["evaluate"]["dir"])).predictions / protocol
            for prompt in sorted(rows["prompt"].unique()):
                views = []
                prompt_rows = rows[rows["prompt"] == prompt].sort_values("view").head(cfg.views_per_prompt)
                for view, iou in zip(prompt_rows["view"], prompt_rows["iou"]):
                    pred_path = prediction_path(predictions, scene, view, prompt)
                    pred = read_mask(pred_path) if pred_path.is_file() else None
                    views.append((view, scene.load_image(view), scene.load_gt_mask(view, prompt), pred,
                                  None if pd.isna(iou) else float(iou)))
                if views:
                    figures.append((f"{entry['scene']}: {prompt} (protocol {protocol})", mask_strip(prompt, views)))
    figure_dir = out.folder / "figures"
    figure_dir.mkdir(exist_ok=True)
    for stale in out.figures:  # a rebuild in place (`cgc report`) may draw fewer figures
        stale.unlink()
    figure_paths = [figure_dir / f"figure_{i:02d}.png" for i in range(len(figures))]
    for path, (_, png) in zip(figure_paths, figures):
        path.write_bytes(png)
    tables = _tables(run, summaries)
    out.markdown.write_text(_markdown(cfg.title, run, tables, [(c, p.relative_to(out.folder))
                                                               for (c, _), p in zip(figures, figure_paths)]))
    out.html.write_text(_html(cfg.title, run, tables, figures))
    return out


def _markdown(title: str, run: dict, tables, figures: list[tuple[str, Path]]) -> str:
    parts = [f"# {title}: {run['run_id']}", "", f"Created {run.get('created', '')}. Scenes: "
             + ", ".join(e["scene"] for e in run["scenes"]) + ".", ""]
    for name, note, header, rows in tables:
        parts += [f"## {name}", "", note, "", markdown_table(header, rows), ""]
    if figures:
        parts += [FIGURES_HEADING, ""]
        parts += [f"![{caption}]({path.as_posix()})\n\n*{caption}*\n" for caption, path in figures]
    return "\n".join(parts)


def _html(title: str, run: dict, tables, figures: list[tuple[str, bytes]]) -> str:
    esc = html.escape
    body = [f"<h1>{esc(title)}: {esc(run['run_id'])}</h1>",
            f"<p>Created {esc(str(run.get('created', '')))}. Scenes: {esc(', '.join(e['scene'] for e in run['scenes']))}.</p>"]
    for name, note, header, rows in tables:
        body.append(f"<h2>{esc(name)}</h2><p class='note'>{esc(note)}</p><table><thead><tr>"
                    + "".join(f"<th>{esc(str(h))}</th>" for h in header) + "</tr></thead><tbody>"
                    + "".join("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in row) + "</tr>" for row in rows)
                    + "</tbody></table>")
    if figures:
        body.append("<h2>Figures</h2>")
        for caption, png in figures:
            data = base64.b64encode(png).decode()
            body.append(f"<figure><img alt='{esc(caption)}' src='data:image/png;base64,{data}'>"
                        f"<figcaption>{esc(caption)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:.5em 0 1.5em}"
             "td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}th{background:#eee}.note{color:#555}"
             "img{max-width:100%}figure{margin:1em 0}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{style}</style>"
            f"</head><body>{''.join(body)}</body></html>\n")
