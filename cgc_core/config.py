"""The one typed configuration every stage reads.

`CgcConfig` is the root; each stage reads only its own section, and the stage's cache key hashes
only that section (see `section_hash`), so changing a training setting never invalidates
calibration. A config is built from defaults, then a YAML file, then command-line overrides of
the form ``section.field=value`` (the value is parsed as YAML, so ``calibrate.min_registered_share=0.8``
and ``synthetic.preset=hard`` both work).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import types
import typing
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import yaml

logger = logging.getLogger("cgc")
SELECTION_THRESHOLD = 0.7
"""CGC's cosine similarity at or above which a pixel or Gaussian belongs to the queried object."""
EDIT_VIEW_SHARE = 0.1
"""An edit takes a Gaussian when this share of its blending weight in the training views paints the
selection's pixels (`edit.edit_selection`; chosen on the demo's edits: RESULTS.md, "Scene editing")."""


class ConfigError(ValueError):
    """A config file or override is malformed: the message names the source and the key."""


@dataclass
class SyntheticConfig:
    """The embedded synthetic tabletop scene (`cgc_core.scene.synthetic`)."""

    preset: Literal["demo", "hard", "tiny", "realistic", "heldout-parts", "heldout-clutter",
                    "realistic-family"] = "demo"
    """Object layout and size: `demo` for `make demo`, `hard` for the difficult cases, `tiny` for fast tests,
    `realistic` (small objects in a furnished room, soft shadows, highlights, reflections) for development;
    `heldout-parts` (objects of several coloured parts) and `heldout-clutter` (a room: same-coloured
    neighbours, a thin pen, glossy and textured objects, occlusion) to judge on, never to tune on;
    their layouts follow `seed`; `realistic-family` draws a tabletop (layout, colours, orbit, light)
    from one distribution per `seed`: `scene.synthetic.FAMILY_DEV_SEEDS` to choose settings on,
    `FAMILY_HELDOUT_SEEDS` to report."""
    seed: int = 0
    """Everything (layout jitter, textures, camera jitter) is deterministic in this seed."""
    n_views: int | None = None
    """Number of orbiting cameras; None takes the preset's value (40–80)."""
    width: int | None = None
    """Image width in pixels; None takes the preset's value."""
    height: int | None = None
    """Image height in pixels; None takes the preset's value."""
    test_every: int = 8
    """Every `test_every`-th view is held out as a test view with ground-truth masks."""
    supersample: int = 3
    """Anti-aliasing: colour is the mean of supersample² rays per pixel (odd, so that the middle
    ray passes through the pixel centre, where instance ids and depth are taken)."""


@dataclass
class VideoConfig:
    """A video as a scene source (`cgc_core.scene.video`): frames sampled, the blurriest dropped."""

    frames: int = 60
    """Frames kept, evenly spaced over the video (after dropping the blurriest)."""
    candidates: float = 1.5
    """Candidate frames per kept frame: this many times `frames` are decoded evenly, and the
    sharpest frame of each group of neighbours is kept (a sharpness score drops the blurred ones)."""
    max_side: int = 1280
    """Downscale frames so that their long side is at most this."""


@dataclass
class CalibrateConfig:
    """Camera calibration with COLMAP through pycolmap (`cgc_core.calibrate`)."""

    mode: Literal["auto", "sfm", "known_poses"] = "auto"
    """`sfm` estimates poses from the images alone; `known_poses` keeps the dataset's poses and
    only triangulates points; `auto` uses known poses when the dataset ships them, except for the
    synthetic scene, whose true poses are ground truth to check SfM against, never an input."""
    camera_model: str = "auto"
    """COLMAP camera model for SfM; `auto` is SIMPLE_PINHOLE for rendered (pinhole) datasets and
    SIMPLE_RADIAL for photos. Models with distortion are undistorted to PINHOLE afterwards."""
    single_camera: bool = True
    """All images share one camera (true for one phone or one synthetic camera)."""
    max_num_features: int = 4096
    """SIFT features per image."""
    sequential_matching_above: int = 200
    """Exhaustive matching up to this many images, sequential matching beyond it."""
    min_registered_share: float = 0.9
    """Fail when fewer than this share of the images registers."""
    num_threads: int = 1
    """Threads for COLMAP (-1: all cores). One makes calibration repeatable: with several, image
    ids follow the order in which extraction threads finish and the randomised estimators vary."""
    seed: int = 0
    """COLMAP's random seed, for repeatable reconstructions."""
    colmap_log_level: int = 2
    """COLMAP's own log threshold: 0 info, 1 warnings, 2 errors."""


@dataclass
class SamConfig:
    """segment-anything's automatic mask generator (`SamAutomaticMaskGenerator`)."""

    model_type: Literal["vit_h", "vit_l", "vit_b"] = "vit_h"
    checkpoint: str | None = None
    """Path of the SAM weights (.pth). Nothing is downloaded: configure the file you have."""
    allow_random_weights: bool = False
    """Without a checkpoint, build the architecture with random weights (tests only: the masks
    are meaningless)."""
    device: str = "auto"
    """`auto`: CUDA when present, else CPU."""
    image_size: int = 1024
    """SAM's input side (the published checkpoints are for 1024). Smaller sides build the same
    architecture for a smaller input, with random weights only: fast CPU tests."""
    max_side: int = 1024
    """Images are downscaled so that their long side is at most this before generation; masks
    are stored at that resolution."""
    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    min_mask_region_area: int = 0


@dataclass
class ClassicalConfig:
    """A weights-free CPU generator (scikit-image Felzenszwalb at several scales).

    Like SAM's automatic masks, its masks overlap (coarse and fine levels) and are inconsistent
    across views: each image draws its own scale jitter from a seed and the image name.
    """

    scales: list[float] = field(default_factory=lambda: [300.0, 1200.0])
    """Felzenszwalb scale per level (larger: bigger segments)."""
    colour: Literal["chroma", "rgb"] = "chroma"
    """What is segmented: `chroma` = chromaticity (r, g, b)/(r+g+b) plus luminance weighted by
    `luminance_weight`, so that the shaded faces of one object stay one segment; `rgb` = the image."""
    luminance_weight: float = 0.2
    """Weight of luminance beside chromaticity (`colour=chroma`): 0 ignores shading entirely (and
    with it the boundary between same-coloured objects), 1 keeps it as strong as colour."""
    sigma: float = 0.8
    """Gaussian smoothing before segmenting."""
    jitter: float = 0.3
    """Per-image relative jitter of the scales (view inconsistency)."""
    min_area_fraction: float = 0.001
    """Drop segments smaller than this fraction of the image."""
    max_side: int = 640
    """Downscale so that the long side is at most this before segmenting."""
    seed: int = 0


@dataclass
class TextureConfig:
    """A weights-free CPU generator that finds objects on patterned backgrounds (issue 39): SLIC
    superpixels merged by colour and texture into nested levels (`masks.regions.texture_regions`;
    RESULTS.md, "Weights-free masks on patterned cloths"). Like SAM's automatic masks, its levels
    nest and differ between views: each image draws its own jitter of the thresholds."""

    thresholds: list[float] = field(default_factory=lambda: [0.12, 0.18, 0.27])
    """Merge distance per level, finest first (`texture_regions`): regions, merged regions,
    object-like groups. Finer levels (0.03, 0.05, 0.08 too) find more objects but training reads
    each pixel's finest mask, and parts of objects there cost the demo 0.35 mIoU (RESULTS.md)."""
    n_superpixels: int = 1200
    """About how many SLIC superpixels start the merging."""
    compactness: float = 10.0
    """SLIC's balance of colour against position."""
    luminance_weight: float = 0.7
    """Luminance beside chromaticity in a region's colour (0.5 before 2026-12-04: the family's
    development seeds 0.491 -> 0.530; RESULTS.md, "Geometry for the masks, with the model's own depth")."""
    window: float = 3.0
    """Texture window (Gaussian standard deviation, pixels at the working resolution)."""
    textured: float = 0.15
    """Mean colour spread at which a region counts as fully textured (compared by context)."""
    spread_weight: float = 0.25
    """Weight of the difference in colour spread between two regions."""
    edge_scale: float = 0.08
    """Colour contrast along a border at which it counts in full; gentler borders (shading across
    one object) bring two regions closer (`texture_regions`). 0: borders left out (before
    2026-12-04; the demo's shaded white capsule then split into parts). RESULTS.md, "Borders"."""
    edge_floor: float = 0.3
    """What is left of two regions' distance across a border without any contrast."""
    jitter: float = 0.2
    """Per-image relative jitter of the thresholds (view inconsistency)."""
    min_area_fraction: float = 0.001
    """Drop regions smaller than this fraction of the image."""
    max_side: int = 640
    """Downscale so that the long side is at most this before segmenting."""
    seed: int = 0


@dataclass
class TruthObjectsConfig:
    """The `truth-objects` generator, an upper-bound diagnostic for scenes with true instance maps
    (the synthetic ones): the classical generator's segments plus each object's true mask, as if a
    segmenter gave every object whole beside its colour parts (SAM's object level). Figures trained
    on it measure what the masks cost, never what the method reaches."""

    keep: float = 0.8
    """Share of (object, view) pairs whose true mask is added, drawn per view from `seed` and the
    image name: the object level is missing in some views, as SAM's is (view inconsistency)."""
    min_area_fraction: float = 0.001
    """Objects covering less than this fraction of the view get no mask."""
    parts_within_objects: bool = False
    """Also cut every classical segment along the true object borders (pieces under
    `min_area_fraction` dropped), so that no segment straddles two objects or an object and the
    background, as SAM's part masks seldom do; without it, two touching same-coloured objects
    keep the colour segment they share, which then encloses both (a group level)."""
    seed: int = 0


@dataclass
class MasksConfig:
    """The mask stage: automatic 2D masks per training image, stored as COCO RLE in Parquet."""

    generator: Literal["auto", "sam", "classical", "texture", "truth-objects"] = "auto"
    """`auto`: the weights-free `texture` generator (colour, texture and borders, `TextureConfig`)
    for the synthetic scenes, SAM otherwise. `classical`: Felzenszwalb on chromaticity
    (`ClassicalConfig`; the synthetic scenes' default before 2026-12-04, better on plain tables:
    RESULTS.md, "Texture masks with the count-normalised temperature"). `truth-objects`:
    classical plus true object masks (synthetic scenes only; an upper-bound diagnostic, see
    `TruthObjectsConfig`)."""
    sam: SamConfig = field(default_factory=SamConfig)
    classical: ClassicalConfig = field(default_factory=ClassicalConfig)
    texture: TextureConfig = field(default_factory=TextureConfig)
    truth_objects: TruthObjectsConfig = field(default_factory=TruthObjectsConfig)


@dataclass
class DensifyConfig:
    """gsplat's densification strategy: `strategy` names the class and every other field is that
    class's own field of the same name, passed as is (`cgc_core.train.densification_strategy`);
    fields the chosen class lacks are ignored (`reset_every`, `grow_grad2d` for MCMC; `cap_max`
    for the default strategy)."""

    strategy: Literal["default", "mcmc", "none"] = "default"
    """`default`: 3DGS's clone/split/prune (gsplat's DefaultStrategy); `mcmc`: gsplat's
    MCMCStrategy (relocation, at most `cap_max` Gaussians); `none`: the initial points only."""
    refine_start_iter: int = 300
    """3DGS: 500."""
    refine_stop_iter: int = 1200
    """3DGS: 15,000."""
    refine_every: int = 100
    reset_every: int = 3000
    """Opacity reset period."""
    grow_grad2d: float = 3e-4
    """Image-space gradient above which a Gaussian grows. 3DGS: 2e-4; 3e-4 grows fewer on small CPU
    views (RESULTS.md, "The train defaults")."""
    cap_max: int = 100_000
    """Most Gaussians MCMC keeps."""


@dataclass
class ContrastiveConfig:
    """The contrastive clustering loss on the 2D masks (`losses.multilevel_contrastive_loss`)."""

    enabled: bool = True
    """Off: the features learn nothing from the masks."""
    every: int = 2
    """Applied every this many iterations. Code: every 50 of 30k; the short CPU schedule needs more
    contrastive steps (RESULTS.md, "The train defaults")."""
    weight: float = 1e-6
    """Code: 1e-6."""
    min_pixels: int = 100
    """Segments smaller than this many pixels are left out. Code: 100."""
    temperature_scale: float = 10.0
    """Factor on each segment's temperature φ = spread / (N log(N + 100)) (lower: sharper). Paper: 1;
    code: 10. Sharper parts a small object from the one it touches and splits shaded and multi-part
    objects: 3 fails the demo, 5 is a lead (RESULTS.md, "The segment temperature")."""
    temperature_clip: list[float] | None = field(default_factory=lambda: [0.1, 1.0])
    """Clip of φ after scaling (code: [0.1, 1.0]); None leaves it unclipped."""
    detach_temperature: bool = True
    """No gradient through φ (code: yes)."""
    reference_segments: int | None = 20
    """None (paper and code, the `paper` preset): φ as above in every view. K₀: φ also times
    log K₀ / log K in a view with K segments, so that a margin between a pixel's own segment and the
    others buys the same probability however many segments the view holds
    (`losses.contrastive_clustering_loss`). 20, about the segments of the demo's views: RESULTS.md,
    "A temperature that does not flatten" and "Texture masks with the count-normalised temperature"."""
    mask_levels: int = 1
    """1 (paper and code): one term on the finest masks. L > 1: one term per nesting level, level l
    on the first `level_dims[l]` channels, so a selection steps between parts and whole objects by
    reading fewer channels (`query.level`)."""
    level_dims: list[int] = field(default_factory=lambda: [16, 8, 4])
    """Feature channels of each level, finest first, decreasing; the first `mask_levels` are used."""
    features_grad_between: Literal["zero", "none"] = "zero"
    """On iterations without a feature loss: `zero` (released code: its one-pass render hands the
    features a zero gradient, so Adam moves them on momentum) or `none` (Adam leaves them)."""


@dataclass
class RegularizerConfig:
    """The spatial-similarity regulariser (`losses.spatial_regularization`)."""

    enabled: bool | None = None
    """False is the paper's "no 3D loss" ablation. None: on, except on frozen geometry, where it
    collapsed the field (RESULTS.md, "The train defaults")."""
    every: int = 4
    """Code: every 100 of 30k iterations; scaled like `contrastive.every`."""
    samples: int = 1000
    max_points: int = 300_000
    k_near: int = 2
    l_far: int = 5
    lambda_near: float = 0.005
    """Paper/code (the `paper` preset): 0.05. The short schedule uses a tenth of both λ (RESULTS.md,
    "The train defaults"). 0 is the paper's "no similarity" ablation."""
    lambda_far: float = 0.015
    """Paper/code: 0.15. 0 is the paper's "no dissimilarity" ablation."""
    far_similarity: Literal["signed", "positive"] = "positive"
    """Paper/code: `signed`, σ(s); `positive`: σ(max(s, 0)), orthogonal counts as dissimilar."""
    near_includes_self: bool = False
    """Released code: True (the sampled Gaussian is one of its own K nearest)."""
    sigmoid_of_mean: bool = True
    """Code: sigmoid of the mean similarity; paper: mean of sigmoids."""


@dataclass
class DepthSplitConfig:
    """Cutting the training views' mask segments where the model's rendered depth jumps
    (`masks.depth_split.split_at_depth_edges`), so that two same-coloured objects one in front of
    the other become two segments."""

    at: float = 0.6
    """Fraction of the iterations at which the cut happens; 0 (paper) never cuts. RESULTS.md,
    "The train defaults"."""
    levels: Literal["all", "finest"] = "all"
    """With several mask levels: cut every level, or only the finest."""
    jump: float = 0.03
    """Relative depth change (|Δz| / z between pixels two apart) that cuts."""
    sharpness: float = 1.0
    """A change cuts only where its inverse-depth change exceeds this many times the changes beside
    it (`depth_edges`); 0: every change over `jump` cuts."""
    fill: float = 8.0
    """Edge pixels and crumbs take the label of the nearest kept piece of their segment within this
    many pixels; 0 leaves them unlabelled."""
    min_pixels: int = 20
    """Pieces smaller than this are crumbs."""
    crease_angle: float = 0.0
    """Also cut along concave creases, where the surface normals of pixels four apart (from the
    rendered depth and the camera's intrinsics) fold inwards by more than this many degrees: a mug
    standing on a table (`masks.depth_split.concave_creases`). 0: no crease cut; 60 lifted the
    family's development mean by 0.015, under the spread between seeds (RESULTS.md, "Creases")."""
    group_height: float = 0.006
    """A pixel stands on the table when its point is higher than this over the table's plane (in
    units of the view's median depth)."""
    plane_tolerance: float = 0.008
    """The table's plane is the plane with the most points within this distance (units of the
    median depth; RANSAC)."""


@dataclass
class FrozenConfig:
    """Training the features alone on a trained 3DGS model (`train.init_ply`)."""

    enabled: bool = False
    """Train only the feature field: no densification, no photometric loss."""
    cache_gb: float = 8.0
    """On the CPU: memory for the views' blending weights (the demo's 42 views take 2.4 GB); views
    beyond it are rendered by the rasterizer on each step."""
    back_project: bool = True
    """On the CPU: at the end, each Gaussian's feature becomes the mean of the rendered features of
    the pixels it is blended into (`render.FrozenViews.back_project`)."""


@dataclass
class HealthConfig:
    """What training records of its feature field (`cgc_core.health`)."""

    every: int = 100
    """Every this many iterations: every loss term, its gradient norm on the features, the Gaussian
    count and the current view's feature separation, in train.json's history. 0: never."""
    views: int = 8
    """At the end, the separation is measured on this many evenly spaced training views."""
    collapse_between: float = 0.5
    """Warn of collapse when the mean cosine between different segments' features reaches this."""


@dataclass
class LearningRates:
    """Adam learning rates per parameter (3DGS's)."""

    means: float = 1.6e-4
    """Times the scene scale; decays exponentially to `means_final`."""
    means_final: float = 1.6e-6
    quats: float = 1e-3
    scales: float = 5e-3
    opacities: float = 5e-2
    sh0: float = 2.5e-3
    shN: float = 1.25e-4
    features: float = 2.5e-3
    """CGC code: the same as the SH DC colour."""


@dataclass
class TrainConfig:
    """Training of the Gaussian feature field (3DGS + contrastive clustering + regulariser)."""

    schedule: Literal["auto", "paper", "cpu-short"] = "auto"
    """The preset applied before the YAML file and the overrides (`PRESETS`), so a value the user
    writes always wins. `paper`: the released code's 30k iterations; `cpu-short` (the defaults): 1,500
    iterations that train the demo on 2 CPU cores; `auto`: paper on CUDA, cpu-short on CPU."""
    iterations: int = 1500
    """Paper: 30k."""
    sh_degree: int = 3
    sh_degree_every: int = 375
    """The SH degree in use rises by one every this many iterations (3DGS: 1000)."""
    downscale: int = 1
    """Train on images downscaled by this factor."""
    backend: str = "auto"
    """Render backend: auto, torch (CPU), gsplat (CUDA)."""
    background: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    seed: int = 0
    init_opacity: float = 0.1
    init_ply: str | None = None
    """Start from a trained 3DGS model (.ply with the standard attributes) in the calibrated
    cameras' frame (`calibrate.mode=known_poses`) instead of the sparse points."""
    checkpoint_every: int = 500
    oom_retries: int = 2
    """On a CUDA out-of-memory error, retry this many times, each at twice the `downscale`."""
    lr: LearningRates = field(default_factory=LearningRates)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    depth_split: DepthSplitConfig = field(default_factory=DepthSplitConfig)
    frozen: FrozenConfig = field(default_factory=FrozenConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    densify: DensifyConfig = field(default_factory=DensifyConfig)


PRESETS: dict[str, dict] = {
    # The released code's (PROTOCOL.md): 30k iterations, L_CC every 50, L_reg every 100 at its λ
    # and signed far term, masks as generated, 3DGS's densification and SH schedule.
    "paper": {"iterations": 30_000, "sh_degree_every": 1000, "checkpoint_every": 5000,
              "contrastive": {"every": 50, "reference_segments": None},
              "regularizer": {"every": 100, "lambda_near": 0.05, "lambda_far": 0.15, "far_similarity": "signed"},
              "depth_split": {"at": 0.0},
              "densify": {"refine_start_iter": 500, "refine_stop_iter": 15_000, "refine_every": 100,
                          "reset_every": 3000, "grow_grad2d": 2e-4}},
    "cpu-short": {},  # TrainConfig's defaults
}
"""`train.schedule`'s presets: train-section values applied before the user's."""


@dataclass
class QueryConfig:
    """Object selection: threshold, and the models behind box and text queries."""

    threshold: float = SELECTION_THRESHOLD
    """Cosine similarity at or above which a pixel belongs to the queried object (CGC: 0.7)."""
    box_query_mode: Literal["mean", "deepest"] = "mean"
    """From a box's SAM mask: the mean feature inside it, or the feature at its deepest pixel."""
    click_radius: int = 0
    """A click reads the mean unit feature of the pixels within this many pixels of it (a square
    window, clipped at the image's edges); 0: the clicked pixel alone, as the paper does; 1 reads
    3 × 3 pixels, for thin objects where one Gaussian can dominate a pixel (RESULTS.md)."""
    level: int | None = None
    """Granularity of a selection when training used several mask levels (`train.contrastive.mask_levels`):
    0 is the finest (parts), higher levels read fewer feature channels (whole objects). None: the
    coarsest trained level, so a click selects the whole object."""
    sam: SamConfig = field(default_factory=SamConfig)
    """SAM for box → mask (its predictor); its checkpoint is configured here."""
    gdino_config: str | None = None
    """Grounding DINO model config (.py); None: the SwinT-OGC config shipped with groundingdino-py."""
    gdino_checkpoint: str | None = None
    """Grounding DINO weights (.pth). Nothing is downloaded."""
    text_encoder: str | None = None
    """Local folder of the BERT text encoder (config + vocab) Grounding DINO uses; None keeps the
    config's `bert-base-uncased`, which must then be in the local Hugging Face cache."""
    allow_random_weights: bool = False
    """Build Grounding DINO without a checkpoint (tests only)."""
    box_threshold: float = 0.3
    text_threshold: float = 0.45
    gdino_image_size: int = 800
    device: str = "auto"


@dataclass
class ClusterConfig:
    """3D clustering of the trained Gaussians by feature, selection and export."""

    min_cluster_size: int = 100
    """HDBSCAN's smallest cluster, in fitted Gaussians (of at most `max_fit_points`)."""
    min_samples: int | None = 10
    """HDBSCAN's density smoothing (None: = min_cluster_size)."""
    max_fit_points: int = 20_000
    """HDBSCAN is fitted on at most this many Gaussians (a seeded sample); the rest take the label
    of the nearest cluster centre by cosine, which keeps 100k+ Gaussians within seconds."""
    min_opacity: float = 0.1
    """Only Gaussians at least this opaque are fitted and scored (faint ones carry little signal);
    every Gaussian still gets a label."""
    split_gap: float = 10.0
    """Before the background rules, each cluster splits into the pieces of it that lie apart: its
    fitted Gaussians farther than this many times the median distance between nearest Gaussians
    from the rest (`cluster.split_apart`); pieces of at least half `min_cluster_size` become
    clusters, so a lamp's shade that shares its feature with a picture across the room is judged
    apart from it; Gaussians of a cluster this far from all of its pieces (strays) go with the
    cluster of the nearest Gaussian that is not a stray, i.e. with what they lie against. 0: no
    split. RESULTS.md, "Pieces apart" and "Strays go with what they lie against"."""
    background_spread: float = 0.2
    """Clusters spread wider than this many times the scene's spread (median distance from the
    median, of the opaque Gaussians) merge into one background cluster (`cluster.merge_background`);
    0: none merges for its spread. RESULTS.md, "One background cluster"."""
    background_beyond_cameras: float = 1.0
    """Clusters whose median position lies farther from the point the cameras look at than this
    many times the cameras' own median distance from it merge into the background too: what lies
    outside the ring of cameras of an object-centric capture (walls, pictures, furniture) is the
    surroundings, however compact (`cluster.camera_look_at`). 0 turns it off; it does nothing
    where the cameras' axes do not meet (a forward-facing capture). RESULTS.md, "Outside the ring of cameras"."""
    background_flat: float = 0.01
    """Clusters 90 % of whose Gaussians lie within this many times the cameras' distance of the plane
    the objects stand on merge into the background too: patches of the table or floor that the masks
    cut apart (shadows, reflections), flat as nothing standing on the table is (an object flatter than
    this, a napkin, merges with them); and every Gaussian of another cluster that close to the plane
    joins the background (the floor beneath an object, which the masks gave to the object's segment).
    The plane: the dominant one near the point the cameras look at,
    within 30° of their up direction (`cluster.support_plane`). 0 turns it off; it does nothing
    without that point. RESULTS.md, "Flat on the table"."""
    noise: Literal["nearest", "keep"] = "nearest"
    """HDBSCAN noise: give it the nearest cluster by feature, or keep it unlabelled (-1)."""
    outlier_neighbours: int = 10
    """Spatial outlier removal of a selected object: neighbours for the mean distance."""
    outlier_std_ratio: float = 2.0
    """A selected Gaussian whose mean neighbour distance exceeds mean + ratio·std is dropped."""
    export_clusters: bool = True
    """Write one .ply per cluster beside the labelled whole-scene .ply."""
    export_masks: bool = True
    """Write multi-view consistent 2D masks of every training view from the clusters
    (`instance_masks/`: 16-bit PNG label maps and COCO-RLE `instances.json`, ids = cluster ids)."""
    tree_radius: float = 2.0
    """The cluster tree (`hierarchy.build_cluster_tree`, walked by coarser selection steps): two
    Gaussians touch within this many times the median distance between nearest Gaussians."""
    tree_min_link: float = 0.05
    """Groups of clusters whose strongest link (touching pairs per Gaussian of the smaller, times
    the agreement of their features) is weaker stay apart. RESULTS.md, "Coarser steps". Whatever
    links them, two groups that each hold a cluster standing on the table (the plane of
    `background_flat`; `hierarchy.standing_clusters`) stay apart: RESULTS.md, "Side by side on the table"."""
    tree_view_groups: float = 0.1
    """Two clusters also link by the share of the training views showing both in which one object
    region holds both (`hierarchy.view_group_links`: the model's depth standing on the table's plane,
    less its jumps, with `train.depth_split`'s plane and jump settings), where that share is at least
    this; 0: 3D contact alone. RESULTS.md, "Coarser steps from the views' object regions"."""
    tree_support: float = 0.5
    """A cluster that touches nothing but the background in 3D (the sum of its links to the others
    under `tree_min_link`: a lamp's shade on a stem too thin for the model) also links to the cluster
    straight beneath the largest share of its Gaussians (along the cameras' mean up direction;
    `hierarchy.support_links`), where that share is at least this; 0: off. RESULTS.md, "What holds
    a floating part up" and "Pieces apart"."""
    seed: int = 0


@dataclass
class ReportConfig:
    """The generated benchmark report."""

    title: str = "cgc benchmark"
    views_per_prompt: int = 4
    """Test views in each prompt's figure strip."""
    figures: bool = True
    """Draw the figures (bar chart, mask strips); off: tables only."""


EVALUATION_PROTOCOLS = ("text", "box-oracle", "click-oracle", "click-oracle-steps", "ovs-argmax")


@dataclass
class EvaluateConfig:
    """The evaluate stage: which protocols choose the query features, and the scoring rules."""

    protocol: str | list[str] = "auto"
    """One protocol or a list (rows for each, side by side):
    `text` (the paper's: Grounding DINO box for the prompt -> SAM mask -> query; needs
    query.gdino_checkpoint and query.sam.checkpoint), `box-oracle` (the ground truth's bounding box
    -> SAM -> query; needs query.sam.checkpoint), `click-oracle` (the rendered feature at the deepest
    pixel of the ground truth; needs no weights, an upper bound), `click-oracle-steps` (that click,
    then coarser steps up the cluster tree while the IoU in the grounding view rises; an upper
    bound on a click plus steps, `evaluate.oracle_steps`), `ovs-argmax` (3D-OVS's own metric:
    each pixel takes the class whose query it is most similar to; queries from `ovs_queries`), or
    `auto`: `text` for LERF-Mask and 3D-OVS scenes, `click-oracle` for the others."""
    grounding_image: Literal["photo", "render"] = "photo"
    """What the detector and SAM see in the grounding view (the first test view with the prompt's
    ground truth): the test photo, or our render of that view."""
    ovs_queries: Literal["text", "box-oracle", "click-oracle"] = "text"
    """Where `ovs-argmax` takes each class's query from."""
    missing_as_zero: bool = False
    """Count a missing prediction as IoU 0 with a warning instead of failing."""
    empty_union: Literal["nan", "one"] = "nan"
    """A view where ground truth and prediction are both empty: `nan` (the reference script's
    rule: left out of the mean, counted and shown in the report) or `one` (scored 1)."""


@dataclass
class StageConfig:
    """Orchestration settings shared by every stage's task."""

    retries: int = 1
    """How often Prefect retries a failed stage."""
    retry_delay_seconds: float = 2.0
    """Pause before a retry."""


@dataclass
class CgcConfig:
    """Root config: one section per stage."""

    data_dir: str = "data"
    """Where stage outputs go: `<data_dir>/<scene>/<stage>/`."""
    reports_dir: str = "reports"
    """Where generated reports go."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    masks: MasksConfig = field(default_factory=MasksConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    stage: StageConfig = field(default_factory=StageConfig)


def to_dict(value: Any) -> Any:
    """Plain nested dicts and lists of a config dataclass, or of a tuple of sections and values (for
    YAML, JSON and hashing)."""
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        return [to_dict(v) for v in value]
    return value


def section_hash(section: Any, length: int = 16) -> str:
    """Stable hex digest of a config section, a tuple of sections and values, or any JSON-able
    mapping (sorted keys, dataclasses as dicts): the one hasher behind every stage cache key."""
    payload = json.dumps(to_dict(section), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Validate (and gently coerce) a value read from YAML against a field annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check_type(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_check_type(v, (args or (Any,))[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if annotation is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:  # an int, or an exponent form without a dot like 3e-4, which YAML 1.1 (PyYAML) reads as a string
            value = float(value)
        except (ValueError, OverflowError):
            pass
    if annotation is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    if annotation in (int, float, str, bool) and (not isinstance(value, annotation)
                                                  or (annotation is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
    return value


DEPRECATED_TRAIN_KEYS: dict[str, str] = {
    **{f"cc_{k}": f"contrastive.{k}" for k in ("every", "weight", "min_pixels", "temperature_scale",
                                               "temperature_clip", "detach_temperature")},
    "use_cc": "contrastive.enabled", "mask_levels": "contrastive.mask_levels", "level_dims": "contrastive.level_dims",
    "features_grad_between_cc": "contrastive.features_grad_between", "use_reg": "regularizer.enabled",
    **{f"reg_{k}": f"regularizer.{k}" for k in ("every", "samples", "max_points", "far_similarity",
                                                "near_includes_self", "sigmoid_of_mean")},
    **{k: f"regularizer.{k}" for k in ("k_near", "l_far", "lambda_near", "lambda_far")},
    **{f"depth_split_{k}": f"depth_split.{k}" for k in ("at", "levels", "jump", "sharpness", "fill", "min_pixels")},
    "freeze_geometry": "frozen.enabled", "frozen_cache_gb": "frozen.cache_gb", "frozen_back_project": "frozen.back_project",
    "health_every": "health.every", "health_views": "health.views", "collapse_between": "health.collapse_between",
    **{f"lr_{k}": f"lr.{k}" for k in ("means", "means_final", "quats", "scales", "opacities", "sh0", "shN", "features")},
    "densify.mcmc_cap_max": "densify.cap_max",
}
"""Train keys of before the config had sections (issue 37) -> their new place under `train.`; they
still work, with a one-line warning naming the new key."""

_COLLAPSE, _ZOOM = "The realistic development scene and the feature collapse", "Zoomed windows, repeated and held out"
REMOVED_KEYS: dict[str, str] = {
    **dict.fromkeys(["train.contrastive.reduction", "train.cc_reduction", "train.regularizer.far", "train.reg_far",
                     "train.regularizer.near_pairs", "train.reg_near_pairs", "train.feature_init"], _COLLAPSE),
    **dict.fromkeys(["train.contrastive.zoom", "train.contrastive.zoom_share"], _ZOOM),
    "train.contrastive.balance": "Small segments weigh more",
    "train.depth_split.groups": "Object groups from the model's depth",
    "cluster.position_weight": "Pieces apart: a lamp's shade that shares its feature with a picture",
}
"""Ablation options measured, not chosen and removed -> the RESULTS.md section that measured them
(the code that ran them is in that commit's history)."""


def _undeprecated(updates: dict[str, Any], source: str) -> dict[str, Any]:
    """The train section's updates with old flat keys moved to their sections (a warning each)."""
    updates = {k: dict(v) if isinstance(v, dict) else v for k, v in updates.items()}
    for key in list(updates):
        nested = [f"{key}.{k}" for k in updates[key]] if isinstance(updates[key], dict) else []
        for old in (o for o in [key, *nested] if o in DEPRECATED_TRAIN_KEYS):
            new = DEPRECATED_TRAIN_KEYS[old]
            logger.warning("%s: train.%s is deprecated; use train.%s", source, old, new)
            value = updates[key].pop(old.split(".")[1]) if "." in old else updates.pop(old)
            section, name = new.split(".")
            updates.setdefault(section, {})[name] = value
    return updates


def _merge(config: Any, updates: dict[str, Any], source: str, prefix: str = "") -> None:
    """Apply a nested dict of updates onto a config dataclass in place, checking every key."""
    hints = typing.get_type_hints(type(config))
    known = {f.name for f in dataclasses.fields(config)}
    for key, value in updates.items():
        where = f"{source}: {prefix}{key}"
        if key not in known and f"{prefix}{key}" in REMOVED_KEYS:
            raise ConfigError(f"{where}: removed, measured and not chosen (benchmarks/RESULTS.md, "
                              f"\"{REMOVED_KEYS[prefix + key]}\")")
        if key not in known:
            raise ConfigError(f"{where}: unknown key (known: {sorted(known)})")
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: expected a mapping of {type(current).__name__} fields")
            _merge(current, value, source, prefix=f"{prefix}{key}.")
        else:
            setattr(config, key, _check_type(value, hints[key], where))


def evolve(section: Any, **values: Any) -> Any:
    """A copy of a config dataclass with `values` applied the way a YAML file applies them: checked
    against the field types, and a mapping updates a subsection field by field
    (``evolve(cfg.train, iterations=20, contrastive={"every": 1})``)."""
    copy = deepcopy(section)
    source = type(section).__name__
    _merge(copy, _undeprecated(values, source) if isinstance(section, TrainConfig) else values, source)
    return copy


def resolve_preset(schedule: str, backend: str, cuda: bool | None = None) -> str:
    """The preset `train.schedule` names: `auto` is `paper` on CUDA (the gsplat backend, or `auto`
    with a GPU present; `cuda` overrides the check) and `cpu-short` otherwise."""
    if schedule != "auto":
        return schedule
    if cuda is None:
        import torch

        cuda = backend == "gsplat" or (backend == "auto" and torch.cuda.is_available())
    return "paper" if cuda else "cpu-short"


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config sections")
    return data


def _parse_override(item: str) -> dict:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected section.field=value")
    dotted, raw = item.split("=", 1)
    nested = yaml.safe_load(raw) if raw.strip() else None
    for part in reversed(dotted.strip().split(".")):  # a.b=v -> {"a": {"b": v}}
        nested = {part: nested}
    return nested


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                cuda: bool | None = None) -> CgcConfig:
    """Build the root config: defaults, then the preset `train.schedule` names (`PRESETS`), then a
    YAML file, then ``section.field=value`` overrides, so a value the user writes always wins.

    Args:
        path: Optional YAML file whose nested mapping mirrors `CgcConfig`.
        overrides: Strings like ``"calibrate.camera_model=PINHOLE"``; values are parsed as YAML.
        cuda: Whether training runs on CUDA, for `train.schedule=auto`; None asks torch.

    Returns:
        The validated `CgcConfig`, its `train.schedule` naming the preset that was applied.

    Raises:
        ConfigError: the file is missing or not YAML, a key is unknown, or a value has the wrong type.
    """
    sources = ([(str(path), _read_yaml(Path(path)))] if path is not None else []) + [
        (f"override {item!r}", _parse_override(item)) for item in overrides or []]
    # Old flat train keys move to their sections once, here, with one warning each.
    sources = [(source, {**data, "train": _undeprecated(data["train"], source)}
                if isinstance(data.get("train"), dict) else data) for source, data in sources]
    probe = CgcConfig()  # the user's values alone, to learn which preset they name
    for source, data in sources:
        _merge(probe, data, source)
    preset = resolve_preset(probe.train.schedule, probe.train.backend, cuda)
    config = CgcConfig()
    for source, data in [(f"preset {preset!r}", {"train": PRESETS[preset]}), *sources]:
        _merge(config, data, source)
    config.train.schedule = preset
    problems = validate_config(config)
    if problems:
        names = ", ".join(source for source, _ in sources)
        raise ConfigError(f"{names or 'config'}: " + "; ".join(problems))
    return config


_SAM_RULE = (lambda v: v.image_size == 1024 or v.allow_random_weights,
             "of image_size 1024 unless allow_random_weights (the checkpoints are for 1024)")
# (section, field) -> (check, what it must be); a subsection is named by its dotted path
# ("masks.truth_objects"). Fields matching a section's "lr_*" are added below.
_RULES: dict[tuple[str, str], tuple[Callable[[Any], bool], str]] = {
    ("train", "iterations"): (lambda v: v >= 1, ">= 1"),
    ("train", "downscale"): (lambda v: v >= 1, ">= 1"),
    ("train.contrastive", "every"): (lambda v: v >= 1, ">= 1"),
    ("train.regularizer", "every"): (lambda v: v >= 1, ">= 1"),
    ("train.depth_split", "at"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("train.depth_split", "jump"): (lambda v: v > 0, "> 0"),
    ("train.depth_split", "sharpness"): (lambda v: v >= 0, ">= 0"),
    ("train.depth_split", "fill"): (lambda v: v >= 0, ">= 0"),
    ("train.depth_split", "min_pixels"): (lambda v: v >= 0, ">= 0"),
    ("train.contrastive", "weight"): (lambda v: v >= 0, ">= 0"),
    ("train.regularizer", "lambda_near"): (lambda v: v >= 0, ">= 0"),
    ("train.regularizer", "lambda_far"): (lambda v: v >= 0, ">= 0"),
    ("train.depth_split", "crease_angle"): (lambda v: 0 <= v < 180, "in [0, 180) degrees"),
    ("train.depth_split", "group_height"): (lambda v: v > 0, "> 0"),
    ("train.depth_split", "plane_tolerance"): (lambda v: v > 0, "> 0"),
    ("train.contrastive", "reference_segments"): (lambda v: v is None or v >= 2, "null or >= 2"),
    ("train", "sh_degree"): (lambda v: 0 <= v <= 3, "between 0 and 3"),
    ("train", "init_opacity"): (lambda v: 0 < v < 1, "in (0, 1)"),
    ("train.contrastive", "mask_levels"): (lambda v: v >= 1, ">= 1"),
    ("train.contrastive", "level_dims"): (lambda v: bool(v) and all(0 < b < a for a, b in zip([17, *v], v)),
                                          "a non-empty decreasing list of channel counts between 1 and 16"),
    ("query", "level"): (lambda v: v is None or v >= 0, "null or >= 0"),
    ("train", "oom_retries"): (lambda v: v >= 0, ">= 0"),
    ("query", "threshold"): (lambda v: -1 <= v <= 1, "a cosine similarity in [-1, 1]"),
    ("masks", "sam"): _SAM_RULE,
    ("masks.truth_objects", "keep"): (lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("query", "sam"): _SAM_RULE,
    ("evaluate", "protocol"): (lambda v: bool(v) and all(p in EVALUATION_PROTOCOLS + ("auto",)
                                                        for p in ([v] if isinstance(v, str) else v)),
                               f"one of {['auto', *EVALUATION_PROTOCOLS]} or a non-empty list of them"),
    ("cluster", "min_cluster_size"): (lambda v: v >= 2, ">= 2"),
    ("cluster", "tree_view_groups"): (lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("cluster", "tree_support"): (lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("cluster", "background_flat"): (lambda v: v >= 0, ">= 0"),
    ("cluster", "split_gap"): (lambda v: v >= 0, ">= 0"),
    ("cluster", "max_fit_points"): (lambda v: v is None or v >= 2, ">= 2 or null"),
    ("stage", "retries"): (lambda v: v >= 0, ">= 0"),
    ("stage", "retry_delay_seconds"): (lambda v: v >= 0, ">= 0"),
}


def validate_config(config: CgcConfig) -> list[str]:
    """Values that are the right type but cannot work (a negative learning rate, zero iterations...)."""
    problems = []

    def check(section: Any, path: str) -> None:  # every field of a section and of its subsections
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            rule = _RULES.get((path, f.name))
            if rule is None and path == "train.lr":
                rule = (lambda v: v > 0, "> 0")
            if rule is not None and not rule[0](value):
                problems.append(f"{path}.{f.name} must be {rule[1]}, got {value!r}")
            if dataclasses.is_dataclass(value):
                check(value, f"{path}.{f.name}")

    for section in dataclasses.fields(config):
        if dataclasses.is_dataclass(getattr(config, section.name)):
            check(getattr(config, section.name), section.name)
    cc = config.train.contrastive
    if len(cc.level_dims) < cc.mask_levels:
        problems.append(f"train.contrastive.level_dims must name at least train.contrastive.mask_levels="
                        f"{cc.mask_levels} channel counts, got {cc.level_dims!r}")
    if config.query.level is not None and config.query.level >= cc.mask_levels:
        problems.append(f"query.level must be below train.contrastive.mask_levels={cc.mask_levels} (levels 0.."
                        f"{cc.mask_levels - 1}), got {config.query.level}")
    return problems
