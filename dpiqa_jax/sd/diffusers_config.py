"""Reading a diffusers config dict into one of our config dataclasses, strictly."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any


def dataclass_kwargs(cfg: Mapping[str, Any], fields: Collection[str], *, component: str,
                     ignored: Collection[str] = (),
                     unsupported_unless_default: Mapping[str, Any] | None = None
                     ) -> dict[str, Any]:
    """The entries of a diffusers config (`unet/config.json`, `vae/config.json`) that are fields
    of our dataclass, lists made tuples.

    Keys starting with "_" and `ignored` keys are skipped; a key of `unsupported_unless_default`
    (a feature we do not implement) must hold diffusers' default there.

    Raises:
      ValueError: naming the `component` and any unknown key or unsupported value.
    """
    defaults = unsupported_unless_default or {}
    kwargs = {}
    for key, value in cfg.items():
        if key.startswith("_") or key in ignored:
            continue
        if key in defaults:
            if value != defaults[key]:
                raise ValueError(f"unsupported {component} config {key}={value!r}: only "
                                 f"{defaults[key]!r} is implemented")
            continue
        if key not in fields:
            raise ValueError(f"unknown {component} config key {key}={value!r}")
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    return kwargs
