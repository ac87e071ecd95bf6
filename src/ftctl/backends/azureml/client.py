"""Azure ML handles: the credential, the workspace MLClient and the registry MLClient.

The Azure backend (ftctl.backends.azureml.backend) builds one `AzureHandles` per process; every azureml
stage goes through it (`azure(ctx)`). This is the only module that constructs credentials and MLClients.

- Credential: DefaultAzureCredential, checked with a token for the management scope. When it finds
  nothing and a terminal is attached (and `azureml.interactive_login` is on), InteractiveBrowserCredential
  is tried; otherwise a UsageError lists the ways to log in.
- Workspace: `azureml.workspace_config` (`--workspace-config PATH`), else a workspace config.json found by
  searching up from the working directory (`MLClient.from_config`), else subscription / resource group /
  workspace from the config (or AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP, AZUREML_WORKSPACE_NAME).
- Registry: `MLClient(credential, registry_name=azureml.registry_name)`, built on first use (its
  constructor calls the registry discovery service).

A caller may inject a `transport` (an azure-core transport: the tests' fake Azure ML service) and a
`credential` (a TokenCredential): every MLClient, and the endpoint's scoring client, is then built with
them, so the SDK's own code runs and only the HTTP layer is fake.

Errors from the SDK become ftctl errors in `calling(...)`: one line and a hint, never a traceback.
Tokens and keys are never recorded or printed.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ftctl.errors import ConfigError, FtctlError, StageFailed, UsageError

if TYPE_CHECKING:
    from azure.ai.ml import MLClient
    from azure.core.credentials import TokenCredential

    from ftctl.context import Context

ARM_SCOPE = "https://management.azure.com/.default"
LOGIN_HINT = (
    "log in first: `az login` (Azure CLI; `azd auth login` works too), or set AZURE_TENANT_ID, "
    "AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (a service principal), or run on a machine or pipeline with a "
    "managed or workload identity"
)
WORKSPACE_HINT = (
    "download the workspace's config.json (Azure portal > the workspace > Download config.json) into this "
    "folder or pass --workspace-config PATH; or set azureml.subscription_id, azureml.resource_group and "
    "azureml.workspace_name (or AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP, AZUREML_WORKSPACE_NAME)"
)
TRANSIENT = {408, 429, 500, 502, 503, 504}


def _first_line(text: object, limit: int = 300) -> str:
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


_SILENCE_SDK_LOGS = False  # set by AzureHandles (not with --debug); `calling` re-applies it


def quiet_sdk_logging(debug: bool) -> None:
    """azure-ai-ml attaches its own INFO handlers (progress dots, "Check: endpoint ... exists",
    experimental-class notices) and logs every failed call ("ActivityCompleted ... HowEnded=Failure");
    azure-identity logs each credential it tried. ftctl reports progress and errors itself, so these
    loggers are silenced unless --debug."""
    if debug:
        return
    names = ["azure", "azure.ai.ml", "azure.identity", "azure.core"]
    names += [name for name in logging.root.manager.loggerDict if name.startswith("azure.")]
    for name in names:
        logger = logging.getLogger(name)
        if logger.level < logging.CRITICAL:
            logger.setLevel(logging.CRITICAL)


def terminal_attached() -> bool:
    try:
        return sys.stdin.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def get_credential(ctx: Context) -> tuple[TokenCredential, str]:
    """A credential that has just produced a management token, and its kind (never the token)."""
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential(exclude_interactive_browser_credential=True)
    try:
        credential.get_token(ARM_SCOPE)
        return credential, "DefaultAzureCredential"
    except ClientAuthenticationError as exc:
        reason = _first_line(exc)
    interactive = ctx.cfg.azureml.interactive_login
    if interactive and terminal_attached():
        from azure.identity import InteractiveBrowserCredential

        ctx.ui.info("  DefaultAzureCredential found no login; opening a browser to sign in")
        browser = InteractiveBrowserCredential()
        try:
            browser.get_token(ARM_SCOPE)
            return browser, "InteractiveBrowserCredential"
        except ClientAuthenticationError as exc:
            raise UsageError(f"the browser sign-in failed: {_first_line(exc)}", hint=LOGIN_HINT) from None
    why = (
        "no terminal is attached for a browser sign-in" if interactive else "azureml.interactive_login is off"
    )
    raise UsageError(
        f"no Azure credential is available ({why}); DefaultAzureCredential: {reason}", hint=LOGIN_HINT
    )


# --- which workspace ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkspaceRef:
    subscription_id: str
    resource_group: str
    workspace_name: str
    source: str  # "config.json at <path>" / "ftctl config" / "environment"
    config_file: Path | None = None


def _read_workspace_config(path: Path) -> dict[str, str] | None:
    """The three ids of an Azure ML workspace config.json, or None if the file is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    scope = data.get("Scope") or data.get("scope")
    if isinstance(scope, str) and "/workspaces/" in scope:
        parts = scope.strip("/").split("/")
        try:
            return {
                "subscription_id": parts[parts.index("subscriptions") + 1],
                "resource_group": parts[parts.index("resourceGroups") + 1],
                "workspace_name": parts[parts.index("workspaces") + 1],
            }
        except (ValueError, IndexError):
            return None
    keys = ("subscription_id", "resource_group", "workspace_name")
    if all(isinstance(data.get(k), str) and data[k] for k in keys):
        return {k: data[k] for k in keys}
    return None


def find_workspace_config(start: Path) -> Path | None:
    """The nearest workspace config.json from `start` upwards (config.json or .azureml/config.json),
    skipping config.json files that are something else (a Hugging Face model's, say)."""
    for folder in [start, *start.parents]:
        for candidate in (folder / "config.json", folder / ".azureml" / "config.json"):
            if candidate.is_file() and _read_workspace_config(candidate) is not None:
                return candidate
    return None


def _ref(ids: dict[str, str], source: str, config_file: Path | None = None) -> WorkspaceRef:
    return WorkspaceRef(
        ids.get("subscription_id", ""),
        ids.get("resource_group", ""),
        ids.get("workspace_name", ""),
        source=source,
        config_file=config_file,
    )


def resolve_workspace(
    ctx: Context, cwd: Path | None = None, environ: dict[str, str] | None = None
) -> WorkspaceRef:
    cfg = ctx.cfg.azureml
    environ = dict(os.environ) if environ is None else environ
    if cfg.workspace_config:
        path = Path(cfg.workspace_config).expanduser()
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"azureml.workspace_config: {path} does not exist", hint=WORKSPACE_HINT)
        ids = _read_workspace_config(path)
        if ids is None:
            raise ConfigError(
                f"azureml.workspace_config: {path} is not a workspace config "
                "(it needs subscription_id, resource_group and workspace_name)",
                hint=WORKSPACE_HINT,
            )
        return _ref(ids, f"config file {path}", path.resolve())
    found = find_workspace_config((cwd or Path.cwd()).resolve())
    if found is not None:
        return _ref(_read_workspace_config(found) or {}, f"config file {found}", found)
    values = {
        "subscription_id": (cfg.subscription_id, "AZURE_SUBSCRIPTION_ID"),
        "resource_group": (cfg.resource_group, "AZURE_RESOURCE_GROUP"),
        "workspace_name": (cfg.workspace_name, "AZUREML_WORKSPACE_NAME"),
    }
    ids, origins, missing = {}, set(), []
    for key, (value, env_name) in values.items():
        if value:
            ids[key] = value
            origins.add("ftctl config")
        elif environ.get(env_name):
            ids[key] = environ[env_name]
            origins.add("environment")
        else:
            missing.append(f"azureml.{key} ({env_name})")
    if missing:
        raise ConfigError(
            "no Azure ML workspace configured: no config.json found from the working directory up, and "
            f"missing {', '.join(missing)}",
            hint=WORKSPACE_HINT,
        )
    return _ref(ids, " + ".join(sorted(origins)))


# --- raw response bodies --------------------------------------------------------------------------------


class RawBodies:
    """Keeps the JSON bodies the registry answered (an azure-core raw_response_hook).

    azure-ai-ml drops fields ftctl needs from registry models (`isArchived`, `systemMetadata`) and model
    containers (their tags); the hook reads them from the very responses the SDK received.
    """

    def __init__(self) -> None:
        self.responses: list[tuple[str, Any]] = []  # (url path, decoded body), in order

    def __call__(self, pipeline_response: Any) -> None:
        try:
            http = pipeline_response.http_response
            if http.status_code != 200 or "json" not in (http.headers.get("Content-Type") or ""):
                return
            body = json.loads(http.text())
            path = urlsplit(pipeline_response.http_request.url).path
        except Exception:  # the hook must never break a request
            return
        self.responses.append((path, body))

    def latest(self, path_suffix: str) -> Any:
        for path, body in reversed(self.responses):
            if path.endswith(path_suffix):
                return body
        return None

    def all(self, path_suffix: str) -> list[Any]:
        return [body for path, body in self.responses if path.endswith(path_suffix)]


# --- the handles ----------------------------------------------------------------------------------------


class AzureHandles:
    """The credential and the two MLClients, built once per process and on first use."""

    def __init__(
        self, ctx: Context, transport: Any = None, credential: TokenCredential | None = None
    ) -> None:
        """transport, credential: injected (tests); None for azure-core's own and DefaultAzureCredential."""
        global _SILENCE_SDK_LOGS
        self.ctx = ctx
        self.transport = transport
        self.injected_credential = credential
        self.raw = RawBodies()
        _SILENCE_SDK_LOGS = not ctx.debug

    def _kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"show_progress": False}
        if self.transport is not None:
            kwargs["transport"] = self.transport
        return kwargs

    @cached_property
    def _credential(self) -> tuple[TokenCredential, str]:
        if self.injected_credential is not None:
            return self.injected_credential, type(self.injected_credential).__name__
        quiet_sdk_logging(self.ctx.debug)  # DefaultAzureCredential logs a warning per failed credential
        with calling("getting an Azure token"):
            return get_credential(self.ctx)

    @property
    def credential(self) -> TokenCredential:
        return self._credential[0]

    @property
    def credential_kind(self) -> str:
        return self._credential[1]

    @cached_property
    def workspace_ref(self) -> WorkspaceRef:
        return resolve_workspace(self.ctx)

    @cached_property
    def workspace(self) -> MLClient:
        from azure.ai.ml import MLClient

        ref = self.workspace_ref
        credential = self.credential
        with calling("connecting to the Azure ML workspace"):
            if ref.config_file is not None:
                client = MLClient.from_config(credential, path=str(ref.config_file), **self._kwargs())
            else:
                client = MLClient(
                    credential, ref.subscription_id, ref.resource_group, ref.workspace_name, **self._kwargs()
                )
        quiet_sdk_logging(self.ctx.debug)
        return client

    @cached_property
    def registry(self) -> MLClient:
        from azure.ai.ml import MLClient

        name = self.ctx.cfg.azureml.registry_name
        credential = self.credential
        with calling(
            f"connecting to the Azure ML registry {name!r}", not_found=f"no registry named {name!r}"
        ):
            client = MLClient(credential, registry_name=name, raw_response_hook=self.raw, **self._kwargs())
        quiet_sdk_logging(self.ctx.debug)
        return client


# --- errors ---------------------------------------------------------------------------------------------


def _http_error_text(exc: Any) -> str:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    message = getattr(error, "message", None) or getattr(exc, "message", None) or str(exc)
    status = getattr(exc, "status_code", None)
    parts = [f"HTTP {status}" if status else "", str(code) if code else ""]
    prefix = " ".join(p for p in parts if p)
    return f"{prefix}: {_first_line(message)}" if prefix else _first_line(message)


@contextlib.contextmanager
def calling(what: str, not_found: str | None = None) -> Iterator[None]:
    """Turn what azure-core / azure-ai-ml raise into ftctl errors naming `what` was being done.

    Transient answers (429, 503...) have already been retried by azure-core's retry policy when they
    get here; a persistent failure ends the stage with the error and the command to re-run.
    """
    if _SILENCE_SDK_LOGS:
        quiet_sdk_logging(debug=False)  # loggers of modules the SDK imported since
    out = io.StringIO()
    try:
        # azure-ai-ml's pollers print progress dots to stdout, which is ftctl's (and --json's) channel.
        with contextlib.redirect_stdout(out):
            yield
    except FtctlError:
        raise
    except Exception as exc:
        raise translate(exc, what, not_found) from exc
    finally:
        text = out.getvalue().replace(".", "").strip()
        if text:
            print(out.getvalue().strip(), file=sys.stderr)


def translate(exc: BaseException, what: str, not_found: str | None = None) -> FtctlError:
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if isinstance(exc, ClientAuthenticationError):
        return UsageError(
            f"{what}: Azure did not accept the credential ({_first_line(exc)})", hint=LOGIN_HINT
        )
    if isinstance(exc, ResourceNotFoundError):
        detail = not_found or _http_error_text(exc)
        return StageFailed(f"{what}: {detail}")
    if isinstance(exc, HttpResponseError):
        status = getattr(exc, "status_code", None)
        hint = None
        if status in TRANSIENT:
            hint = "Azure kept answering this after ftctl's retries; wait a little"
        elif status == 403:
            hint = "your identity lacks a role on the workspace (e.g. AzureML Data Scientist)"
        return StageFailed(f"{what} failed: {_http_error_text(exc)}", hint=hint)
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return StageFailed(
            f"{what}: cannot reach Azure ({_first_line(exc)})",
            hint="check the network and any proxy settings",
        )
    from azure.ai.ml.exceptions import ErrorCategory, MlException

    if isinstance(exc, MlException):
        message = _first_line(getattr(exc, "message", None) or exc)
        if getattr(exc, "error_category", None) == ErrorCategory.USER_ERROR:
            return UsageError(f"{what}: {message}")
        return StageFailed(f"{what} failed: {message}")
    return StageFailed(
        f"{what} failed: unexpected {type(exc).__name__}: {_first_line(exc)}",
        hint="add --debug for the traceback",
    )


# --- waiting --------------------------------------------------------------------------------------------


def elapsed(start: float) -> str:
    seconds = int(time.monotonic() - start)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def wait_for(ctx: Context, begin: Callable[[], Any], what: str) -> Any:
    """Start a long-running operation (`begin()` returns its poller) and wait for it, saying what it
    waits for every poll_interval_s."""
    start = time.monotonic()
    interval = max(ctx.cfg.poll_interval_s, 0.01)
    ctx.ui.info(f"  {what}...")
    with calling(what):
        poller = begin()
        while True:
            poller.wait(timeout=interval)
            if poller.done():
                result = poller.result()
                break
            ctx.ui.info(f"  ... {what}: {poller.status()} ({elapsed(start)})")
    ctx.ui.info(f"  {what}: done in {elapsed(start)}")
    return result


def status_text(value: Any) -> str:
    """'Succeeded' from an SDK enum, a string or None."""
    if value is None:
        return "unknown"
    return str(getattr(value, "value", value))


# --- dry run --------------------------------------------------------------------------------------------


def entity_yaml(entity: Any) -> str:
    """An SDK entity as the YAML azure-ai-ml would write for it (`entity.dump()`), secrets excluded."""
    import yaml

    buffer = io.StringIO()
    # The SDK's own YAML for the entity (endpoints return it as a dict instead of writing it).
    returned = entity.dump(buffer)
    data = returned if isinstance(returned, dict) else yaml.safe_load(buffer.getvalue())
    for node in (data.get("jobs") or {}).values() if isinstance(data, dict) else []:
        # A registry component is sent by reference (componentId), not inlined.
        if isinstance(node, dict) and isinstance(node.get("component"), dict) and node["component"].get("id"):
            node["component"] = node["component"]["id"]
    return yaml.safe_dump(_plain(data), sort_keys=False, allow_unicode=True, width=100).rstrip()


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str) and value.startswith("azureml:/") and Path(value[len("azureml:") :]).is_file():
        # A local file the SDK uploads on submit (it dumps it as azureml:<path>): show the local path.
        return value[len("azureml:") :]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(getattr(value, "value", value))


def show_dry_run(ctx: Context, title: str, entity: Any) -> str:
    text = entity_yaml(entity)
    ctx.ui.result(f"# {title}\n{text}")
    return text
