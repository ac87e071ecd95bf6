"""The fine-tuning job's metrics, read back from MLflow: step-wise train loss, eval loss, perplexity,
learning rate and tokens/s, the run's parameters and final values; a table, JSON, and a loss-curve PNG.

The local trainer logs to the workspace's MLflow store (`<workspace>/mlflow.db`): `loss`, `learning_rate`,
`tokens_per_second` and `epoch` every logging_steps, `eval_loss` and `perplexity` before training, a few
times during it and at the end, and the final `train_loss`, `tokens_per_second`, `train_tokens`,
`train_runtime_s` at the last step. `fetch` takes any MlflowClient, so a backend whose tracking store is
elsewhere (Azure ML's workspace MLflow) only has to say which client and which run.

mlflow and matplotlib are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl.errors import StageFailed, UsageError

if TYPE_CHECKING:
    pass

# MLflow metric key -> the column it fills in a step row.
STEP_METRICS = {
    "loss": "train_loss",
    "eval_loss": "eval_loss",
    "perplexity": "perplexity",
    "learning_rate": "learning_rate",
    "tokens_per_second": "tokens_per_second",
    "epoch": "epoch",
}
SUMMARY_METRICS = (
    "train_loss",
    "eval_loss",
    "perplexity",
    "tokens_per_second",
    "train_tokens",
    "train_runtime_s",
    "train_examples",
    "dropped_examples",
)
COLUMNS = ["step", "epoch", "train_loss", "eval_loss", "perplexity", "learning_rate", "tokens_per_second"]


@dataclass
class RunMetrics:
    run_id: str
    run_name: str | None
    status: str | None
    experiment: str | None
    params: dict[str, str] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)  # one row per step, COLUMNS as keys
    job_id: str | None = None
    tracking_uri: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return json.loads(json.dumps(data, default=_json_number))  # inf/nan -> null


def _json_number(value: Any) -> Any:
    return str(value)


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def read_store(db: Path, run_id: str) -> RunMetrics | None:
    """The same as `fetch`, read straight from a local MLflow SQLite store with the standard library
    (importing MLflow takes seconds; this takes milliseconds). None when the run is not there or the
    store's tables are not the ones this reads (another MLflow schema): ask MLflow then."""
    import sqlite3
    from urllib.parse import quote

    uri = f"file:{quote(str(db), safe='/')}?mode=ro"  # a path with `%`, `?` or `#` read as itself
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as con:
            run = con.execute(
                "SELECT r.run_uuid, r.name, r.status, e.name FROM runs r "
                "LEFT JOIN experiments e ON e.experiment_id = r.experiment_id WHERE r.run_uuid = ?",
                (run_id,),
            ).fetchone()
            if run is None:
                return None
            params = dict(con.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)))
            latest = {
                key: math.nan if is_nan else value
                for key, value, is_nan in con.execute(
                    "SELECT key, value, is_nan FROM latest_metrics WHERE run_uuid = ?", (run_id,)
                )
            }
            keys = ",".join("?" * len(STEP_METRICS))
            history = con.execute(
                f"SELECT key, value, step, is_nan FROM metrics WHERE run_uuid = ? AND key IN ({keys}) "
                "ORDER BY step, timestamp",
                (run_id, *STEP_METRICS),
            ).fetchall()
    except sqlite3.Error:
        return None
    rows: dict[int, dict[str, Any]] = {}
    for key, value, step, is_nan in history:
        row = rows.setdefault(int(step), {c: None for c in COLUMNS} | {"step": int(step)})
        if row[STEP_METRICS[key]] is None:  # as `fetch`: the first value per step
            row[STEP_METRICS[key]] = None if is_nan else _finite(value)
    summary = {key: value for key in SUMMARY_METRICS if (value := _finite(latest.get(key))) is not None}
    return RunMetrics(
        run_id=run[0], run_name=run[1], status=run[2], experiment=run[3], params=params, summary=summary,
        steps=[rows[step] for step in sorted(rows)],
    )  # fmt: skip


def fetch(client: Any, run_id: str) -> RunMetrics:
    """The run's parameters, step-wise metrics (first value per step) and final values."""
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # mlflow's MlflowException: unknown run id
        raise UsageError(f"no MLflow run {run_id!r} in the tracking store ({exc})") from None
    experiment = None
    with contextlib.suppress(Exception):  # the name is only shown
        experiment = client.get_experiment(run.info.experiment_id).name
    rows: dict[int, dict[str, Any]] = {}
    for key, column in STEP_METRICS.items():
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        for metric in history:
            row = rows.setdefault(int(metric.step), {c: None for c in COLUMNS} | {"step": int(metric.step)})
            if row[column] is None:  # the final summary re-logs tokens_per_second at the last step
                row[column] = _finite(metric.value)
    summary = {
        key: value for key in SUMMARY_METRICS if (value := _finite(run.data.metrics.get(key))) is not None
    }
    return RunMetrics(
        run_id=run.info.run_id,
        run_name=run.info.run_name,
        status=run.info.status,
        experiment=experiment,
        params=dict(run.data.params),
        summary=summary,
        steps=[rows[step] for step in sorted(rows)],
    )


# --------------------------------------------------------------------------------------------------
# Showing them


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def describe_params(params: dict[str, str]) -> str:
    """The key training parameters in one line: `lr 0.002 (cosine) · batch 8 · 1 epoch · LoRA r=8 ...`."""
    parts = []
    if "learning_rate" in params:
        sched = params.get("lr_scheduler_type")
        parts.append(f"lr {params['learning_rate']}" + (f" ({sched})" if sched else ""))
    if "per_device_train_batch_size" in params:
        batch = params["per_device_train_batch_size"]
        accumulation = params.get("gradient_accumulation_steps", "1")
        parts.append(f"batch {batch}" + (f"x{accumulation}" if accumulation not in ("1", "null") else ""))
    if "num_train_epochs" in params:
        epochs = params["num_train_epochs"]
        parts.append(f"{epochs} epoch{'' if epochs in ('1', '1.0') else 's'}")
    if params.get("max_steps") not in (None, "-1", "null"):
        parts.append(f"max_steps {params['max_steps']}")
    if params.get("apply_lora") == "True":
        parts.append(f"LoRA r={params.get('lora_r')} alpha={params.get('lora_alpha')}")
    elif params.get("apply_lora") == "False":
        parts.append("full fine-tune")
    if "max_seq_length" in params:
        parts.append(f"seq {params['max_seq_length']}")
    return " · ".join(parts)


def render_table(metrics: RunMetrics) -> str:
    from ftctl.ui import table

    lines = [
        f"run {metrics.run_name or metrics.run_id} ({metrics.status or 'unknown'})",
        f"  MLflow run {metrics.run_id}"
        + (f" in experiment {metrics.experiment}" if metrics.experiment else "")
        + (f"; job {metrics.job_id}" if metrics.job_id else ""),
    ]
    params = describe_params(metrics.params)
    if params:
        lines.append(f"  {params}")
    lines.append("")
    if metrics.steps:
        rows = [
            [
                str(row["step"]),
                _fmt(row["epoch"], ".2f"),
                _fmt(row["train_loss"], ".4f"),
                _fmt(row["eval_loss"], ".4f"),
                _fmt(row["perplexity"], ".2f"),
                _fmt(row["learning_rate"], ".2e"),
                _fmt(row["tokens_per_second"], ",.0f"),
            ]
            for row in metrics.steps
        ]
        lines.append(table(rows, ["STEP", "EPOCH", "TRAIN LOSS", "EVAL LOSS", "PERPLEXITY", "LR", "TOK/S"]))
    else:
        lines.append("(no step metrics logged yet)")
    s = metrics.summary
    final = []
    if "train_loss" in s:
        final.append(f"train_loss {s['train_loss']:.4f}")
    if "eval_loss" in s:
        final.append(f"eval_loss {s['eval_loss']:.4f}")
    if "perplexity" in s:
        final.append(f"perplexity {s['perplexity']:.2f}")
    if "tokens_per_second" in s:
        final.append(f"{s['tokens_per_second']:,.0f} tok/s")
    if "train_tokens" in s and "train_runtime_s" in s:
        final.append(f"{s['train_tokens']:,.0f} tokens in {s['train_runtime_s']:.1f}s")
    if final:
        lines += ["", "final: " + ", ".join(final)]
    return "\n".join(lines)


def _smooth(values: tuple[float, ...], weight: float = 0.6) -> list[float]:
    """Exponential moving average, debiased so the first points are not pulled toward zero."""
    out, average = [], 0.0
    for i, value in enumerate(values, 1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def figure(metrics: RunMetrics) -> Any:
    """The loss-curve figure: train loss and eval loss against the step (each on its own axis, sharing
    the steps, since a small model's eval loss can sit far above its train loss), titled with the run's
    name and key parameters. A matplotlib Figure (no pyplot: nothing global, no display needed)."""
    from matplotlib.figure import Figure

    train = [(r["step"], r["train_loss"]) for r in metrics.steps if r["train_loss"] is not None]
    evals = [(r["step"], r["eval_loss"]) for r in metrics.steps if r["eval_loss"] is not None]
    if not train and not evals:
        raise StageFailed(f"run {metrics.run_id} has no loss metrics to plot yet")
    fig = Figure(figsize=(9, 6.5), dpi=110, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    for ax, points, label, color, marker in (
        (top, train, "train loss", "tab:blue", "o"),
        (bottom, evals, "eval loss", "tab:orange", "s"),
    ):
        if points:
            xs, ys = zip(*points, strict=True)
            if ax is top and len(ys) >= 4:
                # Each logged train loss is a few batches of different conversations: noisy. Draw the
                # points faintly and their exponential moving average (as TensorBoard does) on top.
                ax.plot(
                    xs, ys, color=color, marker=marker, markersize=3, linewidth=0.8, alpha=0.35, label=label
                )
                ax.plot(xs, _smooth(ys), color=color, linewidth=2.2, label=f"{label} (smoothed)")
            else:
                ax.plot(xs, ys, color=color, marker=marker, markersize=4, linewidth=1.8, label=label)
            ax.annotate(
                f"{ys[-1]:.4f}",
                (xs[-1], ys[-1]),
                textcoords="offset points",
                xytext=(-4, 8),
                ha="right",
                fontsize=8,
                color=color,
            )
        else:
            ax.text(0.5, 0.5, f"no {label} logged", transform=ax.transAxes, ha="center", color="grey")
        ax.set_ylabel(f"{label}\n(cross-entropy)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper right")
    bottom.set_xlabel("training step")
    top.set_xlim(left=0)
    subtitle = describe_params(metrics.params)
    final = metrics.summary
    if "eval_loss" in final and "perplexity" in final:
        subtitle += f"\nfinal eval loss {final['eval_loss']:.4f} (perplexity {final['perplexity']:.2f})"
    fig.suptitle(f"{metrics.run_name or metrics.run_id}\n{subtitle}", fontsize=10)
    return fig


def plot(metrics: RunMetrics, path: Path) -> Path:
    """Write `figure(metrics)` as a PNG."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UsageError(f"--plot {path}: the folder {path.parent} does not exist")
    figure(metrics).savefig(path, format="png")
    return path
