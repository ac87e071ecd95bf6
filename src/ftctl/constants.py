"""Names shared by modules that should not import each other (the config and the data layer)."""

from __future__ import annotations

# The ultrachat_200k-format sample shipped with ftctl: the default `data.dataset`.
SAMPLE_DATASET = "ftctl:ultrachat-sample"

# The most bytes the local endpoint takes in one request body (it answers 413 above); `ftctl score
# --file` and `ftctl chat` refuse larger requests before sending them.
MAX_BODY_BYTES = 8 * 1024 * 1024
