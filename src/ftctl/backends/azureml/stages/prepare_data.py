"""prepare-data on Azure ML: the same local step (the notebook runs download-dataset.py on the client too);
submit uploads the files it wrote as the pipeline's uri_file inputs. A dry run writes nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftctl.backends.azureml import dry_run
from ftctl.stages.contract import always_alive as alive
from ftctl.stages.contract import nothing_to_retire as retire
from ftctl.stages.shared import prepare_inputs as inputs
from ftctl.stages.shared import prepare_output_files as output_files
from ftctl.stages.shared import prepare_run
from ftctl.stages.shared import prepare_summary as summary

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import Outputs, StageCall


def run(ctx: Context, call: StageCall) -> Outputs:
    if call.options.dry_run:
        return dry_run.prepare_data(ctx)
    return prepare_run(ctx, call)


__all__ = ["alive", "inputs", "output_files", "retire", "run", "summary"]
