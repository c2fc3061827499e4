import pytest
import yaml

from cgc_core.config import CgcConfig, ConfigError, load_config, section_hash, to_dict


def test_defaults_file_and_overrides_apply_in_order(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("calibrate:\n  max_num_features: 1000\n  camera_model: PINHOLE\nsynthetic:\n  preset: hard\n")
    cfg = load_config(path, ["calibrate.max_num_features=2000", "synthetic.n_views=50"])
    assert cfg.calibrate.max_num_features == 2000  # override beats file
    assert cfg.calibrate.camera_model == "PINHOLE"  # file beats default
    assert cfg.synthetic.preset == "hard"
    assert cfg.synthetic.n_views == 50
    assert cfg.calibrate.min_registered_share == 0.9  # untouched default


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["calibrate.min_registered_share=0.5", "synthetic.seed=3"])
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(to_dict(cfg)))  # what `cgc config` prints
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg


@pytest.mark.parametrize(
    "text, needle",
    [
        ("calibrate:\n  bogus: 1\n", "calibrate.bogus: unknown key"),
        ("calibrate:\n  max_num_features: many\n", "calibrate.max_num_features: expected int"),
        ("synthetic:\n  preset: huge\n", "synthetic.preset: 'huge' is not one of"),
        ("calibrate: 3\n", "calibrate: expected a mapping"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("calibrate: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_file_names_file_and_key(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert needle in str(err.value)


def test_missing_file_and_bad_override_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected section.field=value"):
        load_config(None, ["calibrate.seed"])


def test_int_accepted_for_float_but_bool_not_for_int():
    assert load_config(None, ["calibrate.min_registered_share=1"]).calibrate.min_registered_share == 1.0
    with pytest.raises(ConfigError):
        load_config(None, ["calibrate.seed=true"])


def test_exponent_floats_are_floats_and_words_are_not():
    # PyYAML reads "3e-4" (no dot) as a string; a float field must still take it.
    assert load_config(None, ["train.densify.grow_grad2d=3e-4"]).train.densify.grow_grad2d == pytest.approx(3e-4)
    with pytest.raises(ConfigError, match="train.lr.means: expected float"):
        load_config(None, ["train.lr.means=fast"])


def test_old_flat_train_keys_still_work_with_one_line_naming_the_new_key(tmp_path, caplog):
    path = tmp_path / "old.yaml"
    path.write_text("train:\n  cc_every: 3\n  lambda_near: 0.01\n  densify:\n    mcmc_cap_max: 500\n")
    with caplog.at_level("WARNING", logger="cgc"):
        cfg = load_config(path, ["train.freeze_geometry=true"])
    assert (cfg.train.contrastive.every, cfg.train.regularizer.lambda_near, cfg.train.densify.cap_max,
            cfg.train.frozen.enabled) == (3, 0.01, 500, True)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"{path}: train.cc_every is deprecated; use train.contrastive.every",
                     f"{path}: train.lambda_near is deprecated; use train.regularizer.lambda_near",
                     f"{path}: train.densify.mcmc_cap_max is deprecated; use train.densify.cap_max",
                     "override 'train.freeze_geometry=true': train.freeze_geometry is deprecated; use train.frozen.enabled"]
    assert cfg == load_config(None, ["train.contrastive.every=3", "train.regularizer.lambda_near=0.01",
                                     "train.densify.cap_max=500", "train.frozen.enabled=true"])
    with pytest.raises(ConfigError, match="train.contrastive.every: expected int"):
        load_config(None, ["train.cc_every=often"])  # the new key is named in errors too
    # An ablation option that was removed points at its measurement, under its old name too.
    for removed in ("train.contrastive.zoom=2", "train.cc_reduction=segments", "train.contrastive.balance=0.5",
                    "train.depth_split.groups=0.5", "cluster.position_weight=0.2"):
        with pytest.raises(ConfigError, match=rf"{removed.split('=')[0]}: removed, measured and not chosen "
                                              r"\(benchmarks/RESULTS.md, \"(Zoomed windows|The realistic|Small|Object|Pieces)"):
            load_config(None, [removed])


def test_section_hash_tracks_only_its_section():
    a, b = CgcConfig(), CgcConfig()
    b.synthetic.seed = 7
    assert section_hash(a.calibrate) == section_hash(b.calibrate)
    assert section_hash(a.synthetic) != section_hash(b.synthetic)
