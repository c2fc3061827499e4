"""Where a served thing listens: loopback by default, and a plain warning when it is not.

The viewer (viser) and the local Prefect server listen on 127.0.0.1 unless the user passes a host.
A host that is not a loopback address makes the service reachable from other machines on the
network, without authentication: `exposure_warning` says so, in words the program prints.
"""

from __future__ import annotations

import ipaddress
import logging

DEFAULT_HOST = "127.0.0.1"
logger = logging.getLogger("cgc")


def is_loopback(host: str) -> bool:
    """True when `host` is reachable only from this machine (127.0.0.0/8, ::1, `localhost`)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve to anything
        return False


def exposure_warning(host: str, what: str, port: int | None = None) -> str | None:
    """The warning to print before serving `what` on `host`; None for a loopback host.

    Args:
        host: The interface the service binds to (`0.0.0.0`, `::`, an address or a host name).
        what: What is served, for the message ("the cgc viewer").
        port: The port, named in the message when given.
    """
    if is_loopback(host):
        return None
    where = f"{host}:{port}" if port is not None else host
    everywhere = " (all interfaces)" if host.strip("[]") in ("0.0.0.0", "::", "") else ""
    return (f"WARNING: {what} listens on {where}{everywhere}, so it is reachable from the network, without "
            f"authentication; pass --host {DEFAULT_HOST} to keep it on this machine")


def warn_if_exposed(host: str, what: str, port: int | None = None) -> str | None:
    """Log (logger `cgc`) and print `exposure_warning(...)` when there is one; returns it."""
    message = exposure_warning(host, what, port)
    if message is not None:
        logger.warning(message)
        print(message, flush=True)
    return message
