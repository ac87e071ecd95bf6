"""deploy: serve the registered model behind an endpoint speaking Azure ML's scoring contract.

Local: a FastAPI + uvicorn process on 127.0.0.1. ftctl binds the listening socket itself (a free port
unless deploy.port is set) and hands it to the server, so the port is known before the server starts
and nothing else can take it. The key lives in a 0600 file under secrets/, never in the state file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from ftctl.errors import StageFailed, UsageError
from ftctl.stages.contract import no_inputs as inputs
from ftctl.stages.contract import no_output_files as output_files
from ftctl.stages.shared import check_lists

if TYPE_CHECKING:
    from ftctl.backends.local.workspace import LocalWorkspace
    from ftctl.context import Context
    from ftctl.stages.contract import Outputs, StageCall


def registered_model_dir(ws: LocalWorkspace, name: str, version: str, dest: Path) -> Path:
    """The local folder of a registered model version (downloaded only if the store is not local)."""
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
        raise UsageError(f"deploy.port: cannot listen on {host}:{port} ({exc.strerror})") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def alive(ctx: Context, outputs: dict[str, Any]) -> bool:
    from ftctl.backends.local import procs
    from ftctl.backends.local.server import port_is_open

    pid, port = outputs.get("pid"), outputs.get("port")
    return bool(pid and port and procs.alive(pid) and port_is_open(outputs.get("host", "127.0.0.1"), port))


def retire(ctx: Context, outputs: dict[str, Any]) -> None:
    """Before deploy runs again (--force, or stale): stop the endpoint the previous attempt started,
    which would otherwise keep running once its record is replaced."""
    if not alive(ctx, outputs):
        return
    from ftctl.backends.local import procs

    ctx.ui.info(f"  stopping the previous endpoint {outputs.get('endpoint_name')} (pid {outputs['pid']})")
    procs.stop(outputs["pid"])
    if outputs.get("key_file"):
        with contextlib.suppress(OSError):
            Path(outputs["key_file"]).unlink()


def run(ctx: Context, call: StageCall) -> Outputs:
    ws = ctx.local
    from ftctl.backends.local import procs
    from ftctl.backends.local.server import HANDOFF_RECORDED, wait_until_ready

    cfg = ctx.cfg.deploy
    recorded = call.recorded
    if recorded.get("pid") and alive(ctx, recorded):
        ctx.ui.info(f"  re-attaching to endpoint {recorded['endpoint_name']} at {recorded['url']}")
        wait_until_ready(recorded["url"], cfg.ready_timeout_s)
        return recorded

    registered = call.outputs("register")
    compute = call.outputs("check-compute")
    allow = call.outputs("pick-model").get("inference_compute_allow_list")
    if allow:
        check_lists(compute.get("size", "cpu"), allow, [], "the model's inference_compute_allow_list")

    name = f"{cfg.endpoint_name_prefix}{int(time.time())}"
    endpoint_dir = ws.endpoints_dir / name
    endpoint_dir.mkdir(parents=True, exist_ok=True)
    model_dir = registered_model_dir(
        ws, registered["model_name"], registered["version"], endpoint_dir / "model"
    )
    _check_template(ctx, call, model_dir)
    key_file = ws.write_secret(f"{name}.key", secrets.token_urlsafe(32))
    sock = _listen(cfg.host, cfg.port)
    port = sock.getsockname()[1]
    host = cfg.host
    url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
    log_path = endpoint_dir / "server.log"
    command = procs.python_command(
        "ftctl.backends.local.server",
        "--model-dir", str(model_dir),
        "--key-file", str(key_file),
        "--fd", str(sock.fileno()),
        "--request-timeout-ms", str(cfg.request_timeout_ms),
        "--device", compute.get("device", "cpu"),
        "--model-name", f"{registered['model_name']}:{registered['version']}",
    )  # fmt: skip
    # The server waits on this pipe until the state file records it: if this ftctl dies before (kill -9
    # between spawning and recording), the pipe closes unsigned and the server exits, so no endpoint
    # ever runs unrecorded.
    handoff_read, handoff_write = os.pipe()
    try:
        try:
            pid = procs.spawn(
                [*command, "--handoff-fd", str(handoff_read)],
                log_path,
                pass_fds=[sock.fileno(), handoff_read],
                env={**os.environ},
            )
        finally:
            sock.close()
            os.close(handoff_read)
        outputs = {
            "endpoint_name": name,
            "deployment_name": cfg.deployment_name,
            "url": url,
            "scoring_uri": f"{url}/score",
            "host": host,
            "port": port,
            "pid": pid,
            "model_uri": registered["model_uri"],
            "model_version": registered["version"],
            "model_dir": str(model_dir),
            "key_file": str(key_file),
            "log": str(log_path),
        }
        call.checkpoint(outputs)
        with contextlib.suppress(OSError):  # a server that already exited reads nothing
            os.write(handoff_write, HANDOFF_RECORDED)
    finally:
        os.close(handoff_write)
    ctx.ui.info(f"  endpoint {name} starting (pid {pid}) at {url}; log: {log_path}")
    try:
        with ctx.ui.spinner("waiting for the endpoint to load the model"):
            wait_until_ready(url, cfg.ready_timeout_s, proc=procs.handle(pid))
    except StageFailed:
        procs.stop(pid)
        ctx.ui.info(procs.tail(log_path, 20))
        raise
    ctx.ui.info(f"  endpoint ready: POST {url}/score (key in {key_file})")
    return outputs


def _check_template(ctx: Context, call: StageCall, model_dir: Path) -> None:
    """Refuse (UsageError) a model the endpoint would prompt differently from how it was trained."""
    from ftctl.backends.local.evaluate import check_template

    check_template(ctx, call, model_dir)


def summary(outputs: dict[str, Any]) -> str:
    return f"{outputs.get('endpoint_name')} {outputs.get('url')}"


__all__ = ["alive", "inputs", "output_files", "retire", "run", "summary"]
