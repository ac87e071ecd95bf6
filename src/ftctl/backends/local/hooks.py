"""What the commands outside the pipeline ask of the local backend: the live endpoint (chat,
credentials, score --file), the fine-tuning job's metrics from the workspace's MLflow store, and its
log (`ftctl logs`: the job folder's log.txt)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl import state as st
from ftctl.backends.local.backend import local
from ftctl.errors import StageFailed, UsageError

if TYPE_CHECKING:
    from ftctl.chat import Endpoint
    from ftctl.context import Context
    from ftctl.metrics import RunMetrics
    from ftctl.stages.contract import LogWriter, State

# A local job is one process: its one step, for `ftctl logs --step`.
FINETUNE_STEP = "finetune"
LOG_POLL_S = 0.25  # how often `ftctl logs --follow` looks for new lines (as Job.follow does for events)


def endpoint(ctx: Context, state: State, *, need_key: bool = True) -> Endpoint:
    """The recorded endpoint, checked to run, with its key ("" when its key file is gone and not
    `need_key`: `credentials --rotate` gives it a new one)."""
    from ftctl.backends.local.stages import deploy
    from ftctl.chat import Endpoint

    rec = st.record(state, "deploy")
    outputs = rec.get("outputs") or {}
    if rec["status"] != st.SUCCEEDED or not outputs.get("scoring_uri"):
        raise UsageError(
            f"there is no endpoint: deploy is {rec['status']}",
            hint="run `ftctl deploy` (or `ftctl run --to deploy`)",
        )
    if not deploy.alive(ctx, outputs):  # a runtime failure (exit 1): the input is fine, the server is gone
        raise StageFailed(
            f"the endpoint {outputs.get('endpoint_name')} is not running "
            "(it was torn down or its process ended)",
            hint="run `ftctl deploy`",
        )
    key_file = Path(outputs["key_file"])
    try:
        key = key_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        if need_key:
            raise StageFailed(
                f"the key of endpoint {outputs.get('endpoint_name')} is gone ({key_file} was deleted); "
                "the endpoint still runs and refuses every request without it",
                hint="`ftctl credentials --rotate` gives it a new key (or `ftctl deploy --force` starts "
                "it again)",
            ) from None
        key = ""
    except OSError as exc:
        raise StageFailed(f"cannot read the endpoint key {key_file}: {exc.strerror}") from None
    model = None
    uri = str(outputs.get("model_uri") or "")
    if uri.startswith("models:/") and uri.count("/") >= 2:
        name, _, version = uri[len("models:/") :].rpartition("/")
        model = f"{name}:{version}"
    url = str(outputs.get("url") or outputs["scoring_uri"].rsplit("/", 1)[0])
    return Endpoint(
        name=str(outputs.get("endpoint_name")),
        deployment=str(outputs.get("deployment_name") or "demo"),
        url=url,
        scoring_uri=str(outputs["scoring_uri"]),
        key=key,
        key_file=str(key_file),
        model=model,
        openai_base_url=f"{url}/v1",
    )


def metrics(ctx: Context, state: State, run: str | None) -> RunMetrics:
    """The metrics of `run` (an MLflow run id or a job id), default the job `ftctl submit` recorded.

    Read from the workspace's SQLite store directly when the run id is known (milliseconds); MLflow,
    which takes seconds to import, only to find a running job's run or where the store is not readable
    so."""
    from ftctl.metrics import fetch, read_store

    ws = local(ctx)
    if not ws.mlflow_db.exists():
        raise UsageError(f"no MLflow store in {ws.root}", hint="run `ftctl auth` and `ftctl submit` first")
    job_id, known = _known_run(ctx, state, run)
    found = read_store(ws.mlflow_db, known) if known else None
    if found is not None:
        found.job_id, found.tracking_uri = job_id, ws.tracking_uri
        return found
    client = ws.mlflow.MlflowClient()
    run_id: str | None = run
    if not run or run.startswith("job-"):
        submit = st.record(state, "submit").get("outputs") or {}
        job_id = run or submit.get("job_id")
        run_id = None if run else submit.get("mlflow_run_id")
        if job_id and not run_id:  # a job still running has no run id recorded yet: find it by name
            run_id = _run_of_job(ctx, client, job_id)
        if not run_id:
            if run:
                raise UsageError(
                    f"job {run} has no MLflow run yet", hint="it may still be loading; try again"
                )
            raise UsageError(
                "no fine-tuning job to show: submit has not run (or its job has not started logging)",
                hint="run `ftctl submit` (or `ftctl run --to submit`), or pass --run RUN_ID",
            )
    assert run_id is not None
    metrics = fetch(client, run_id)
    metrics.job_id = job_id
    metrics.tracking_uri = ws.tracking_uri
    return metrics


def live(ctx: Context, state: State | None) -> list[dict[str, Any]]:
    from ftctl.backends.local import live

    unknown = {(r.kind, r.name) for r in live.unrecorded(ctx.workspace, state)} if state else None
    return [
        {
            **resource.to_dict(),
            "description": resource.describe(),
            "recorded": unknown is not None and (resource.kind, resource.name) not in unknown,
        }
        for resource in live.live_resources(ctx.workspace)
    ]


def stop_live(ctx: Context, kinds: tuple[str, ...], unrecorded_in: State | None = None) -> list[str]:
    from ftctl.backends.local import live

    targets = live.unrecorded(ctx.workspace, unrecorded_in) if unrecorded_in is not None else None
    if targets is not None:
        targets = [r for r in targets if r.kind in kinds]
    stopped = live.stop_live(ctx.workspace, targets, kinds=kinds, notify=ctx.ui.info)
    if targets is None and live.ENDPOINT in kinds:
        # Every endpoint is stopped: a key kept for the next deploy (see deploy.retire) goes too.
        live.remove_orphan_keys(ctx.workspace)
    return [resource.describe() for resource in stopped]


def logs(state: State, step: str | None, follow: bool, write: LogWriter) -> dict[str, Any]:
    """The log.txt of the job `ftctl submit` recorded (everything the job printed). With `follow`,
    new lines as they are written, until the job ends."""
    from ftctl.backends.local.jobs import QUEUED, RUNNING, Job

    if step is not None and step != FINETUNE_STEP:
        raise UsageError(
            f"--step {step}: the local job has no such step; its steps: {FINETUNE_STEP}",
            hint=f"`ftctl logs` (or --step {FINETUNE_STEP}) shows the job's log",
        )
    outputs = st.record(state, "submit").get("outputs") or {}
    if not outputs.get("job_dir"):
        raise UsageError(
            "no fine-tuning job to show: submit has not run",
            hint="run `ftctl submit` (or `ftctl run --to submit`)",
        )
    job = Job(Path(outputs["job_dir"]))
    if not job.dir.is_dir():
        raise UsageError(f"the job folder {job.dir} is gone", hint="run `ftctl submit --force` for a new job")
    offset, pending = 0, b""
    while True:
        # The status is read before the log: a job seen ended has written all it will write.
        status = str(job.status().get("state") or "unknown")
        chunk, offset = _read_from(job.log_path, offset)
        pending += chunk
        done = not follow or status not in (QUEUED, RUNNING)  # ended (or no status to wait on)
        *lines, pending = pending.split(b"\n")  # the last piece: a line not finished yet
        if done and pending:
            lines.append(pending)
        for line in lines:
            write(line.rstrip(b"\r").decode("utf-8", errors="replace"))
        if done:
            break
        time.sleep(LOG_POLL_S)
    return {
        "job": job.id,
        "job_status": status,
        "step": FINETUNE_STEP,
        "step_status": status,
        "steps": [{"name": FINETUNE_STEP, "status": status}],
        "source": str(job.log_path),
    }


def _read_from(path: Path, offset: int) -> tuple[bytes, int]:
    """The bytes of `path` after `offset`, and the new offset (nothing while the file does not exist)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
    except FileNotFoundError:
        return b"", offset
    return chunk, offset + len(chunk)


def _known_run(ctx: Context, state: State, run: str | None) -> tuple[str | None, str | None]:
    """(the job, its MLflow run id) as recorded, without MLflow: by submit, or by the job's result."""
    from ftctl.backends.local.jobs import Job

    if run and not run.startswith("job-"):
        return None, run
    submit = st.record(state, "submit").get("outputs") or {}
    job_id = run or submit.get("job_id")
    if not job_id:
        return None, None
    if job_id == submit.get("job_id") and submit.get("mlflow_run_id"):
        return job_id, str(submit["mlflow_run_id"])
    job = Job(local(ctx).jobs_dir / job_id)
    found = job.result().get("mlflow_run_id") if job.spec_path.exists() else None
    return job_id, str(found) if found else None


def _run_of_job(ctx: Context, client: Any, job_id: str) -> str | None:
    """The MLflow run of a local job: the one its result recorded, else the newest run with its name."""
    from ftctl.backends.local.jobs import Job

    job = Job(local(ctx).jobs_dir / job_id)
    if not job.spec_path.exists():
        raise UsageError(f"no job {job_id} in {local(ctx).jobs_dir}")
    found = job.result().get("mlflow_run_id")
    if found:
        return str(found)
    spec = job.spec()
    experiment = client.get_experiment_by_name((spec.get("mlflow") or {}).get("experiment") or "")
    name = spec.get("display_name")
    if experiment is None or not name:
        return None
    escaped = str(name).replace("'", "\\'")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"attributes.run_name = '{escaped}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return str(runs[0].info.run_id) if runs else None
