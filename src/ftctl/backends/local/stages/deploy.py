"""deploy: serve the registered model behind an endpoint speaking Azure ML's scoring contract.

Local: a FastAPI + uvicorn process on 127.0.0.1. ftctl binds the listening socket itself (a free port
unless deploy.port is set) and hands it to the server, so the port is known before the server starts
and nothing else can take it. The key lives in a 0600 file under secrets/, never in the state file.

The server is recorded by its identity (pid, start time, command line) in <workspace>/live and in the
state file before it may serve; its key file is written only after that, so a deploy killed before the
server is recorded leaves no key behind (and the next deploy removes keys no live endpoint claims).
Only a process that still carries the recorded identity is ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from ftctl.backends.local.backend import local
from ftctl.errors import StageFailed
from ftctl.stages.contract import no_inputs as inputs
from ftctl.stages.contract import no_output_files as output_files
from ftctl.stages.shared import check_lists
from ftctl.state import make_dirs
from ftctl.ttl import expires_at

SERVER_MODULE = "ftctl.backends.local.server"

if TYPE_CHECKING:
    from ftctl.backends.local.workspace import LocalWorkspace
    from ftctl.context import Context
    from ftctl.stages.contract import Outputs, StageCall


def registered_model_dir(ws: LocalWorkspace, name: str, version: str, dest: Path) -> Path:
    """The local folder of a registered model version (downloaded only if the store is not local)."""
    folder = ws.registered_folder(name, version)
    if folder is not None:
        return folder
    mlflow = ws.mlflow
    uri = mlflow.MlflowClient().get_model_version_download_uri(name, version)
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") and Path(unquote(parsed.path)).is_dir():
        return Path(unquote(parsed.path))
    return Path(
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dest))
    )


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StageFailed(
            f"cannot listen on {host}:{port} ({exc.strerror})",
            hint="stop what uses the port, or set another deploy.port (0 picks a free one)",
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def server_process(outputs: dict[str, Any]) -> dict[str, Any] | None:
    """The recorded server's identity (None if there is none). A record from before identities were
    recorded (a bare pid) is trusted only while that pid runs this server with this key file."""
    from ftctl.backends.local import procs

    process = outputs.get("process")
    if isinstance(process, dict) and procs.is_identity(process):
        return dict(process)
    return procs.legacy_identity(outputs.get("pid"), SERVER_MODULE, str(outputs.get("key_file") or "\0"))


def alive(ctx: Context, outputs: dict[str, Any]) -> bool:
    from ftctl.backends.local import procs
    from ftctl.backends.local.serving.probe import port_is_open

    port = outputs.get("port")
    return bool(
        port and procs.alive(server_process(outputs)) and port_is_open(outputs.get("host", "127.0.0.1"), port)
    )


def forget(ctx: Context, outputs: dict[str, Any]) -> None:
    """Remove an endpoint's key file and live record (once its server is stopped or gone)."""
    from ftctl.backends.local import live

    key = outputs.get("key_file")
    if key and Path(key).suffix == ".key":
        # By its name in this workspace's secrets/: a record made before the workspace moved still
        # names the key at the old path (nothing is deleted anywhere else).
        with contextlib.suppress(FileNotFoundError):
            (local(ctx).secrets_dir / Path(key).name).unlink()
    if outputs.get("endpoint_name"):
        live.remove(local(ctx).root, live.ENDPOINT, str(outputs["endpoint_name"]))


def retire(ctx: Context, outputs: dict[str, Any]) -> None:
    """Before deploy runs again (--force, or stale): stop the server the previous attempt started,
    which would otherwise keep running once its record is replaced. Its key file stays: the next
    server takes over the endpoint's name, port and key (see `_kept_address`); whatever ends every
    endpoint (teardown, `reset --all`) or the next deploy's clean-up removes a key nobody took."""
    from ftctl.backends.local import live, procs

    process = server_process(outputs)
    if procs.alive(process):
        name = outputs.get("endpoint_name")
        ctx.ui.info(f"  stopping the previous server of endpoint {name} ({procs.describe(process)})")
        procs.stop(process)
    if outputs.get("endpoint_name"):
        live.remove(local(ctx).root, live.ENDPOINT, str(outputs["endpoint_name"]))


@dataclass(frozen=True)
class _Address:
    """What a re-deploy keeps of the endpoint it replaces: its name, port and key."""

    name: str
    port: int
    key: str


def _kept_address(ctx: Context, previous: dict[str, Any]) -> _Address | None:
    """The previous endpoint's name, port and key, when it was not torn down (its key file is still
    there) and the settings that make the address (prefix, host) have not changed; else None."""
    cfg, ws = ctx.cfg.deploy, local(ctx)
    name, port = previous.get("endpoint_name"), previous.get("port")
    if not isinstance(name, str) or not name.startswith(cfg.endpoint_name_prefix) or "/" in name:
        return None
    if previous.get("host") != cfg.host or not isinstance(port, int):
        return None
    key_file = ws.secrets_dir / f"{name}.key"
    try:
        key = "" if key_file.is_symlink() else key_file.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return _Address(name, port, key) if key else None


def _listen_kept(ctx: Context, kept: _Address | None) -> socket.socket:
    """The listening socket: deploy.port when set, else the kept endpoint's port while it is free, else
    a free one."""
    cfg = ctx.cfg.deploy
    if cfg.port or kept is None:
        return _listen(cfg.host, cfg.port)
    try:
        return _listen(cfg.host, kept.port)
    except StageFailed:
        ctx.ui.warn(f"port {kept.port} of endpoint {kept.name} is taken by another process; using a free one")
        return _listen(cfg.host, 0)


@dataclass
class _Server:
    """What deploy knows of the endpoint it is about to start."""

    name: str
    model_dir: Path
    key_file: Path
    log_path: Path
    sock: socket.socket
    command: list[str]
    host: str
    port: int

    @property
    def url(self) -> str:
        host, port = self.host, self.port
        return f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"


def _new_endpoint_dir(root: Path, endpoints: Path, prefix: str) -> tuple[str, Path]:
    """A new endpoint's name (the prefix and the time) and its folder, created new: a name whose folder
    exists already (planted, or two deploys in one second) is passed over, never reused."""
    stamp = int(time.time())
    for offset in range(100):
        name = f"{prefix}{stamp + offset}"
        try:
            return name, make_dirs(endpoints / name, root, new=True)
        except FileExistsError:
            continue
    raise StageFailed(f"no free endpoint name in {endpoints} (100 tried from {prefix}{stamp})")


def _prepare_server(ctx: Context, call: StageCall, kept: _Address | None) -> _Server:
    """The endpoint's folder, model, listening socket and command line (nothing started yet)."""
    from ftctl.backends.local import live, procs

    ws, cfg = local(ctx), ctx.cfg.deploy
    registered, compute = call.upstream.register, call.upstream.check_compute
    # Endpoints that ended on their own leave a record and a key: gone now, as are keys nobody claims
    # (a deploy killed between writing one and recording its server; the kept key is held in memory).
    live.forget_ended(ws.root)
    live.remove_orphan_keys(ws.root)
    if kept:  # the endpoint keeps its name: its folder stays, still never through a link
        name, endpoint_dir = kept.name, make_dirs(ws.endpoints_dir / kept.name, ws.root)
    else:
        name, endpoint_dir = _new_endpoint_dir(ws.root, ws.endpoints_dir, cfg.endpoint_name_prefix)
    model_name, version = registered.need("model_name"), registered.need("version")
    model_dir = registered_model_dir(ws, model_name, version, endpoint_dir / f"model-{version}")
    _check_template(ctx, call, model_dir)
    key_file = ws.secrets_dir / f"{name}.key"  # written once the server is recorded
    sock = _listen_kept(ctx, kept)
    # Every argument as --option=value: a value that starts with "-" (a model name, a path) is never
    # read as an option.
    command = procs.python_command(
        SERVER_MODULE,
        f"--model-dir={model_dir}",
        f"--key-file={key_file}",
        f"--fd={sock.fileno()}",
        f"--request-timeout-ms={cfg.request_timeout_ms}",
        f"--device={compute.device or 'cpu'}",
        f"--model-name={model_name}:{version}",
    )
    expires = expires_at(cfg.ttl)
    if expires:  # the cost guard: the server stops itself then
        command.append(f"--expires-at={datetime.fromisoformat(expires).timestamp()}")
    port = int(sock.getsockname()[1])
    return _Server(name, model_dir, key_file, endpoint_dir / "server.log", sock, command, cfg.host, port)


def _outputs(ctx: Context, call: StageCall, server: _Server, process: dict[str, Any]) -> Outputs:
    cfg, registered = ctx.cfg.deploy, call.upstream.register
    return {
        "endpoint_name": server.name,
        "deployment_name": cfg.deployment_name,
        "url": server.url,
        "scoring_uri": f"{server.url}/score",
        "host": server.host,
        "port": server.port,
        "pid": process["pid"],
        "process": process,
        "model_uri": registered.need("model_uri"),
        "model_version": registered.need("version"),
        "model_dir": str(server.model_dir),
        "key_file": str(server.key_file),
        "log": str(server.log_path),
        "instance_type": call.upstream.check_compute.size or "cpu",
        "expires_at": expires_at(cfg.ttl),
    }


def _start_recorded(ctx: Context, call: StageCall, server: _Server, key: str | None) -> Outputs:
    """Start the server and record it (state, live record, then its key) before it may serve.

    The server waits on a pipe until the state file records it (and only then reads its key): if this
    ftctl dies before (kill -9 between spawning and recording), the pipe closes unsigned and the server
    exits, so no endpoint ever runs unrecorded."""
    from ftctl.backends.local import live, procs
    from ftctl.backends.local.server import HANDOFF_RECORDED

    ws, url = local(ctx), server.url
    handoff_read, handoff_write = os.pipe()
    try:
        try:
            pid = procs.spawn(
                [*server.command, f"--handoff-fd={handoff_read}"],
                server.log_path,
                pass_fds=[server.sock.fileno(), handoff_read],
                env={**os.environ},
            )
            process = procs.started_identity(pid) or {"pid": pid}  # gone already: it never serves
            outputs = _outputs(ctx, call, server, process)
        finally:
            server.sock.close()
            os.close(handoff_read)
        live.write(ws.root, live.ENDPOINT, server.name, {"server": process}, url=url, host=outputs["host"],
                   port=outputs["port"], key_file=str(server.key_file), log=str(server.log_path))  # fmt: skip
        call.checkpoint(outputs)
        ws.write_secret(server.key_file.name, key or new_key())
        with contextlib.suppress(OSError):  # a server that already exited reads nothing
            os.write(handoff_write, HANDOFF_RECORDED)
    finally:
        os.close(handoff_write)
    return outputs


def run(ctx: Context, call: StageCall) -> Outputs:
    from ftctl.backends.local import procs
    from ftctl.backends.local.serving.probe import wait_until_ready

    cfg = ctx.cfg.deploy
    recorded = call.recorded
    if recorded.get("pid") and alive(ctx, recorded):
        ctx.ui.info(f"  re-attaching to endpoint {recorded['endpoint_name']} at {recorded['url']}")
        wait_until_ready(recorded["url"], cfg.ready_timeout_s)
        return recorded
    allow = call.upstream.pick_model.inference_compute_allow_list
    if allow:
        size = call.upstream.check_compute.size or "cpu"
        check_lists(size, allow, [], "the model's inference_compute_allow_list")
    kept = _kept_address(ctx, call.previous)
    server = _prepare_server(ctx, call, kept)
    outputs = _start_recorded(ctx, call, server, kept.key if kept else None)
    url, pid, log_path = outputs["url"], outputs["pid"], server.log_path
    if kept:
        same = "same URL and key" if kept.port == server.port else "same key, new port"
        version = outputs["model_version"]
        ctx.ui.info(f"  endpoint {server.name}: a new deployment, of version {version} ({same})")
    ctx.ui.info(f"  endpoint {server.name} starting (pid {pid}) at {url}; log: {log_path}")
    try:
        with ctx.ui.spinner("waiting for the endpoint to load the model"):
            wait_until_ready(url, _seconds_to_ready(ctx, outputs), proc=procs.handle(pid))
    except StageFailed:
        procs.stop(outputs["process"])
        forget(ctx, outputs)
        if _seconds_left(outputs) == 0.0:  # the server stops itself at its expiry, loaded or not
            raise StageFailed(
                f"endpoint {server.name} reached its time to live (deploy.ttl {cfg.ttl}) before it had "
                "loaded the model; it is stopped and nothing of it runs",
                hint="deploy again with a longer time to live, e.g. `ftctl deploy --ttl 1h`",
            ) from None
        ctx.ui.info(procs.tail(log_path, 20))
        raise
    ctx.ui.info(f"  endpoint ready: POST {url}/score (key in {server.key_file})")
    return outputs


def key_gone(ctx: Context, outputs: dict[str, Any]) -> str | None:
    """Why a running endpoint cannot be called: its key file is gone (None when it is there, or when
    the endpoint does not run: teardown removes the key of what it stops)."""
    key_file = outputs.get("key_file")
    if not key_file or Path(key_file).is_file() or not alive(ctx, outputs):
        return None
    return (
        f"its key file {Path(key_file).name} is gone: the endpoint runs, but ftctl cannot call it "
        "(`ftctl credentials --rotate` gives it a new key)"
    )


def _seconds_left(outputs: dict[str, Any]) -> float | None:
    """Seconds until the endpoint's expiry (0.0 once past it; None without a ttl)."""
    if not outputs.get("expires_at"):
        return None
    left = datetime.fromisoformat(outputs["expires_at"]) - datetime.now(timezone.utc)
    return max(left.total_seconds(), 0.0)


def _seconds_to_ready(ctx: Context, outputs: dict[str, Any]) -> float:
    """How long deploy waits for the model to load: deploy.ready_timeout_s, or until the endpoint's
    expiry if that comes first (its server stops itself then)."""
    left = _seconds_left(outputs)
    timeout = float(ctx.cfg.deploy.ready_timeout_s)
    return timeout if left is None else min(timeout, left)


def rotate_key(ctx: Context, state: dict[str, Any]) -> None:
    """`ftctl credentials --rotate`: a new key in the endpoint's key file, and its server (identity
    checked) told to read it; returns once the server refuses the old key and accepts the new one."""
    from ftctl.backends.local import procs
    from ftctl.backends.local.hooks import endpoint
    from ftctl.backends.local.serving.probe import key_accepted

    # UsageError / StageFailed when there is none or it is down; a key file that is gone is replaced
    current = endpoint(ctx, state, need_key=False)
    outputs = state["stages"]["deploy"]["outputs"]
    process = server_process(outputs)
    key = new_key()
    local(ctx).write_secret(Path(outputs["key_file"]).name, key)
    if not procs.send(process, signal.SIGHUP, group=False):
        raise StageFailed(f"the server of endpoint {current.name} ended while its key was rotated")
    deadline = time.monotonic() + 10.0
    old = current.key
    while not (key_accepted(current.url, key) and not (old and key_accepted(current.url, old))):
        if time.monotonic() > deadline:
            raise StageFailed(
                f"endpoint {current.name} did not take its new key within 10 s",
                hint=f"its log: {outputs.get('log')}; `ftctl deploy --force` restarts it with the new key",
            )
        time.sleep(0.05)
    ctx.ui.info(f"endpoint {current.name}: new key in place; the old one is refused from now on")


def new_key() -> str:
    """A fresh endpoint key."""
    return secrets.token_urlsafe(32)


def _check_template(ctx: Context, call: StageCall, model_dir: Path) -> None:
    """Refuse (UsageError) a model the endpoint would prompt differently from how it was trained."""
    from ftctl.backends.local.evaluate import check_template

    check_template(ctx, call.upstream, model_dir)


def summary(outputs: dict[str, Any]) -> str:
    return f"{outputs.get('endpoint_name')} {outputs.get('url')} ({outputs.get('instance_type') or 'cpu'})"


__all__ = ["alive", "inputs", "output_files", "retire", "run", "summary"]
