"""The client context: the one place that builds backend handles.

The CLI's root callback builds a Context; every stage receives it and asks it for the backend handle
(`ctx.local` for the embedded backend; Azure ML's MLClient and registry client for `azureml`). Handles
are built lazily, once per process, so `ftctl --help` and `ftctl status` import nothing heavy and
`ftctl run` pays each import only once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from ftctl.config import Config, LoadedConfig
from ftctl.errors import UsageError
from ftctl.state import StateStore
from ftctl.ui import UI

if TYPE_CHECKING:
    from ftctl.backends.azureml.client import AzureHandles
    from ftctl.backends.local.workspace import LocalWorkspace
    from ftctl.stages.contract import Backend


@dataclass(frozen=True)
class Context:
    """Built once per command from the global options; never changed afterwards (per-command options
    travel to the runner as a RunOptions, the stage state as a StageCall)."""

    workspace: Path
    config: LoadedConfig
    ui: UI = field(default_factory=UI)
    debug: bool = False
    command: str = "ftctl"

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
    def backend_impl(self) -> Backend:
        """The backend's stage table, capabilities and hooks (its modules import nothing heavy)."""
        if self.backend == "azureml":
            from ftctl.backends.azureml.backend import BACKEND as AZUREML

            return AZUREML
        from ftctl.backends.local.backend import BACKEND as LOCAL

        return LOCAL

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

    def data_dir(self) -> Path:
        path = Path(self.cfg.data.download_dir).expanduser()
        return path if path.is_absolute() else self.workspace / path
