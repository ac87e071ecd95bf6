"""What the commands outside the pipeline ask of the Azure ML backend.

- The endpoint (`ftctl credentials`, `ftctl chat`, `ftctl score --file`): the endpoint `ftctl deploy`
  recorded, read back from Azure ML (`online_endpoints.get` for its scoring URI and state,
  `online_endpoints.get_keys` for its key: the key is never recorded). Requests go through azure-core's
  HTTP pipeline (proxies from the environment, retries on 408/429/5xx), with the same headers as
  `online_endpoints.invoke`: `Authorization: Bearer <key>` and `azureml-model-deployment`.
- The metrics (`ftctl metrics`): MLflow against the workspace's tracking URI (the azureml-mlflow plugin,
  authenticated with ftctl's credential). The pipeline job is an MLflow run; its steps are child runs
  (`tags.mlflow.parentRunId`), the chat_completion_pipeline node a sub-pipeline whose
  `chat_completion_finetune` step logs the Hugging Face Trainer's metrics. A running job shows what it
  has logged so far.
- The logs (`ftctl logs`): the user log of one step of the pipeline job, by default the
  `chat_completion_finetune` step, read from run history and blob storage (ftctl.backends.azureml.steps);
  `--follow` polls it while the step runs.

azure.* and mlflow are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ftctl import state as st
from ftctl.backends.azureml.backend import azure
from ftctl.backends.azureml.client import calling, status_text
from ftctl.errors import FtctlError, StageFailed, StateError, UsageError

if TYPE_CHECKING:
    from ftctl.backends.azureml.steps import Step
    from ftctl.chat import Endpoint, Reply
    from ftctl.context import Context
    from ftctl.metrics import RunMetrics
    from ftctl.stages.contract import LogWriter, State

SERVING = {"succeeded", "updating"}
# The fine-tuning step of chat_completion_pipeline (azureml-assets: its `jobs:` node name).
FINETUNE_STEP = "chat_completion_finetune"
TRAIN_METRICS = ("loss", "train_loss", "eval_loss")
MAX_DEPTH = 4  # pipeline job > chat_completion_pipeline node > its steps (and a margin)
LOG_POLL_MAX_S = 10.0  # `ftctl logs --follow` polls every poll_interval_s, at most this long apart


def check_backend(ctx: Context, state: State) -> None:
    """A workspace that holds another backend's run has no Azure ML endpoint or job (as the runner says
    for the stages)."""
    backend = state.get("backend")
    if backend and backend != "azureml":
        raise StateError(
            f"workspace {ctx.workspace} holds a {backend} run, but the backend is now azureml",
            hint=f"pass --backend {backend}, or use another --workspace for Azure ML",
        )


# --- the endpoint ---------------------------------------------------------------------------------------


def _model_of(outputs: dict[str, Any]) -> str | None:
    """`name:version` of the registered model deploy serves (its model_uri is azureml:name:version)."""
    uri = str(outputs.get("model_uri") or "")
    if uri.startswith("azureml:") and uri.count(":") >= 2:
        return uri[len("azureml:") :]
    if outputs.get("model_version") and outputs.get("model_id"):
        name = str(outputs["model_id"]).rstrip("/").split("/versions/")[0].rsplit("/", 1)[-1]
        return f"{name}:{outputs['model_version']}"
    return None


def endpoint(ctx: Context, state: State, command: str) -> Endpoint:
    from ftctl.chat import Endpoint

    check_backend(ctx, state)
    rec = st.record(state, "deploy")
    outputs = rec.get("outputs") or {}
    name = outputs.get("endpoint_name")
    if rec["status"] != st.SUCCEEDED or not name or outputs.get("dry_run"):
        raise UsageError(
            f"there is no endpoint: deploy is {rec['status']}",
            hint="run `ftctl deploy` (or `ftctl run --to deploy`)",
        )
    if outputs.get("endpoint_kind") == "serverless":
        from ftctl.backends.azureml import serverless

        return serverless.endpoint(ctx, outputs)
    handles = azure(ctx)
    ws = handles.workspace
    from azure.core.exceptions import ResourceNotFoundError

    with calling(f"reading endpoint {name}"):
        try:
            found = ws.online_endpoints.get(name)
        except ResourceNotFoundError:
            found = None
    if found is None:
        raise UsageError(
            f"the endpoint {name} no longer exists in the workspace (it was torn down or deleted)",
            hint="run `ftctl deploy`",
        )
    state_text = status_text(found.provisioning_state)
    if state_text.lower() not in SERVING or not found.scoring_uri:
        raise UsageError(
            f"the endpoint {name} is not serving (provisioning state {state_text})",
            hint="run `ftctl deploy`",
        )
    with calling(f"reading the keys of endpoint {name}"):
        keys = ws.online_endpoints.get_keys(name)
    key = getattr(keys, "primary_key", None) or getattr(keys, "access_token", None)
    if not key:
        raise StageFailed(
            f"endpoint {name} has no key (auth mode {getattr(found, 'auth_mode', None)})",
            hint="ftctl deploys endpoints with auth_mode key; run `ftctl deploy --force`",
        )
    scoring_uri = str(found.scoring_uri)
    deployment = str(outputs.get("deployment_name") or ctx.cfg.deploy.deployment_name)
    return Endpoint(
        name=str(name),
        deployment=deployment,
        url=scoring_uri.rsplit("/", 1)[0],
        scoring_uri=scoring_uri,
        key=str(key),
        key_file="",  # the key stays in Azure (online_endpoints.get_keys), never in a file
        model=_model_of(outputs),
        openai_base_url=None,  # a managed online endpoint of chat_completion_pipeline's model has none
        send=functools.partial(send, transport=handles.transport),
    )


def send(
    ep: Endpoint, body: bytes, timeout_s: float, transport: Any = None, headers: dict[str, str] | None = None
) -> Reply:
    """POST a scoring request as `online_endpoints.invoke` does, through azure-core (with the Azure
    handles' transport: azure-core's own, or the one injected). `headers`: the auth and routing headers
    instead of invoke's (a serverless endpoint's)."""
    from azure.core import PipelineClient
    from azure.core.exceptions import ServiceRequestError, ServiceResponseError
    from azure.core.pipeline.policies import (
        HeadersPolicy,
        NetworkTraceLoggingPolicy,
        ProxyPolicy,
        RetryPolicy,
        UserAgentPolicy,
    )
    from azure.core.rest import HttpRequest

    from ftctl.chat import EndpointError, Reply

    policies = [
        HeadersPolicy(),
        UserAgentPolicy("ftctl"),
        ProxyPolicy(),
        # A managed endpoint answers 429 when its queue is full and 503 while it scales: retried with
        # back-off, a few times, within the request's time.
        RetryPolicy(retry_total=3, retry_backoff_factor=0.8, timeout=timeout_s),
        NetworkTraceLoggingPolicy(),
    ]
    client: Any = PipelineClient(base_url=ep.url, policies=policies, transport=transport)
    request = HttpRequest(
        "POST",
        ep.scoring_uri,
        content=body,
        headers={
            "Content-Type": "application/json",
            "Accept": "application/json",
            **(
                headers
                if headers is not None
                else {"Authorization": f"Bearer {ep.key}", "azureml-model-deployment": ep.deployment}
            ),
        },
    )
    started = time.perf_counter()
    try:
        response = client.send_request(
            request,
            connection_timeout=min(timeout_s, 30),
            read_timeout=timeout_s,
            # A refused request (408, 429) or an unavailable one (5xx) did not generate: safe to send again.
            retry_on_methods=frozenset({"POST"}),
        )
        raw = response.text()
    except (ServiceRequestError, ServiceResponseError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StageFailed(
            f"the endpoint at {ep.scoring_uri} is unreachable ({reason})",
            hint="check the network; `ftctl credentials` shows the endpoint, `ftctl deploy` re-creates it",
        ) from None
    latency_ms = round((time.perf_counter() - started) * 1000, 1)
    if response.status_code >= 400:
        raise EndpointError(response.status_code, _error_message(raw)[:300])
    return Reply(response.status_code, raw, latency_ms)


def _error_message(raw: str) -> str:
    """The message of an endpoint's error body ({"message": ...}, {"error": {"message": ...}}, text)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.strip() or "(no body)"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("message", "error", "detail"):
            if body.get(key):
                return str(body[key])
    return raw.strip()


# --- the metrics ----------------------------------------------------------------------------------------


def tracking_uri(ctx: Context) -> str:
    """The workspace's MLflow tracking URI. Reading the workspace through azure-ai-ml (with azureml-mlflow
    installed) also gives the plugin ftctl's credential for that URI."""
    client = azure(ctx).workspace
    name = client.workspace_name
    with calling(f"reading workspace {name}", not_found=f"workspace {name} not found"):
        workspace = client.workspaces.get(name)
    uri = getattr(workspace, "mlflow_tracking_uri", None)
    if not uri:
        raise StageFailed(f"workspace {name} has no MLflow tracking URI")
    return str(uri)


def mlflow_client(ctx: Context, needed_by: str = "`ftctl metrics` on Azure ML") -> tuple[Any, str]:
    """An MLflow client of the workspace's tracking server, and its URI; UsageError naming `needed_by`
    when mlflow or azureml-mlflow is not installed."""
    try:
        import azureml.mlflow  # noqa: F401 - registers the azureml:// tracking store
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UsageError(
            f"{needed_by} needs mlflow and azureml-mlflow",
            hint="pip install 'ftctl[azure]' (it pins azureml-mlflow==1.62.0.post6 with mlflow<=3.15.0)",
        ) from None
    uri = tracking_uri(ctx)
    return MlflowClient(tracking_uri=uri), uri


@contextlib.contextmanager
def _mlflow_call(what: str) -> Iterator[None]:
    """Errors from MLflow (MlflowException, requests errors) as ftctl errors."""
    try:
        yield
    except FtctlError:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
            raise UsageError(f"{what}: {text[:300]}") from None
        raise StageFailed(
            f"{what} failed: {text[:300]}",
            hint="the job's metrics are also in Azure ML studio (the job > Metrics)",
        ) from None


def _children(client: Any, experiment_id: str, run_id: str) -> list[Any]:
    with _mlflow_call(f"listing the steps of run {run_id}"):
        return list(
            client.search_runs(
                [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'", max_results=1000
            )
        )


def _has_training_metrics(run: Any) -> bool:
    metrics = run.data.metrics or {}
    return any(key in metrics for key in TRAIN_METRICS)


def find_finetune_run(client: Any, top: Any) -> tuple[Any | None, list[Any]]:
    """The fine-tuning step's run under `top` (a pipeline job's run), and every run visited.

    Breadth first through the child runs: the step named chat_completion_finetune wins; else the root
    run itself when it holds the training metrics (the finetune step also logs them at the root pipeline
    run); else the first run that logged a training loss. None while the job has not reached that step."""
    experiment_id = top.info.experiment_id
    seen: list[Any] = [top]
    level = [top]
    fallback = top if _has_training_metrics(top) else None
    for _ in range(MAX_DEPTH):
        children: list[Any] = []
        for run in level:
            children += _children(client, experiment_id, run.info.run_id)
        if not children:
            break
        seen += children
        for run in children:
            if FINETUNE_STEP in (run.info.run_name or ""):
                return run, seen
            if fallback is None and _has_training_metrics(run):
                fallback = run
        level = children
    return fallback, seen


def job_run(client: Any, job: str) -> Any:
    """The MLflow run of a pipeline job (its id is the job's name); UsageError when there is none yet."""
    with _mlflow_call(f"reading MLflow run {job}"):
        try:
            return client.get_run(job)
        except Exception as exc:
            if getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                raise UsageError(
                    f"no MLflow run {job!r} in the workspace yet",
                    hint="a job that was just submitted appears within a minute; try again",
                ) from None
            raise


def eval_losses(ctx: Context, job: str, needed_by: str) -> list[tuple[int, float]]:
    """The held-out losses the job's fine-tuning step logged: (step, eval_loss) in step order, a
    diverged evaluation as NaN (what the gate and `ftctl evaluate` compare). The same run as
    `ftctl metrics` shows; StageFailed when the job has no fine-tuning step run."""
    client, _ = mlflow_client(ctx, needed_by)
    top = job_run(client, job)
    step, _ = find_finetune_run(client, top)
    if step is None:
        raise StageFailed(
            f"job {job} ({status_text(top.info.status)}) has no {FINETUNE_STEP} run in MLflow",
            hint="`ftctl metrics` and `ftctl logs` show what the job logged",
        )
    with _mlflow_call(f"reading the eval_loss of run {step.info.run_id}"):
        history = client.get_metric_history(step.info.run_id, "eval_loss")
    ordered = sorted(history, key=lambda m: (m.step, m.timestamp))
    return [(int(m.step), float(m.value)) for m in ordered]


def training_pace(ctx: Context, job: str) -> dict[str, float] | None:
    """The fine-tuning step's measured pace: the Trainer's train_runtime (logged once, at the last
    optimizer step) over that step. None when the job logged none."""
    client, _ = mlflow_client(ctx, "measuring the job's pace")
    step, _ = find_finetune_run(client, job_run(client, job))
    if step is None:
        return None
    with _mlflow_call(f"reading the train_runtime of run {step.info.run_id}"):
        history = client.get_metric_history(step.info.run_id, "train_runtime")
    if not history:
        return None
    last = max(history, key=lambda m: (m.step, m.timestamp))
    runtime, steps = float(last.value), int(last.step)
    if steps <= 0 or not math.isfinite(runtime) or runtime <= 0:
        return None
    return {"train_runtime_s": runtime, "steps": steps, "seconds_per_step": runtime / steps}


def metrics(ctx: Context, state: State, run: str | None) -> RunMetrics:
    from ftctl.metrics import RunMetrics, fetch

    check_backend(ctx, state)
    submit = st.record(state, "submit")
    outputs = submit.get("outputs") or {}
    job = run or outputs.get("job_name")
    if not job or outputs.get("dry_run") and not run:
        raise UsageError(
            "no fine-tuning job to show: submit has not run",
            hint="run `ftctl submit` (or `ftctl run --to submit`), or pass --run JOB_NAME",
        )
    client, uri = mlflow_client(ctx)
    top = job_run(client, job)
    step, _ = find_finetune_run(client, top)
    if step is None:
        ctx.ui.info(
            f"job {job} ({status_text(top.info.status)}) has not reached its fine-tuning step yet; "
            "no training metrics so far"
        )
        found = RunMetrics(
            run_id=top.info.run_id,
            run_name=top.info.run_name,
            status=top.info.status,
            experiment=None,
            params=dict(top.data.params or {}),
        )
        with _mlflow_call("reading the experiment"):
            found.experiment = client.get_experiment(top.info.experiment_id).name
    else:
        with _mlflow_call(f"reading the metrics of run {step.info.run_id}"):
            found = fetch(client, step.info.run_id)
        _derive_perplexity(found)
        if step is not top:
            found.run_name = f"{top.info.run_name or job} / {step.info.run_name or step.info.run_id}"
    found.job_id = job
    found.tracking_uri = uri
    return found


def _derive_perplexity(found: RunMetrics) -> None:
    """The Trainer logs eval_loss (mean token cross-entropy), not perplexity: it is exp(eval_loss), as
    the local trainer logs it."""
    for row in found.steps:
        if row.get("perplexity") is None and isinstance(row.get("eval_loss"), (int, float)):
            row["perplexity"] = _exp(row["eval_loss"])
    if "perplexity" not in found.summary and "eval_loss" in found.summary:
        value = _exp(found.summary["eval_loss"])
        if value is not None:
            found.summary["perplexity"] = value


def _exp(value: float) -> float | None:
    try:
        result = math.exp(value)
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


# --- the logs -------------------------------------------------------------------------------------------


def logs(ctx: Context, state: State, step: str | None, follow: bool, write: LogWriter) -> dict[str, Any]:
    """The user log of `step` (default chat_completion_finetune) of the pipeline job submit recorded;
    with `follow`, new lines until the step ends (waiting for the step to start if it has not)."""
    from ftctl.backends.azureml import steps as pipeline

    check_backend(ctx, state)
    outputs = st.record(state, "submit").get("outputs") or {}
    job = outputs.get("job_name")
    if not job or outputs.get("dry_run"):
        raise UsageError(
            "no fine-tuning job to show: submit has not run",
            hint="run `ftctl submit` (or `ftctl run --to submit`)",
        )
    wanted = step or FINETUNE_STEP
    interval = min(ctx.cfg.poll_interval_s, LOG_POLL_MAX_S)
    written = 0  # lines of the log already passed to `write`
    while True:
        job_status = pipeline.job_status(ctx, job)
        found = pipeline.pipeline_steps(ctx, job)
        current = next((s for s in found if s.name == wanted), None)
        if current is None:
            if job_status in pipeline.TERMINAL or not follow:
                raise _no_such_step(job, job_status, wanted, found)
            step_status, source = "NotStarted", None
        else:
            log = pipeline.read_log(ctx, current)
            step_status, source = log.status, log.source
            lines = log.text.splitlines()
            ended = step_status in pipeline.TERMINAL or job_status in pipeline.TERMINAL
            if follow and not ended and log.text and not log.text.endswith("\n"):
                lines = lines[:-1]  # a line still being written: shown once it is finished
            for line in lines[written:]:
                write(line)
            written = max(written, len(lines))
            if not follow or ended:
                break
        time.sleep(interval)
    return {
        "job": job,
        "job_status": job_status,
        "step": wanted,
        "step_status": step_status,
        "steps": pipeline.as_rows(found),
        "source": source,
    }


def _no_such_step(job: str, job_status: str, wanted: str, found: list[Step]) -> UsageError:
    from ftctl.backends.azureml.steps import TERMINAL

    listed = ", ".join(f"{s.name} ({s.status})" for s in found) or "none yet"
    if job_status not in TERMINAL:
        return UsageError(
            f"job {job} is {job_status} and has no step {wanted} yet; its steps so far: {listed}",
            hint="`ftctl logs --follow` waits for it; `ftctl logs --step NAME` shows another step",
        )
    failed = next((s.name for s in found if s.status == "Failed"), None)
    other = failed or (found[-1].name if found else None)
    return UsageError(
        f"job {job} ({job_status}) has no step {wanted}; its steps: {listed}",
        hint=f"`ftctl logs --step {other}`" if other else "the job ran no step; see it in Azure ML studio",
    )
