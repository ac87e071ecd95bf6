"""The client context: what every command and stage shares.

The CLI's root callback builds a Context; every stage receives it. It holds the workspace, the loaded
configuration, the UI, and ONE `backend` (ftctl.backends.base.Backend), built on first use from the
registry in ftctl.backends — the backend owns its handles (the local workspace's MLflow stores; Azure
ML's MLClients) and builds them lazily, so `ftctl --help` and `ftctl status` import nothing heavy and
`ftctl run` pays each import only once. This module names no backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl.config import Config, LoadedConfig
from ftctl.state import StateStore, keep_signatures_in
from ftctl.ui import UI

if TYPE_CHECKING:
    from ftctl.backends.base import Backend


@dataclass(frozen=True)
class Context:
    """Built once per command from the global options; never changed afterwards (per-command options
    travel to the runner as a RunOptions, the stage state as a StageCall)."""

    workspace: Path
    config: LoadedConfig
    ui: UI = field(default_factory=UI)
    debug: bool = False
    command: str = "ftctl"
    # What the caller injects into the backend's handles (tests: Azure ML's transport and credential).
    backend_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        keep_signatures_in(self.workspace)  # the content hashes of unchanged files, between commands

    @property
    def cfg(self) -> Config:
        return self.config.values

    @property
    def backend_name(self) -> str:
        return self.cfg.backend

    @cached_property
    def backend(self) -> Backend:
        """The configured backend: its stages, capabilities and commands (its module imports nothing
        heavy; its handles are built when a stage first needs them)."""
        from ftctl.backends import create

        return create(self, self.backend_options)

    @cached_property
    def state_store(self) -> StateStore:
        return StateStore(self.workspace)

    def data_dir(self) -> Path:
        path = Path(self.cfg.data.download_dir).expanduser()
        return path if path.is_absolute() else self.workspace / path
