"""supervisord-batt: a supervisor for batch hosts that keeps run_batt jobs inside the
host's thread and pid limits, hands out a concurrency budget over a Unix socket, and
kills and restarts workers that overrun their wall clock."""

from __future__ import annotations

__version__ = "0.4.0.dev0"


# `%load_ext supervisord_batt` in IPython: the notebook module (and joblib) are imported
# only then, so importing the package stays cheap for jobs and the daemon.
def load_ipython_extension(ipython: object) -> None:
    from supervisord_batt import notebook  # noqa: PLC0415

    notebook.load_ipython_extension(ipython)


def unload_ipython_extension(ipython: object) -> None:
    from supervisord_batt import notebook  # noqa: PLC0415

    notebook.unload_ipython_extension(ipython)
