"""cgc's Prefect flows (`flows.benchmark`) and the local deployment (`flows.serve`).

Importing this package, which every entry point here does before it imports Prefect, sets the
Prefect defaults the project relies on, unless the user set them already: Prefect's home (its
SQLite database and profiles) inside the checkout, no analytics, more time for the temporary local
API server to start on a loaded 2-core machine (Prefect's default, 20 s, was seen to run out), and
cgc's logger in the run logs. So `python -m flows.benchmark ...` run as README shows behaves as
`make demo` does.
"""

from __future__ import annotations

import os
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
PREFECT_DEFAULTS = {
    "PREFECT_HOME": str(CHECKOUT / ".prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "cgc",
}
"""Prefect settings (environment variables) applied when the user has not set them."""

for _name, _value in PREFECT_DEFAULTS.items():
    os.environ.setdefault(_name, _value)
