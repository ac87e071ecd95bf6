"""The backends ftctl has: the only list of their names, and how a Context builds one.

Each backend is a package under ftctl.backends whose `backend` module holds one `Backend` subclass
(ftctl.backends.base). Classes are imported on first use, so naming them costs nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ftctl.backends.base import Backend
    from ftctl.context import Context

# name -> "module:class"; the first is the default.
_CLASSES = {
    "local": "ftctl.backends.local.backend:LocalBackend",
    "azureml": "ftctl.backends.azureml.backend:AzureBackend",
}
NAMES: tuple[str, ...] = tuple(_CLASSES)
DEFAULT = NAMES[0]


def backend_class(name: str) -> type[Backend]:
    if name not in _CLASSES:
        raise KeyError(f"unknown backend {name!r}; backends are: {', '.join(NAMES)}")
    module, _, cls = _CLASSES[name].partition(":")
    found: type[Backend] = getattr(importlib.import_module(module), cls)
    return found


def create(ctx: Context, options: Mapping[str, Any] | None = None) -> Backend:
    """The backend `ctx`'s configuration names, given `options` for its handle."""
    return backend_class(ctx.cfg.backend)(ctx, options)
