"""Names shared by modules that should not import each other (the config and the data layer)."""

from __future__ import annotations

# The ultrachat_200k-format sample shipped with ftctl: the default `data.dataset`.
SAMPLE_DATASET = "ftctl:ultrachat-sample"
