"""prepare-data on Azure ML: the same local step (the notebook runs download-dataset.py on the client too);
submit uploads the files it wrote as the pipeline's uri_file inputs."""

from __future__ import annotations

from ftctl.stages.contract import always_alive as alive
from ftctl.stages.contract import nothing_to_retire as retire
from ftctl.stages.shared import prepare_inputs as inputs
from ftctl.stages.shared import prepare_output_files as output_files
from ftctl.stages.shared import prepare_run as run
from ftctl.stages.shared import prepare_summary as summary

__all__ = ["alive", "inputs", "output_files", "retire", "run", "summary"]
