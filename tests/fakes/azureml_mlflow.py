"""The workspace's MLflow tracking server, faked at the HTTP level, for the real mlflow client and the
azureml-mlflow plugin.

What it serves, and what each answer is shaped after:

- Routes: `https://<region>.api.azureml.ms/mlflow/v2.0/subscriptions/<sub>/resourceGroups/<rg>/providers/
  Microsoft.MachineLearningServices/workspaces/<ws>/api/2.0/mlflow/...` - the base URL azureml-mlflow
  1.62 builds from the workspace's `mlFlowTrackingUri` (`azureml://<region>.api.azureml.ms/mlflow/v1.0/...`,
  rewritten to v2.0 for mlflow 3: azureml/mlflow/__init__.py `get_mlflow_tracking_uri_v2` and
  `AzureMLAbstractRestStore.get_host_credentials`), then mlflow's REST paths (`runs/get`,
  `metrics/get-history`, `runs/search`, `experiments/get`).
- Bodies: the MLflow REST API's JSON (mlflow.org/docs/latest/rest-api: Run = {info, data, inputs}, RunInfo
  with run_id/run_uuid/run_name/experiment_id/status/start_time/end_time/artifact_uri/lifecycle_stage;
  Metric = {key, value, timestamp, step}); errors as `{"error_code": "RESOURCE_DOES_NOT_EXIST",
  "message": ...}` with 404.
- What Azure ML puts there (learn.microsoft.com, "Query & compare experiments and runs with MLflow"):
  a job is a run whose id is the job name; pipeline steps are child runs found with
  `tags.mlflow.parentRunId='<id>'` (the only filter this fake accepts, as string `=` on tags is what Azure
  supports; `order_by` on attributes/metrics/params/tags is refused there and here); job states map to
  SCHEDULED (NotStarted, Queued, Preparing), RUNNING, FINISHED (Completed), FAILED, KILLED (Canceled);
  `runs/search` returns only the last value of each metric.
- The step runs of chat_completion_pipeline are its `jobs:` nodes in azureml-assets (spec.yaml:
  ft_nlp_common_validation, chat_completion_model_import, chat_completion_datapreprocess,
  chat_completion_finetune, ft_nlp_model_converter: version 0.0.82, no evaluation step since 0.0.79), under a
  run for the pipeline node itself. The finetune step logs the Trainer's metrics to its own run and to the
  root pipeline run (ACFT's `log_metrics_at_root`).
- The fine-tuning step's metric keys are the Hugging Face Trainer's as its MLflowCallback logs them
  (`loss`, `grad_norm`, `learning_rate`, `epoch` every logging step; `eval_loss`, `eval_runtime` per
  evaluation; `train_loss`, `train_runtime`, `train_samples_per_second` at the end) and its params the
  TrainingArguments. This is an assumption about the finetune component (it trains with the Trainer);
  no recorded Azure ML response was available to copy. Ids and values are made up.
- A failed pipeline job (status Failed) failed at one step (`failed_step`, default the fine-tuning one):
  the steps before it Completed, it Failed, the ones after it never started (as a pipeline with
  continue_on_step_failure=False stops).

Run history (`history_routes`), where azure-ai-ml reads a job's steps and their logs:

- `GET .../history/v1.0/.../runs/<id>/children`: the run's child runs (see `_children`).
- `GET .../history/v1.0/.../runs/<id>/details`: a RunDetails (the route of azure-ai-ml 1.35.2's
  `_restclient/runhistory` `build_get_details_request`; the keys of its `RunDetails` model: runId,
  runUuid, parentRunId, rootRunId, status, startTimeUtc/endTimeUtc, error = ErrorResponse{error:
  RootError{code, message}}, properties, logFiles...). `logFiles` maps each log's name to a read-only SAS
  URL of the blob under the workspace storage account's `azureml` container,
  `https://<account>.blob.core.windows.net/azureml/ExperimentRun/dcid.<run id>/<name>?sv=..&sig=..&sp=r`,
  with the names a Common Runtime step has (`user_logs/std_log.txt`, `system_logs/lifecycler/...`). The
  URL form and the names are those of real runs' `logFiles` as azureml-core's `Run.get_details()` prints
  them (a StepRun's details in a public pipeline notebook's output, 2022; a run's in the GitHub issue
  MicrosoftLearning/DP100#37, 2020). The failed step's error message is made up in the form Azure ML
  uses for a user process that exited non-zero (not copied from a recording).
- The user log blob itself is served by the fake's blob storage (`FakeAzureML._blob`, GET with the SAS
  query), written when its details are read: all of it for an ended step, the first half of its lines
  while it runs (`running_fraction`), a Python traceback appended when it failed (`failure_log`). What a
  step prints is made up: a few lines per step, and for the fine-tuning step the Trainer's log dicts
  (`{'loss': ..., 'learning_rate': ..., 'epoch': ...}`) from the same history its MLflow run has.
"""

from __future__ import annotations

import copy
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fakes.azureml import FakeAzureML, Recorded

MLFLOW_STATUS = {
    "NotStarted": "SCHEDULED",
    "Queued": "SCHEDULED",
    "Preparing": "SCHEDULED",
    "Starting": "SCHEDULED",
    "Provisioning": "SCHEDULED",
    "Running": "RUNNING",
    "Finalizing": "RUNNING",
    "Completed": "FINISHED",
    "Failed": "FAILED",
    "Canceled": "KILLED",
    "NotResponding": "FAILED",
}
STEPS = [
    "ft_nlp_common_validation",
    "chat_completion_model_import",
    "chat_completion_datapreprocess",
    "chat_completion_finetune",
    "ft_nlp_model_converter",  # chat_completion_model_converter before 2024-08
]
FINETUNE = "chat_completion_finetune"
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms
# The steps a pipeline that reached them ran; the log lines each printed (besides the Trainer's).
STEP_LOGS = {
    "ft_nlp_common_validation": ["Validating the component inputs", "Validation passed"],
    "chat_completion_model_import": ["Importing model from mlflow_model_path", "Model imported"],
    "chat_completion_datapreprocess": [
        "Reading train_file_path and test_file_path",
        "Applying the chat template to 40 training conversations",
        "Preprocessing done",
    ],
    FINETUNE: ["Starting fine-tuning: LoRA r=8, DeepSpeed stage 2", "***** Running training *****"],
    "ft_nlp_model_converter": ["Converting the model to MLflow format", "Model saved"],
}
# What the fine-tuning step prints when it runs out of GPU memory. The step runs with `distribution:
# pytorch`, so each rank writes its own user_logs/std_log_process_<rank>.txt and torch prefixes the lines
# of a failing rank with "[rank<n>]: ". The finetune entry point is wrapped in ACFT's
# swallow_all_exceptions, which re-raises the torch error as an AzureMLException whose reason sits on the
# tab-indented "Message:" line after an empty-ended header (the shape NOTES.md records from azureml-acft's
# public source; paths, numbers and JSON are made up).
FAILURE_LOG = [
    "[rank0]: Traceback (most recent call last):",
    '[rank0]:   File "/azureml-envs/acft/lib/python3.10/site-packages/transformers/trainer.py", line 2241, '
    "in train",
    "[rank0]:     return inner_training_loop(",
    "[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
    "capacity of 79.15 GiB of which 1.02 GiB is free.",
    "[rank0]: ",
    "[rank0]: During handling of the above exception, another exception occurred:",
    "[rank0]: ",
    "[rank0]: Traceback (most recent call last):",
    '[rank0]:   File "/azureml-envs/acft/lib/python3.10/site-packages/azureml/acft/common_components/utils/'
    'error_handling/swallow_all_exceptions_decorator.py", line 125, in wrapper',
    "[rank0]:     raise azureml_exception",
    "[rank0]: azureml._common.exceptions.AzureMLException: AzureMLException:",
    "[rank0]: \tMessage: There is not enough GPU memory on the machine to do the operation. Please try: "
    "a smaller per_device_train_batch_size, a shorter max_seq_length, LoRA or DeepSpeed stage 3.",
    "[rank0]: \tInnerException None",
    '[rank0]: \tErrorResponse {"error": {"code": "UserError", "message": "There is not enough GPU memory '
    'on the machine to do the operation."}}',
]
STEP_FAILED_MESSAGE = (
    "Execution failed. User process '/azureml-envs/acft/bin/python' exited with status code 1. "
    "Please check log file 'user_logs/std_log.txt' for error details."
)


@dataclass
class FakeRun:
    run_id: str
    experiment_id: str
    run_name: str
    job: str  # the pipeline job it belongs to
    parent: str | None
    step: int  # -1: the job, 0: the pipeline node, 1..: its steps in order
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    # key -> [(value, timestamp ms, step)], in logging order
    history: dict[str, list[tuple[float, int, int]]] = field(default_factory=dict)


def trainer_history(
    total_steps: int = 20,
    logging_steps: int = 5,
    eval_steps: int = 10,
    start_eval_loss: float | None = None,
    final_eval_loss: float | None = None,
) -> dict[str, list[tuple[float, int, int]]]:
    """What the Trainer's MLflowCallback logs for one short fine-tuning run (made-up, decreasing loss).

    `start_eval_loss`: an evaluation before the first step, logged at step 0 (what the Trainer's
    `eval_on_start` does); `final_eval_loss`: the last evaluation's eval_loss instead of the made-up one."""
    out: dict[str, list[tuple[float, int, int]]] = {}

    def log(key: str, value: float, step: int) -> None:
        out.setdefault(key, []).append((value, T0 + step * 1000, step))

    def evaluation(value: float, step: int) -> None:
        log("eval_loss", value, step)
        log("eval_runtime", 12.5, step)
        log("eval_samples_per_second", 8.0, step)

    if start_eval_loss is not None:
        evaluation(start_eval_loss, 0)
        log("epoch", 0.0, 0)
    for step in range(logging_steps, total_steps + 1, logging_steps):
        log("loss", round(1.6 - 0.03 * step, 4), step)
        log("grad_norm", round(2.0 - 0.05 * step, 4), step)
        log("learning_rate", 5e-6 * (1 - step / (total_steps + 1)), step)
        log("epoch", round(step / total_steps, 4), step)
        if step % eval_steps == 0:
            last = step + eval_steps > total_steps
            made_up = round(1.5 - 0.025 * step, 4)
            evaluation(final_eval_loss if last and final_eval_loss is not None else made_up, step)
    log("train_loss", round(1.6 - 0.03 * total_steps / 2, 4), total_steps)
    log("train_runtime", 612.3, total_steps)
    log("train_samples_per_second", 1.31, total_steps)
    return out


class FakeMlflow:
    """Runs and experiments of the workspace's MLflow, derived from the fake service's pipeline jobs."""

    def __init__(self, service: FakeAzureML) -> None:
        self.service = service
        self.experiments: dict[str, dict[str, Any]] = {}  # id -> experiment
        self.runs: dict[str, FakeRun] = {}
        self.running_fraction = 0.5  # how much of the finetune history (and a running step's log) shows
        self.searches: list[str] = []  # the filter strings received
        self.failed_step = FINETUNE  # the step at which a job that ends Failed failed
        self.failure_log: list[str] = list(FAILURE_LOG)  # what that step printed last
        # Whether MLflow search finds the steps under the pipeline node (the run-history layout of the
        # nested node is not public: with False only the root run and the node are found).
        self.nested_steps_searchable = True
        self.finetune_ranks = 2  # processes of the finetune step: one std_log_process_<n>.txt each
        self.step_logs: dict[str, list[str]] = {}  # step name -> its whole log (default: generated)
        # The fine-tuning step's evaluations, for the jobs submitted from now on: eval_loss at step 0
        # (None: no evaluation before training), and the last eval_loss (None: the made-up 1.0).
        self.start_eval_loss: float | None = None
        self.final_eval_loss: float | None = None

    # --- setup -------------------------------------------------------------------------------------

    def experiment_id(self, name: str) -> str:
        for exp_id, exp in self.experiments.items():
            if exp["name"] == name:
                return exp_id
        exp_id = str(uuid.uuid4())
        self.experiments[exp_id] = {
            "experiment_id": exp_id,
            "name": name,
            "artifact_location": "",
            "lifecycle_stage": "active",
            "creation_time": T0,
            "last_update_time": T0,
            "tags": [],
        }
        return exp_id

    def job_submitted(self, name: str, body: dict[str, Any]) -> None:
        """A pipeline job arrived: its run, the pipeline node's run and the step runs (which show up as
        the job advances)."""
        props = body.get("properties") or {}
        exp_id = self.experiment_id(props.get("experimentName") or "Default")
        self.runs[name] = FakeRun(
            name, exp_id, props.get("displayName") or name, name, None, -1, tags={"mlflow.rootRunId": name}
        )
        [(node_name, node)] = (props.get("jobs") or {"chat_completion_pipeline": {}}).items()
        node_id = str(uuid.uuid4())
        self.runs[node_id] = FakeRun(
            node_id,
            exp_id,
            node_name,
            name,
            name,
            0,
            tags={"mlflow.parentRunId": name, "mlflow.rootRunId": name},
        )
        inputs = {
            key: str(value.get("value"))
            for key, value in (node.get("inputs") or {}).items()
            if isinstance(value, dict) and value.get("job_input_type") == "literal"
        }
        if props.get("jobType") == "FineTuning":
            # A fine-tuning job (create_finetuning_job) has hyperParameters, not pipeline inputs. How the
            # service lays out its runs is not public: the fake gives it the same steps and root-run
            # metrics as chat_completion_pipeline.
            inputs = {
                k: str(v)
                for k, v in ((props.get("fineTuningDetails") or {}).get("hyperParameters") or {}).items()
            }
        for index, step in enumerate(STEPS, 1):
            run_id = str(uuid.uuid4())
            run = FakeRun(
                run_id,
                exp_id,
                step,
                name,
                node_id,
                index,
                tags={"mlflow.parentRunId": node_id, "mlflow.rootRunId": name, "azureml.nodeid": step},
            )
            if step == FINETUNE:
                run.params = {
                    key: inputs[key]
                    for key in (
                        "learning_rate",
                        "lr_scheduler_type",
                        "num_train_epochs",
                        "per_device_train_batch_size",
                        "gradient_accumulation_steps",
                        "max_steps",
                        "logging_steps",
                        "seed",
                    )
                    if key in inputs
                }
                run.history = trainer_history(
                    start_eval_loss=self.start_eval_loss, final_eval_loss=self.final_eval_loss
                )
                self.runs[name].history = run.history  # logged at the root pipeline run as well
            self.runs[run_id] = run

    # --- what a job's state shows ------------------------------------------------------------------

    def _job_status(self, run: FakeRun) -> str:
        job = self.service.jobs.get(run.job) or {}
        return str((job.get("properties") or {}).get("status") or "NotStarted")

    def _step_state(self, run: FakeRun) -> str | None:
        """The MLflow status of a step run; None while it has not started (or never will)."""
        job = MLFLOW_STATUS.get(self._job_status(run), "SCHEDULED")
        if job == "SCHEDULED":
            return None
        if job == "RUNNING":
            stop, state = FINETUNE, "RUNNING"  # the steps before the fine-tuning one are done
        elif job == "FAILED":
            stop, state = self.failed_step, "FAILED"
        else:
            return job
        index, last = run.step - 1, STEPS.index(stop)
        if index < last:
            return "FINISHED"
        return state if index == last else None

    def _visible(self, run: FakeRun) -> bool:
        if run.step <= 0:
            return run.step < 0 or MLFLOW_STATUS.get(self._job_status(run), "SCHEDULED") != "SCHEDULED"
        return self._step_state(run) is not None

    def _status(self, run: FakeRun) -> str:
        if run.step <= 0:
            return MLFLOW_STATUS.get(self._job_status(run), "SCHEDULED")
        return self._step_state(run) or "SCHEDULED"

    def _history(self, run: FakeRun, key: str) -> list[tuple[float, int, int]]:
        if run.step < 0 and run.history:  # the root run: what the finetune step has logged so far
            step = next((r for r in self.runs.values() if r.job == run.job and r.run_name == FINETUNE), None)
            return self._history(step, key) if step is not None and self._visible(step) else []
        values = run.history.get(key, [])
        if self._status(run) != "RUNNING" or run.step <= 0:
            return values
        last = max((step for entries in run.history.values() for _, _, step in entries), default=0)
        upto = int(last * self.running_fraction)
        return [entry for entry in values if entry[2] <= upto]

    def _run_json(self, run: FakeRun) -> dict[str, Any]:
        status = self._status(run)
        info: dict[str, Any] = {
            "run_uuid": run.run_id,
            "run_id": run.run_id,
            "run_name": run.run_name,
            "experiment_id": run.experiment_id,
            "user_id": "33333333-4444-5555-6666-777777777777",
            "status": status,
            "start_time": T0,
            "artifact_uri": f"azureml://experiments/{run.experiment_id}/runs/{run.run_id}/artifacts",
            "lifecycle_stage": "active",
        }
        if status in ("FINISHED", "FAILED", "KILLED"):
            info["end_time"] = T0 + 3_600_000
        metrics = []
        for key in run.history:
            values = self._history(run, key)
            if values:
                value, stamp, step = values[-1]
                metrics.append({"key": key, "value": value, "timestamp": stamp, "step": step})
        return {
            "info": info,
            "data": {
                "metrics": metrics,
                "params": [{"key": k, "value": v} for k, v in run.params.items()],
                "tags": [
                    {"key": k, "value": v} for k, v in {**run.tags, "mlflow.runName": run.run_name}.items()
                ],
            },
            "inputs": {},
        }

    # --- routes ------------------------------------------------------------------------------------

    def routes(self) -> list[tuple[str, str, Any]]:
        base = (
            r"/mlflow/v2\.0/subscriptions/[^/]+/resourceGroups/[^/]+"
            r"/providers/Microsoft\.MachineLearningServices/workspaces/[^/]+/api/2\.0/mlflow"
        )
        return [
            ("GET", base + r"/runs/get", self._get_run),
            ("GET", base + r"/metrics/get-history", self._get_history),
            ("POST", base + r"/runs/search", self._search),
            ("GET", base + r"/experiments/get", self._get_experiment),
        ]

    def history_routes(self) -> list[tuple[str, str, Any]]:
        """Run history, where azure-ai-ml's `jobs.list(parent_job_name=...)` reads a job's children: the
        same runs, as run-history `Run` objects (azure-ai-ml's _restclient/runhistory models: runId,
        parentRunId, rootRunId, experimentId, displayName, status with Azure ML's job states, runType,
        properties, tags, createdUtc/startTimeUtc/endTimeUtc), paged as {"value": [...]}. The base URL is
        the workspace discovery document's "api" entry."""
        ws = (
            r"/history/v1\.0/subscriptions/[^/]+/resourceGroups/[^/]+"
            r"/providers/Microsoft\.MachineLearningServices/workspaces/[^/]+"
        )
        return [
            ("GET", ws + r"/runs/(?P<run_id>[^/]+)/children", self._children),
            ("GET", ws + r"/runs/(?P<run_id>[^/]+)/details", self._details),
        ]

    def _children(self, r: Recorded, run_id: str) -> tuple[int, dict[str, str], Any]:
        parent = self._find(run_id)
        if parent is None:
            return self._json(404, {"error": {"code": "UserError", "message": f"Run {run_id} not found"}})
        azure = {"SCHEDULED": "Queued", "RUNNING": "Running", "FINISHED": "Completed", "FAILED": "Failed"}
        value = []
        for run in self.runs.values():
            if run.parent != run_id or not self._visible(run):
                continue
            status = self._status(run)
            value.append(
                {
                    "runId": run.run_id,
                    "parentRunId": run.parent,
                    "rootRunId": run.job,
                    "experimentId": run.experiment_id,
                    "displayName": run.run_name,
                    "name": run.run_name,
                    "status": azure.get(status, "Canceled"),
                    "runType": "azureml.PipelineRun" if run.step == 0 else "azureml.StepRun",
                    "properties": {"azureml.nodeid": run.run_name, "azureml.runsource": "azureml.StepRun"},
                    "tags": {},
                    "createdUtc": "2026-01-01T00:00:00.000Z",
                    "startTimeUtc": "2026-01-01T00:00:05.000Z",
                    **({"endTimeUtc": "2026-01-01T01:00:00.000Z"} if status == "FINISHED" else {}),
                }
            )
        return self._json(200, {"value": value, "continuationToken": None, "nextLink": None})

    def step_log(self, run: FakeRun) -> list[str]:
        """The lines the step run has printed so far (see the module docstring)."""
        name = run.run_name
        lines = list(self.step_logs.get(name) or self._generated_log(run))
        status = self._status(run)
        if status in ("RUNNING", "FAILED"):
            lines = lines[: max(1, int(len(lines) * self.running_fraction))]
        if status == "FAILED":
            lines += self.failure_log
        return lines

    def _generated_log(self, run: FakeRun) -> list[str]:
        name = run.run_name
        lines = [f"[2026-01-01 00:00:05] {name}: starting", *STEP_LOGS.get(name, [])]
        if run.history:
            steps = sorted({step for entries in run.history.values() for _, _, step in entries})
            for step in steps:
                logged = {
                    key: value
                    for key, entries in run.history.items()
                    for value, _, at in entries
                    if at == step
                }
                shown = {
                    key: logged[key]
                    for key in ("loss", "grad_norm", "learning_rate", "epoch", "eval_loss")
                    if key in logged
                }
                if shown:
                    lines.append(str(shown))
        lines.append(f"[2026-01-01 00:59:55] {name}: done")
        return lines

    def _log_url(self, run: FakeRun, name: str) -> tuple[str, str]:
        """(blob key in the fake's storage, SAS URL) of one of the run's log files."""
        from fakes.azureml import FAKE_SIGNATURE, STORAGE_ACCOUNT

        path = f"/azureml/ExperimentRun/dcid.{run.run_id}/{name}"
        query = (
            f"sv=2019-07-07&sr=b&sig={FAKE_SIGNATURE}&st=2026-01-01T00%3A00%3A00Z"
            "&se=2026-01-01T08%3A00%3A00Z&sp=r"
        )
        return f"{STORAGE_ACCOUNT}{path}", f"https://{STORAGE_ACCOUNT}.blob.core.windows.net{path}?{query}"

    def _details(self, r: Recorded, run_id: str) -> tuple[int, dict[str, str], Any]:
        run = self._find(run_id)
        if run is None:
            return self._json(404, {"error": {"code": "UserError", "message": f"Run {run_id} not found"}})
        status = self._status(run)
        azure = {"SCHEDULED": "Queued", "RUNNING": "Running", "FINISHED": "Completed", "FAILED": "Failed"}
        log_files: dict[str, str] = {}
        if run.step > 0 and status != "SCHEDULED":
            # A distributed step (the finetune one) has one user log per rank; only rank 0 failed here.
            ranks = self.finetune_ranks if run.run_name == FINETUNE else 0
            names = [f"user_logs/std_log_process_{n}.txt" for n in range(ranks)] or ["user_logs/std_log.txt"]
            for index, name in enumerate(names):
                key, url = self._log_url(run, name)
                lines = self.step_log(run) if index == 0 else self._generated_log(run)[:2]
                self.service.blobs[key] = ("\n".join(lines) + "\n").encode("utf-8")
                log_files[name] = url
            for name in (
                "system_logs/lifecycler/execution-wrapper.log",
                "system_logs/lifecycler/lifecycler.log",
            ):
                log_files[name] = self._log_url(run, name)[1]
        body: dict[str, Any] = {
            "runId": run.run_id,
            "runUuid": run.run_id,
            "parentRunUuid": run.parent,
            "rootRunUuid": run.job,
            "target": "gpu-cluster-big",
            "status": azure.get(status, "Canceled"),
            "parentRunId": run.parent,
            "rootRunId": run.job,
            "createdTimeUtc": "2026-01-01T00:00:00.000Z",
            "startTimeUtc": "2026-01-01T00:00:05.000Z",
            "warnings": [],
            "tags": {},
            "properties": {
                "azureml.nodeid": run.run_name,
                "azureml.runsource": "azureml.StepRun",
                "StepType": "CommandStep",
                "ComputeTargetType": "AmlCompute",
            },
            "parameters": {},
            "services": {},
            "inputDatasets": [],
            "outputDatasets": [],
            "logFiles": log_files,
            "revision": 7,
        }
        if status in ("FINISHED", "FAILED"):
            body["endTimeUtc"] = "2026-01-01T01:00:00.000Z"
        if status == "FAILED":
            body["error"] = {"error": {"code": "UserError", "message": STEP_FAILED_MESSAGE}}
        return self._json(200, body)

    @staticmethod
    def _json(status: int, body: Any) -> tuple[int, dict[str, str], Any]:
        return status, {"Content-Type": "application/json"}, body

    def _missing(self, what: str) -> tuple[int, dict[str, str], Any]:
        return self._json(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"{what} not found"})

    def _find(self, run_id: str | None) -> FakeRun | None:
        run = self.runs.get(run_id or "")
        return run if run is not None and self._visible(run) else None

    def _get_run(self, r: Recorded) -> tuple[int, dict[str, str], Any]:
        run_id = r.query.get("run_id") or r.query.get("run_uuid")
        run = self._find(run_id)
        if run is None:
            return self._missing(f"Run {run_id}")
        return self._json(200, {"run": self._run_json(run)})

    def _get_history(self, r: Recorded) -> tuple[int, dict[str, str], Any]:
        run = self._find(r.query.get("run_id") or r.query.get("run_uuid"))
        if run is None:
            return self._missing(f"Run {r.query.get('run_id')}")
        key = r.query.get("metric_key", "")
        metrics = [
            {"key": key, "value": value, "timestamp": stamp, "step": step}
            for value, stamp, step in self._history(run, key)
        ]
        return self._json(200, {"metrics": metrics} if metrics else {})

    def _search(self, r: Recorded) -> tuple[int, dict[str, str], Any]:
        body = r.body if isinstance(r.body, dict) else {}
        text = str(body.get("filter") or "")
        self.searches.append(text)
        order_by = [
            o for o in body.get("order_by") or [] if re.match(r"(attributes|metrics|params|tags)\.", o)
        ]
        if order_by:
            return self._json(
                400,
                {"error_code": "INVALID_PARAMETER_VALUE", "message": f"order_by {order_by} is not supported"},
            )
        match = re.fullmatch(
            r"\s*tags\.(?:`mlflow\.parentRunId`|mlflow\.parentRunId)\s*=\s*'([^']*)'\s*", text
        )
        if text and match is None:
            return self._json(
                400, {"error_code": "INVALID_PARAMETER_VALUE", "message": f"unsupported filter {text!r}"}
            )
        experiments = set(body.get("experiment_ids") or [])
        parent = match.group(1) if match else None
        found = [
            self._run_json(run)
            for run in self.runs.values()
            if self._visible(run)
            and run.experiment_id in experiments
            and (parent is None or run.parent == parent)
            and (self.nested_steps_searchable or run.step <= 0)
        ]
        return self._json(200, {"runs": copy.deepcopy(found)} if found else {})

    def _get_experiment(self, r: Recorded) -> tuple[int, dict[str, str], Any]:
        exp = self.experiments.get(r.query.get("experiment_id", ""))
        if exp is None:
            return self._missing(f"Experiment {r.query.get('experiment_id')}")
        return self._json(200, {"experiment": copy.deepcopy(exp)})


def serve_mlflow(monkeypatch: Any, service: FakeAzureML) -> None:
    """Point mlflow's HTTP session at the fake service (mlflow builds its own requests session, outside
    azure-core, so the MLClient's transport does not reach it)."""
    import requests
    from mlflow.utils import request_utils

    from fakes.azureml import _Adapter

    def session(*args: Any, **kwargs: Any) -> requests.Session:
        s = requests.Session()
        s.trust_env = False
        adapter = _Adapter(service)
        s.mount("https://", adapter)
        s.mount("http://", adapter)
        return s

    monkeypatch.setattr(request_utils, "_get_request_session", session)
