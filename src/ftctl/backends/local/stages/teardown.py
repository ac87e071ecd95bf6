"""teardown: delete the endpoint. Local: stop the server process and check its port is closed."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl.errors import StageFailed
from ftctl.stages.contract import always_alive as alive
from ftctl.stages.contract import no_inputs as inputs
from ftctl.stages.contract import no_output_files as output_files
from ftctl.stages.contract import nothing_to_retire as retire

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import Outputs, StageCall


def run(ctx: Context, call: StageCall) -> Outputs:
    from ftctl.backends.local import procs
    from ftctl.backends.local.server import port_is_open

    endpoint = call.outputs("deploy")
    name, pid = endpoint.get("endpoint_name"), endpoint.get("pid")
    host, port = endpoint.get("host", "127.0.0.1"), endpoint.get("port")
    stopped = procs.stop(pid) if pid else False
    if port and port_is_open(host, port):
        raise StageFailed(f"port {host}:{port} is still open after stopping endpoint {name} (pid {pid})")
    if endpoint.get("key_file"):
        with contextlib.suppress(FileNotFoundError):
            Path(endpoint["key_file"]).unlink()
    ctx.ui.info(f"  endpoint {name} {'stopped' if stopped else 'was not running'}; port {port} closed")
    return {"endpoint_name": name, "stopped": stopped, "port": port, "port_closed": True}


def summary(outputs: dict[str, Any]) -> str:
    return f"{outputs.get('endpoint_name')} {'stopped' if outputs.get('stopped') else 'already down'}"


__all__ = ["alive", "inputs", "output_files", "retire", "run", "summary"]
