"""Interactive viewer: click on a rendered view to segment an object, see it in 3D, export it.

The pure part, `ViewerSession`, holds a trained model and answers what the browser asks: render a
camera (RGB, feature PCA or similarity to the query), turn a click into a query feature and a mask
at the current threshold, select the object's Gaussians, export them. `serve` puts it behind a
viser server on 127.0.0.1: the trained Gaussians as splats, the training cameras as frustums, our
`render()` of the browser's camera as the viewport's background image, clicks on it (shift-click
adds a click), a text prompt (Grounding DINO + SAM, when their weights are configured), a
threshold slider, view-mode and cluster-palette toggles, and an export button.

    cgc view --scene synthetic        (or its own entry point `cgc-view --scene synthetic`)
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .cluster import export_selection, render_clusters
from .edit import Edit, edit_gaussians, edit_selection, write_edit_figures
from .gaussians import SH_C0, read_ply_attribute, save_ply
from .hierarchy import ClusterTree
from .query import normalize_features
from .render import Gaussians, render
from .scene.model import Camera
from .selection import Selector
from .serving import DEFAULT_HOST, warn_if_exposed

Mode = Literal["rgb", "pca", "similarity", "clusters"]
OVERLAY = np.array([1.0, 0.0, 1.0])  # magenta: visible on every object colour of the demo scene


def camera_from_viser(wxyz, position, fov_y: float, aspect: float, max_side: int = 256, name: str = "viewer") -> Camera:
    """Our `Camera` for viser's camera (camera-to-world pose with OpenCV axes, vertical FOV in
    radians, width/height aspect), at most `max_side` pixels on its long side."""
    w, x, y, z = (float(v) for v in wxyz)
    rotation = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])
    if aspect >= 1:
        width, height = max_side, max(1, round(max_side / aspect))
    else:
        width, height = max(1, round(max_side * aspect)), max_side
    focal = 0.5 * height / math.tan(0.5 * fov_y)
    K = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1.0]])
    w2c = np.eye(4)
    w2c[:3, :3] = rotation.T
    w2c[:3, 3] = -rotation.T @ np.asarray(position, dtype=np.float64)
    return Camera(K, w2c, width, height, name)


def camera_to_viser(camera: Camera) -> tuple[np.ndarray, np.ndarray, float]:
    """(wxyz, position, vertical FOV) of one of our cameras, for viser."""
    from scipy.spatial.transform import Rotation

    c2w = np.linalg.inv(camera.world_to_camera)
    x, y, z, w = Rotation.from_matrix(c2w[:3, :3]).as_quat()
    fov_y = 2 * math.atan(0.5 * camera.height / camera.K[1, 1])
    return np.array([w, x, y, z]), c2w[:3, 3], fov_y


def feature_pca(features: Tensor) -> np.ndarray:
    """[H, W, D] features -> [H, W, 3] in [0, 1]: the first three principal components, min-max scaled."""
    flat = normalize_features(features).reshape(-1, features.shape[-1]).float()
    centred = flat - flat.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    proj = centred @ v[:3].T
    lo, hi = proj.min(0).values, proj.max(0).values
    return ((proj - lo) / (hi - lo).clamp_min(1e-9)).reshape(*features.shape[:2], 3).numpy()


@dataclass
class Frame:
    """One rendered view: what the browser shows and what a click on it needs."""

    camera: Camera
    rgb: np.ndarray
    features: Tensor
    image: np.ndarray
    seconds: float


@dataclass
class ViewerSession:
    """A trained model plus the viewer's state (clicks, threshold, mode); no browser, no viser.

    Attributes:
        params: The trained parameter dict (`load_ply`).
        backend: Render backend (`auto`, `torch`, `gsplat`).
        selector: The selection service (threshold, opacity floor and cleaning of 3D selections,
            SAM and Grounding DINO for text prompts); `Selector.from_config(cfg)` in `load_session`.
        mode: What `render_view` shows: rgb, pca (features), similarity (to the query), clusters.
        cluster_labels: Per-Gaussian labels for the `clusters` mode (from the cluster stage), or None.
        tree: The clusters' hierarchy (the cluster stage's `tree.json`) that `coarser` and `finer`
            walk from the last click; None: no steps.
        queries: The clicks' (and text prompts') query features.
        steps: Coarser steps applied to the last query (0: the paper's selection).
    """

    params: dict[str, Tensor]
    backend: str = "auto"
    selector: Selector = field(default_factory=Selector)
    mode: Mode = "rgb"
    cluster_labels: np.ndarray | None = None
    tree: ClusterTree | None = None
    queries: list[Tensor] = field(default_factory=list)
    steps: int = 0
    last: Frame | None = None

    def __post_init__(self) -> None:
        self.gaussians = Gaussians.from_params(self.params)

    @property
    def threshold(self) -> float:
        return self.selector.threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self.selector.threshold = float(value)

    @property
    def level(self) -> int:
        """The selection's granularity (0 finest; see `Selector.level`)."""
        return self.selector.level

    @level.setter
    def level(self, value: int) -> None:
        self.selector = self.selector.at_level(value)

    @torch.no_grad()
    def render_view(self, camera: Camera) -> Frame:
        """Render `camera` in the current mode, with the current selection's mask overlaid."""
        start = time.perf_counter()
        out = render(self.gaussians, camera, features=self.params["features"], backend=self.backend)
        rgb = out.rgb.clamp(0, 1).cpu().numpy()
        features = out.features.cpu()
        if self.mode == "pca":
            image = feature_pca(features)
        elif self.mode == "similarity" and self.queries:
            image = np.repeat(self.similarity(features)[..., None], 3, axis=2).clip(0, 1)
        elif self.mode == "clusters" and self.cluster_labels is not None:
            image = render_clusters(self.params, self.cluster_labels, camera, self.backend)
        else:
            image = rgb.copy()
        mask = self.mask(features)
        if mask is not None:
            image = image.copy()
            image[mask] = 0.45 * image[mask] + 0.55 * OVERLAY
        self.last = Frame(camera, rgb, features, image, time.perf_counter() - start)
        return self.last

    @property
    def selection(self) -> list[Tensor]:
        """The query features selected now: every query, the last one grown by `steps` coarser steps."""
        if not self.queries or not self.steps or self.tree is None:
            return list(self.queries)
        return [*self.queries[:-1], *self.tree.step_features(self.queries[-1], self.steps)]

    def coarser(self) -> int:
        """One coarser step from the last query (up the cluster tree, stopping at its root); returns the steps."""
        if self.tree is None or not self.queries:
            raise ValueError("no coarser step: " + ("select something first" if self.tree is not None else
                                                   "the cluster stage has not run (no cluster tree)"))
        self.steps = min(self.steps + 1, self.tree.depth(self.queries[-1]))
        return self.steps

    def finer(self) -> int:
        """One step back towards the last query alone; returns the steps."""
        self.steps = max(self.steps - 1, 0)
        return self.steps

    def similarity(self, features: Tensor) -> np.ndarray:
        """[H, W] highest cosine similarity of each pixel to any query of the selection."""
        return self.selector.similarity(features, self.selection).max(0).values.numpy()

    def mask(self, features: Tensor) -> np.ndarray | None:
        """[H, W] pixels at or above the threshold for any query of the selection (None without a query)."""
        return None if not self.queries else self.selector.union_mask(features, self.selection).numpy()

    def click(self, u: float, v: float, add: bool = False) -> np.ndarray:
        """A click at normalised image coordinates (u, v) in [0, 1] (OpenCV: u right, v down) on the
        last rendered frame: its feature becomes the query (or one more query with `add`).
        Returns the new mask of that frame."""
        if self.last is None:
            raise RuntimeError("nothing rendered yet: render_view first")
        h, w = self.last.features.shape[:2]
        row, col = min(int(v * h), h - 1), min(int(u * w), w - 1)
        query = self.selector.click(self.last.features, [(row, col)]).feature
        self.queries = [*self.queries, query] if add else [query]
        self.steps = 0
        return self.mask(self.last.features)

    def text(self, prompt: str, add: bool = False) -> np.ndarray | None:
        """A text prompt on the last rendered frame (Grounding DINO box -> SAM mask -> query, the
        configured models). Returns the new mask, or None when the prompt is not found (the
        selection is then left as it was). Raises `models.ModelLoadError` without weights."""
        if self.last is None:
            raise RuntimeError("nothing rendered yet: render_view first")
        image = (self.last.rgb * 255 + 0.5).astype(np.uint8)
        query = self.selector.text(self.last.features, image, prompt)
        if not query.detected:
            return None
        self.queries = [*self.queries, query.feature] if add else [query.feature]
        self.steps = 0
        return self.mask(self.last.features)

    def clear(self) -> None:
        self.queries, self.steps = [], 0

    def selected_gaussians(self) -> np.ndarray:
        """[N] boolean: Gaussians similar to any query (union), spatially cleaned, with the
        configured opacity floor and cleaning (`Selector.gaussians`)."""
        return self.selector.gaussians(self.params, self.selection)

    def edit(self, mode: str, path: str | Path, cameras: dict[str, Camera]) -> tuple[Path, Edit]:
        """Remove the selection from the model, or keep only it (`edit.edit_gaussians`; the selection
        lifted from `cameras`' views: `edit.edit_selection`), and write what `cgc edit` writes: the
        edited .ply at `path`, before/after strips and a turntable. Raises `edit.EditError` for a
        selection of nothing or of everything."""
        selected = edit_selection(self.selector, self.params, self.selection, list(cameras.values()))
        edit = edit_gaussians(self.params, selected, mode, what=f"the selection ({len(self.queries)} click(s))")
        path = save_ply(edit.params, path)
        write_edit_figures(self.params, edit.params, cameras, Path(path).with_suffix(""), backend=self.backend)
        return path, edit

    def export(self, path: str | Path) -> tuple[Path, int]:
        """Write the selected Gaussians to a .ply; returns the path and how many."""
        keep = self.selected_gaussians()
        return export_selection(self.params, keep, path), int(keep.sum())


def splat_arrays(params: dict[str, Tensor], highlight: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The trained Gaussians as viser's splat node takes them: centres [N, 3], world covariances
    [N, 3, 3], RGB [N, 3] (the DC colour) and opacities [N, 1]; `highlight` ([N] bool) tints the
    selected splats with the overlay colour."""
    from .render.projection import covariance_3d

    with torch.no_grad():
        quats = torch.nn.functional.normalize(params["quats"], dim=-1)
        covariances = covariance_3d(quats, torch.exp(params["scales"]))
        rgbs = (0.5 + SH_C0 * params["sh0"][:, 0, :]).clamp(0, 1).numpy()
    if highlight is not None and highlight.any():
        rgbs = rgbs.copy()
        rgbs[highlight] = 0.3 * rgbs[highlight] + 0.7 * OVERLAY
    return {"centers": params["means"].numpy().astype(np.float32), "covariances": covariances.numpy().astype(np.float32),
            "rgbs": rgbs.astype(np.float32), "opacities": torch.sigmoid(params["opacities"]).numpy()[:, None].astype(np.float32)}


def serve(session: ViewerSession, cameras: dict[str, Camera], export_dir: str | Path, host: str = DEFAULT_HOST,
          port: int = 8080, max_side: int = 256, start_view: str | None = None):
    """Serve the session with viser; returns the `viser.ViserServer` (call `.stop()` to end it).

    Args:
        session: The model and state.
        cameras: Named cameras shown as frustums (the first, or `start_view`, is where a new browser starts).
        export_dir: Where the export button writes `selection_<n>.ply`.
        host: Interface to listen on (default loopback only; any other host prints a warning
            that the viewer is reachable from the network).
        port: Port.
        max_side: Long side of the rendered background image.
        start_view: Camera name a new browser tab starts at.
    """
    import viser

    warn_if_exposed(host, "the cgc viewer", port)
    server = viser.ViserServer(host=host, port=port, verbose=False)
    lock = threading.Lock()
    export_dir = Path(export_dir)
    params = session.params
    # The browser draws the splats at its own resolution and frame rate; our render() runs only for
    # what needs features: the feature under a click, and the pca / similarity / clusters views.
    splats = server.scene.add_gaussian_splats("/gaussians", **splat_arrays(params))
    for name, cam in cameras.items():
        wxyz, position, fov_y = camera_to_viser(cam)
        server.scene.add_camera_frustum(f"/cameras/{Path(name).stem}", fov=fov_y, aspect=cam.width / cam.height,
                                        scale=0.08, wxyz=wxyz, position=position, color=(120, 120, 120))
    start = cameras[start_view or next(iter(cameras))]

    status = server.gui.add_markdown("Click the image to select an object (shift-click adds a click).")
    mode = server.gui.add_dropdown("View", ("rgb", "pca", "similarity", "clusters"), initial_value=session.mode)
    threshold = server.gui.add_slider("Threshold", min=0.0, max=1.0, step=0.01, initial_value=session.threshold)
    # Granularity: only models trained on several mask levels have more than one.
    level = (server.gui.add_slider("Level (0 = parts)", min=0, max=session.selector.levels - 1, step=1,
                                   initial_value=session.level) if session.selector.levels > 1 else None)
    prompt = server.gui.add_text("Text prompt", initial_value="")
    find = server.gui.add_button("Select by text")
    # Steps up the cluster tree from the last click: a part grows to its whole object and back.
    coarser = server.gui.add_button("Coarser") if session.tree is not None else None
    finer = server.gui.add_button("Finer") if session.tree is not None else None
    clear = server.gui.add_button("Clear selection")
    export = server.gui.add_button("Export selection")
    remove = server.gui.add_button("Remove selection")
    keep_only = server.gui.add_button("Keep selection")
    show_all = server.gui.add_button("Show the whole model")
    timing = server.gui.add_markdown("")

    def client_camera(client) -> Camera:
        cam = client.camera
        return camera_from_viser(cam.wxyz, cam.position, cam.fov, cam.aspect, max_side)

    def redraw(client) -> None:
        if session.mode == "rgb":  # the splats are the picture: nothing to render here
            client.scene.set_background_image(None)
            return
        camera = client_camera(client)
        with lock:
            frame = session.render_view(camera)
        client.scene.set_background_image((frame.image * 255).astype(np.uint8), format="png")
        timing.content = f"frame {1000 * frame.seconds:.0f} ms ({camera.width}×{camera.height}, CPU)" \
            if session.backend != "gsplat" else f"frame {1000 * frame.seconds:.0f} ms"

    def redraw_all() -> None:
        for client in server.get_clients().values():
            redraw(client)

    def show_selection() -> None:
        nonlocal splats
        with lock:
            keep = session.selected_gaussians() if session.queries else np.zeros(len(params["means"]), bool)
            pixels = int(session.mask(session.last.features).sum()) if session.queries and session.last else 0
        splats.remove()  # the selection recolours its splats
        splats = server.scene.add_gaussian_splats("/gaussians", **splat_arrays(params, keep))
        status.content = (f"selected {int(keep.sum())} Gaussians; mask {pixels} pixels at threshold "
                          f"{session.threshold:.2f} ({len(session.queries)} click(s), {session.steps} coarser "
                          "step(s))" if session.queries
                          else "Click the image to select an object (shift-click adds a click).")

    @server.on_client_connect
    def _(client) -> None:
        wxyz, position, fov_y = camera_to_viser(start)
        client.camera.wxyz, client.camera.position, client.camera.fov = wxyz, position, fov_y
        client.camera.on_update(lambda _: redraw(client))
        redraw(client)

    def on_click(event, add: bool) -> None:
        with lock:
            session.render_view(client_camera(event.client))  # the features under the click
            try:
                session.click(*event.screen_pos, add=add)
            except ValueError as exc:
                status.content = str(exc)
                return
        redraw(event.client)
        show_selection()

    server.scene.on_click()(lambda event: on_click(event, add=False))
    server.scene.on_click(modifier="shift")(lambda event: on_click(event, add=True))

    @mode.on_update
    def _(_) -> None:
        session.mode = mode.value
        redraw_all()

    @threshold.on_update
    def _(_) -> None:
        session.threshold = float(threshold.value)
        redraw_all()
        show_selection()

    if level is not None:
        @level.on_update
        def _(_) -> None:
            session.level = int(level.value)
            redraw_all()
            show_selection()

    @find.on_click
    def _(_) -> None:
        text = prompt.value.strip()
        if not text:
            status.content = "type a prompt first"
            return
        from .models import ModelLoadError

        try:
            with lock:
                found = session.text(text)
        except (ModelLoadError, RuntimeError) as exc:
            status.content = f"text selection unavailable: {exc}"
            return
        if found is None:
            status.content = f"no {text!r} found in this view"
            return
        redraw_all()
        show_selection()

    def step(walk) -> None:
        try:
            with lock:
                walk()
        except ValueError as exc:
            status.content = str(exc)
            return
        redraw_all()
        show_selection()

    if session.tree is not None:
        coarser.on_click(lambda _: step(session.coarser))
        finer.on_click(lambda _: step(session.finer))

    @clear.on_click
    def _(_) -> None:
        session.clear()
        redraw_all()
        show_selection()

    def edit(mode: str) -> None:
        nonlocal splats
        n = len(list(export_dir.glob("edit_*.ply"))) if export_dir.exists() else 0
        try:
            with lock:
                path, done = session.edit(mode, export_dir / f"edit_{n:03d}.ply", cameras)
        except ValueError as exc:
            status.content = f"nothing edited: {exc}"
            return
        splats.remove()
        splats = server.scene.add_gaussian_splats("/gaussians", **splat_arrays(done.params))
        status.content = (f"{'removed' if mode == 'remove' else 'kept'} the selection: {int(done.kept.sum())} of "
                          f"{len(done.kept)} Gaussians shown; wrote {path}")

    remove.on_click(lambda _: edit("remove"))
    keep_only.on_click(lambda _: edit("keep"))

    @show_all.on_click
    def _(_) -> None:
        show_selection()

    @export.on_click
    def _(_) -> None:
        n = len(list(export_dir.glob("selection_*.ply"))) if export_dir.exists() else 0
        try:
            with lock:
                path, count = session.export(export_dir / f"selection_{n:03d}.ply")
            status.content = f"exported {count} Gaussians to {path}"
        except ValueError as exc:
            status.content = f"nothing exported: {exc}"

    return server


def load_session(cfg, source: str) -> tuple[ViewerSession, dict[str, Camera], Path]:
    """The trained model of a scene (its train stage must be finished) as a session, with its
    cameras and the export folder `<data>/<scene>/viewer/`."""
    from .gaussians import load_ply
    from .pipeline import run_scene_stage, scene_dir
    from .stage import StageMissingError

    scene, trained = run_scene_stage(cfg, source, "train")
    params = load_ply(trained.outputs.ply)
    labels, tree = None, None
    try:
        _, clustered = run_scene_stage(cfg, source, "cluster")
        labels = read_ply_attribute(clustered.outputs.clusters_ply, "cluster")
        tree = ClusterTree.from_json(clustered.outputs.tree)
    except StageMissingError:
        pass
    session = ViewerSession(params, backend=cfg.train.backend, selector=Selector.from_config(cfg), cluster_labels=labels,
                            tree=tree)
    names = scene.test_names + scene.train_names
    cameras = {n: scene.cameras[n] for n in names if n in scene.cameras}
    return session, cameras, scene_dir(cfg, scene.name) / "viewer"


def run_viewer(cfg, scene_source: str, host: str = DEFAULT_HOST, port: int = 8080, max_side: int = 256,
               start_view: str | None = None) -> None:
    """Serve a trained scene until Ctrl-C (`cgc view` and `cgc-view`).

    Args:
        cfg: The root config (the same stages as the flow's must be finished).
        scene_source: `synthetic`, `synthetic-<preset>` or a dataset folder.
        host, port: Where to listen (default loopback only; others are reachable from the network).
        max_side: Long side of the CPU-rendered viewport.
        start_view: The camera (image name) a new browser starts at.
    """
    session, cameras, export_dir = load_session(cfg, scene_source)
    server = serve(session, cameras, export_dir, host, port, max_side, start_view)
    try:  # the announcement inside: a signal that follows it at once still stops the server cleanly
        print(f"cgc viewer: http://{host}:{server.get_port()}  (exports go to {export_dir}; Ctrl-C stops)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
