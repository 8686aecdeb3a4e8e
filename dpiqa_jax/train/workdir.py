"""Checks of a run's workdir and checkpoint settings that need no model, no JAX and no Orbax, so
a launcher can make them in its first second, before the heavy imports."""

from __future__ import annotations

import os
import tempfile


class RunSettingsError(ValueError):
    """The workdir or the checkpoint settings cannot hold the run (found before any model work)."""


def check_keep(keep: int) -> None:
    if keep < 1:
        raise RunSettingsError(f"keep_checkpoints must be at least 1, got {keep}")


def check_workdir(workdir: str) -> str:
    """The absolute workdir, created if missing; refuses a file or a folder it cannot write."""
    path = os.path.abspath(os.path.expanduser(workdir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunSettingsError(f"workdir {workdir}: exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise RunSettingsError(f"workdir {workdir}: cannot be written "
                               f"({error.strerror or error})") from None
    return path


def check_run_settings(workdir: str, keep: int) -> str:
    """Both checks above; returns the absolute workdir."""
    check_keep(keep)
    return check_workdir(workdir)
