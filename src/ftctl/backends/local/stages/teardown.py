"""teardown: delete the endpoint. Local: stop the server process and check its port is closed."""

from __future__ import annotations

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
    from ftctl.backends.local.serving.probe import port_is_open
    from ftctl.backends.local.stages.deploy import forget, server_process

    endpoint = call.upstream.deploy
    recorded = endpoint.model_dump()  # with what deploy recorded of its server process
    name = endpoint.endpoint_name
    process = server_process(recorded)  # None when the recorded pid is not that server any more
    host, port = endpoint.host or "127.0.0.1", endpoint.port
    stopped = procs.stop(process)
    pid = endpoint.pid
    still_open = bool(port and port_is_open(host, port))
    if still_open and stopped:
        raise StageFailed(f"port {host}:{port} is still open after stopping endpoint {name} (pid {pid})")
    forget(ctx, recorded)
    if still_open:  # not by the endpoint: its server has ended; another process has the port now
        ctx.ui.warn(
            f"endpoint {name} was not running (pid {pid} is not its server any more); port {port} is "
            "in use by another process, which ftctl leaves alone"
        )
    else:
        ctx.ui.info(f"  endpoint {name} {'stopped' if stopped else 'was not running'}; port {port} closed")
    return {"endpoint_name": name, "stopped": stopped, "port": port, "port_closed": not still_open}


def summary(outputs: dict[str, Any]) -> str:
    return f"{outputs.get('endpoint_name')} {'stopped' if outputs.get('stopped') else 'already down'}"


__all__ = ["alive", "inputs", "output_files", "retire", "run", "summary"]
