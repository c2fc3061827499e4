"""Served things listen on loopback unless asked otherwise, and say so when they do not."""

from __future__ import annotations

import pytest

from cgc_core.serving import DEFAULT_HOST, exposure_warning, is_loopback, warn_if_exposed


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.1.1", "localhost", "::1", "[::1]"])
def test_loopback_hosts_need_no_warning(host):
    assert is_loopback(host) and exposure_warning(host, "the cgc viewer", 8080) is None


@pytest.mark.parametrize("host, everywhere", [("0.0.0.0", True), ("::", True), ("192.168.1.20", False),
                                              ("myhost.example", False)])
def test_other_hosts_warn_that_the_service_is_reachable_from_the_network(host, everywhere):
    message = exposure_warning(host, "the cgc viewer", 8080)
    assert message.startswith(f"WARNING: the cgc viewer listens on {host}:8080")
    assert "reachable from the network" in message and f"--host {DEFAULT_HOST}" in message
    assert ("(all interfaces)" in message) is everywhere


def test_warn_if_exposed_prints_the_warning(capsys):
    assert warn_if_exposed("127.0.0.1", "the Prefect server", 4200) is None
    assert capsys.readouterr().out == ""
    warn_if_exposed("0.0.0.0", "the Prefect server", 4200)
    assert "the Prefect server listens on 0.0.0.0:4200 (all interfaces)" in capsys.readouterr().out


def test_defaults_of_every_served_thing_are_loopback():
    import inspect

    from cgc_core import viewer
    from flows import serve as prefect_serve

    assert DEFAULT_HOST == "127.0.0.1"
    assert inspect.signature(viewer.serve).parameters["host"].default == DEFAULT_HOST
    assert inspect.signature(prefect_serve.start).parameters["host"].default == DEFAULT_HOST


def test_viewer_on_all_interfaces_prints_the_warning(capsys):
    import numpy as np

    from cgc_core.gaussians import init_params
    from cgc_core.scene.model import Camera
    from cgc_core.viewer import ViewerSession, serve

    params = init_params(np.random.default_rng(0).normal(size=(20, 3)), None)
    w2c = np.eye(4)
    w2c[2, 3] = 3.0
    camera = Camera(K=np.array([[50.0, 0, 16], [0, 50.0, 12], [0, 0, 1]]), world_to_camera=w2c, width=32, height=24,
                    image_name="view_000.png")
    server = serve(ViewerSession(params), {"view_000.png": camera}, "/tmp", host="0.0.0.0", port=0)
    try:
        assert "the cgc viewer listens on 0.0.0.0" in capsys.readouterr().out
    finally:
        server.stop()
