"""Record what the commands of SAME_SCRIPT print with --json on the local backend, for
test_azureml_results.py::test_same_script_same_json_keys_on_both_backends (running the local pipeline
there would train and serve a model in every test run).

    PYTHONPATH=src python tests/azureml/record_local_outputs.py

runs `ftctl run --to deploy` on the local quickstart in a temporary folder, then each command of the
script, then `ftctl teardown`, and writes tests/azureml/data/local_outputs.json: per command, the JSON it
printed with the key (primary_key) and machine-specific values replaced.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "data" / "local_outputs.json"
# (name, argv after `ftctl --json`, stdin): the same list the test runs on --backend azureml.
SAME_SCRIPT: list[tuple[str, list[str], str]] = [
    ("credentials", ["credentials"], ""),
    ("metrics", ["metrics"], ""),
    ("score_file", ["score", "--file", "-"], '[{"role": "user", "content": "Capital of France?"}]'),
]


def _ftctl(workspace: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTCTL_", "AZURE"))}
    env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "ftctl", "--workspace", str(workspace), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if done.returncode != 0:
        raise SystemExit(f"ftctl {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("<secret>" if k == "primary_key" else _scrub(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp) / ".ftctl"
        _ftctl(workspace, "run", "--to", "deploy")
        try:
            outputs = {
                name: _scrub(json.loads(_ftctl(workspace, "--json", *argv, stdin=stdin).stdout))
                for name, argv, stdin in SAME_SCRIPT
            }
        finally:
            _ftctl(workspace, "teardown")
    import ftctl

    OUT.write_text(
        json.dumps({"ftctl_version": ftctl.__version__, "outputs": outputs}, indent=2, sort_keys=True) + "\n"
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
