"""prepare-data on Azure ML: the same local step (the notebook runs download-dataset.py on the client too);
submit uploads the files it wrote as the pipeline's uri_file inputs."""

from __future__ import annotations

from ftctl.stages.prepare_data import inputs, run, summary

__all__ = ["inputs", "run", "summary"]
