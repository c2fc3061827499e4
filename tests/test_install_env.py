"""scripts/install_env.py hands uv the package sources pip would use (pip's config, PIP_* first)."""
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("install_env", Path(__file__).parents[1] / "scripts" / "install_env.py")
install_env = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(install_env)

LISTED = """global.cert='/etc/ssl/certs/ca-certificates.crt'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/opt/wheels'
install.find-links='/srv/install-wheels'
:env:.default-timeout='180'
:env:.index-url='https://mirror.example/simple'
"""


def test_pip_settings_follow_pips_precedence():
    settings = install_env.pip_settings(LISTED)
    assert settings["find-links"] == "/srv/install-wheels"  # [install] beats [global]
    assert settings["index-url"] == "https://mirror.example/simple"  # a PIP_ variable
    assert settings["extra-index-url"] == "file:///opt/pypi/simple file:///opt/pypi-more/simple"
    assert settings["cert"] == "/etc/ssl/certs/ca-certificates.crt"


def test_env_variable_beats_a_file_whatever_the_order():
    listed = ":env:.find-links='/from-env'\nglobal.find-links='/from-file'\n"
    assert install_env.pip_settings(listed)["find-links"] == "/from-env"


def test_uv_arguments_carry_every_source_and_the_version_cap():
    args = install_env.uv_arguments(install_env.pip_settings(LISTED))
    assert args[:2] == ["--index-strategy", "unsafe-best-match"]  # pip's best version over all indexes
    pairs = list(zip(args[2::2], args[3::2]))
    assert pairs == [("--index-url", "https://mirror.example/simple"),
                     ("--extra-index-url", "file:///opt/pypi/simple"),
                     ("--extra-index-url", "file:///opt/pypi-more/simple"),
                     ("--find-links", "/srv/install-wheels"),
                     ("--constraint", "/etc/xdg/pip/constraints.txt")]


def test_no_configuration_means_uvs_defaults():
    assert install_env.uv_arguments(install_env.pip_settings("")) == ["--index-strategy", "unsafe-best-match"]
