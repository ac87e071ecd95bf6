"""The pipeline job's steps and their user logs, read from run history as azure-ai-ml's `jobs.stream`
reads them.

- Steps: `jobs.list(parent_job_name=JOB)` gives the job's child, the chat_completion_pipeline node, and
  run history's children of that node (`_runs_operations.get_run_children`: a pipeline child job has no
  public call) its own steps: validation, model import, preprocessing, chat_completion_finetune,
  conversion.
- A step's log: run history's details of the step run (`_runs_operations.get_run_details`, GET
  .../history/v1.0/.../runs/<run id>/details) list its log files, each with a read-only SAS URL
  (`logFiles`: `user_logs/std_log.txt` is what the step's process printed; `system_logs/...` are Azure
  ML's own). The user log is downloaded from blob storage with azure-ai-ml's helper
  (`download_text_from_url`) over the workspace client's HTTP pipeline (retries, proxies, the test
  transport). `jobs.download` would fetch the same file, but only once a job has ended and only with
  the step's whole artifact folder; this works while the step runs, so `ftctl logs --follow` can poll.

azure.* is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ftctl.backends.azureml.backend import azure
from ftctl.backends.azureml.client import calling, status_text
from ftctl.errors import UsageError

if TYPE_CHECKING:
    from ftctl.context import Context

TERMINAL = {"Completed", "Failed", "Canceled", "NotResponding", "Paused"}
USER_LOG = "user_logs/std_log.txt"
# Several processes (distributed training) write std_log_process_<rank>.txt: rank 0's is the one to show.
_USER_LOGS = re.compile(r"user_logs/std_log[^/]*\.txt")
_TRACEBACK = "Traceback (most recent call last):"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
MAX_ERROR_CHARS = 400


@dataclass(frozen=True)
class Step:
    name: str  # the node name in the pipeline (its display name), e.g. chat_completion_finetune
    run_id: str  # its run in run history
    status: str  # Azure ML's job status: NotStarted, Queued, Running, Completed, Failed, Canceled...


@dataclass(frozen=True)
class StepLog:
    status: str
    source: str | None  # the log file's name, None while the step has none
    text: str
    error: str | None  # what run history says went wrong, when the step failed


def job_status(ctx: Context, name: str) -> str:
    """The pipeline job's status; UsageError when the workspace has no such job."""
    from azure.core.exceptions import ResourceNotFoundError

    with calling(f"reading job {name}"):
        try:
            job = azure(ctx).workspace.jobs.get(name)
        except ResourceNotFoundError:
            job = None
    if job is None:
        raise UsageError(
            f"job {name} is not in the workspace (it never reached Azure ML, or it was deleted)",
            hint="run `ftctl submit`",
        )
    return status_text(job.status)


def pipeline_steps(ctx: Context, name: str) -> list[Step]:
    """The steps of pipeline job `name` (the chat_completion_pipeline node expanded into its own steps),
    in the order Azure ML lists them; a child without steps of its own is a step itself."""
    jobs = azure(ctx).workspace.jobs
    found: list[Step] = []
    with calling(f"listing the steps of job {name}"), contextlib.redirect_stdout(io.StringIO()):
        for child in jobs.list(parent_job_name=name):
            if child is None:
                continue
            steps = [s for s in jobs._runs_operations.get_run_children(child.name) if s is not None]
            for step in steps or [child]:
                label = str(step.display_name or step.name)
                found.append(Step(label, str(step.name), status_text(step.status)))
    return found


def user_log_file(log_files: dict[str, str] | None) -> tuple[str, str] | None:
    """(name, SAS URL) of the step's user log among its log files: std_log.txt, else the first
    process's std_log_process_0.txt (the names sort so), else None."""
    files = log_files or {}
    if USER_LOG in files:
        return USER_LOG, files[USER_LOG]
    names = sorted(name for name in files if _USER_LOGS.fullmatch(name))
    return (names[0], files[names[0]]) if names else None


def read_log(ctx: Context, step: Step) -> StepLog:
    """The step's status (now) and its user log as it stands."""
    from azure.ai.ml._utils.utils import create_requests_pipeline_with_retry, download_text_from_url

    ws = azure(ctx).workspace
    with calling(f"reading the details of step {step.name}"):
        details = ws.jobs._runs_operations.get_run_details(step.run_id)
    found = user_log_file(details.log_files)
    text = ""
    if found is not None:
        with calling(f"downloading {found[0]} of step {step.name}"):
            pipeline = create_requests_pipeline_with_retry(requests_pipeline=ws._requests_pipeline)
            text = download_text_from_url(found[1], pipeline, timeout=(30, 300))  # "" when not there yet
    error = getattr(getattr(details.error, "error", None), "message", None)  # ErrorResponse.error: RootError
    return StepLog(
        status_text(details.status), found[0] if found else None, text, str(error) if error else None
    )


def _unprefixed(lines: list[str], index: int) -> list[str]:
    """The lines after the traceback header at `index`, with the prefix the header carries ("[rank0]: ")
    taken off the lines that have it."""
    prefix = lines[index][: lines[index].index(_TRACEBACK)]
    return [
        after[len(prefix) :] if prefix and after.startswith(prefix) else after for after in lines[index + 1 :]
    ]


def _exception_line(body: list[str]) -> str | None:
    """The exception line that ends a traceback (the first unindented non-empty line), and, for ACFT's
    re-raised exceptions (`AzureMLException:` / `ACFTValidationException:` with nothing after the colon),
    the reason on the tab-indented `Message:` line that follows."""
    for position, line in enumerate(body):
        if not line.strip() or line.startswith((" ", "\t")):
            continue
        found = line.strip()
        if found.endswith(":"):
            for after in body[position + 1 : position + 8]:
                text = after.strip()
                if text.startswith("Message:") and text[len("Message:") :].strip():
                    return f"{found} {text[len('Message:') :].strip()}"
        return found
    return None


def error_line(text: str) -> str | None:
    """The line of a log that says what went wrong: the last line of its last Python traceback (the
    exception; for ACFT's re-raised AzureMLException, with its `Message:` reason), else its first line
    containing 'Error'; None when there is neither. A prefix that every line of the traceback carries
    ("[rank0]: ") is looked through."""
    lines = [_ANSI.sub("", line).rstrip() for line in text.splitlines()]
    found = None
    for index, line in enumerate(lines):
        if _TRACEBACK in line:
            found = _exception_line(_unprefixed(lines, index)) or found
    if found is None:
        found = next((line.strip() for line in lines if "Error" in line), None)
    if found and len(found) > MAX_ERROR_CHARS:
        found = found[: MAX_ERROR_CHARS - 3] + "..."
    return found


def failed_step(steps: Iterable[Step]) -> Step | None:
    return next((step for step in steps if step.status == "Failed"), None)


def as_rows(steps: Iterable[Step]) -> list[dict[str, Any]]:
    return [{"name": step.name, "status": step.status} for step in steps]
