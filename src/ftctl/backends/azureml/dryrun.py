"""`ftctl --backend azureml run --dry-run`: every stage's dry run, in order, without the runner.

For the CLI (`ftctl run --dry-run [--from S] [--to S]`) to call as it is: it takes no workspace lock and
creates nothing (no workspace folder, no state file), reads the state only if there is one, and needs no
login and no network when no stage has run yet (each stage then plans from the configuration,
ftctl.backends.azureml.plan). Stages that have run before make the later ones show the SDK entities they
would send (reading, never writing, Azure ML).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ftctl.errors import StateError

if TYPE_CHECKING:
    from ftctl.context import Context


def dry_run_all(ctx: Context, start: str | None = None, stop: str | None = None) -> list[dict[str, Any]]:
    """Each stage's dry run from `start` to `stop` (default: all nine); what each would do, unrecorded.

    Returns one {"stage", "status": "dry run", "outputs"} per stage, as `ftctl run` returns its results.
    """
    from ftctl.backends.azureml.backend import STAGES
    from ftctl.stages.contract import RunOptions, StageCall

    order = list(STAGES)  # the pipeline's order
    for name in (start, stop):
        if name is not None and name not in STAGES:
            raise StateError(f"unknown stage {name!r}; stages are: {', '.join(order)}")
    first = order.index(start) if start else 0
    last = order.index(stop) if stop else len(order) - 1
    if first > last:
        raise StateError(f"--from {start} comes after --to {stop}")
    state = ctx.state_store.load()  # a fresh, unsaved state when the workspace has none
    backend = state.get("backend")
    if backend and backend != "azureml":
        raise StateError(
            f"workspace {ctx.workspace} holds a {backend} run, but the backend is now azureml",
            hint=f"pass --backend {backend}, use another --workspace, or `ftctl reset --all`",
        )
    options = RunOptions(dry_run=True)
    results = []
    for name in order[first : last + 1]:
        ctx.ui.info(f"> {name} (dry run)")
        outputs = STAGES[name].run(ctx, StageCall(name, state, options))
        results.append({"stage": name, "status": "dry run", "outputs": outputs})
    ctx.ui.info("dry run: nothing was sent that creates anything, and nothing was recorded")
    return results
