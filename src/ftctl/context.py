"""The client context: the one place that builds backend handles.

The CLI's root callback builds a Context; every stage receives it and asks it for the backend handle
(`ctx.local` for the embedded backend; Azure ML's MLClient and registry client for `azureml`). Handles
are built lazily, once per process, so `ftctl --help` and `ftctl status` import nothing heavy and
`ftctl run` pays each import only once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl.config import Config, LoadedConfig
from ftctl.errors import UsageError
from ftctl.state import StateStore
from ftctl.ui import UI

if TYPE_CHECKING:
    from ftctl.backends.azureml.client import AzureHandles
    from ftctl.backends.local.workspace import LocalWorkspace


@dataclass
class Context:
    workspace: Path
    config: LoadedConfig
    ui: UI = field(default_factory=UI)
    debug: bool = False
    command: str = "ftctl"
    wait: bool = True  # False with `--no-wait`: start long-running work, record its id, return
    # Set by the runner while a stage runs: saves partial outputs (a job id, a server pid) into the
    # state file before the stage starts waiting on them.
    checkpoint: Callable[[dict[str, Any]], None] | None = None
    # The live stage-state the runner works on (set by pipeline.Runner).
    state: dict[str, Any] | None = None
    # `--dry-run`: a stage shows what it would create (the SDK entities as YAML), sends nothing that
    # creates or changes anything, and the runner records nothing.
    dry_run: bool = False
    # Per-command options a stage reads (e.g. `teardown --compute` -> {"compute": True}).
    flags: dict[str, Any] = field(default_factory=dict)

    @property
    def cfg(self) -> Config:
        return self.config.values

    @property
    def backend(self) -> str:
        return self.cfg.backend

    @cached_property
    def state_store(self) -> StateStore:
        return StateStore(self.workspace)

    @cached_property
    def local(self) -> LocalWorkspace:
        """The embedded backend's handle: folders plus MLflow tracking and registry stores."""
        if self.backend != "local":
            raise UsageError(f"the local workspace is not available with --backend {self.backend}")
        from ftctl.backends.local.workspace import LocalWorkspace

        return LocalWorkspace(self.workspace)

    @cached_property
    def azure(self) -> AzureHandles:
        """Azure ML's handles: the credential, the workspace MLClient and the registry MLClient.

        Built once per process (the registry client on first use); azure.* is imported only here.
        """
        if self.backend != "azureml":
            raise UsageError(f"Azure ML is not available with --backend {self.backend}")
        from ftctl.backends.azureml.client import AzureHandles

        return AzureHandles(self)

    def require_local(self, stage: str) -> LocalWorkspace:
        if self.backend == "azureml":
            raise UsageError(
                f"`ftctl {stage}` on --backend azureml is not available in this version of ftctl",
                hint="use the default local backend (--backend local)",
            )
        return self.local

    def save_progress(self, outputs: dict[str, Any]) -> None:
        """Record partial outputs now (before a long wait), so an interrupted run can re-attach."""
        if self.checkpoint is not None:
            self.checkpoint(outputs)

    def outputs(self, stage: str) -> dict[str, Any]:
        """The recorded outputs of another stage."""
        state = self.state if self.state is not None else self.state_store.load()
        return dict(state.get("stages", {}).get(stage, {}).get("outputs") or {})

    def data_dir(self) -> Path:
        path = Path(self.cfg.data.download_dir).expanduser()
        return path if path.is_absolute() else self.workspace / path
