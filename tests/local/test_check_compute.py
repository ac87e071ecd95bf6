"""check-compute's device detection: torch is imported only where a GPU could be found."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ftctl.backends.local.stages import check_compute

DETECT = (
    "import json, sys\n"
    "from ftctl.backends.local.stages.check_compute import detect\n"
    "found = detect()\n"
    "print(json.dumps({'found': found, 'torch_imported': 'torch' in sys.modules}))\n"
)


@pytest.mark.skipif(not check_compute.no_gpu_possible(), reason="this machine has GPU device nodes")
def test_a_machine_without_gpu_device_nodes_is_told_without_importing_torch() -> None:
    import torch

    done = subprocess.run([sys.executable, "-c", DETECT], capture_output=True, text=True, check=True)
    answer = json.loads(done.stdout)
    assert answer["torch_imported"] is False
    assert answer["found"]["gpus"] == [] and answer["found"]["torch_version"] == torch.__version__
    assert answer["found"]["cpu_cores"] >= 1 and answer["found"]["ram_gib"] > 0


def test_a_gpu_device_node_means_torch_is_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    node = tmp_path / "nvidiactl"
    node.touch()
    monkeypatch.setattr(check_compute, "GPU_DEVICE_NODES", (str(node),))
    assert not check_compute.no_gpu_possible()
    found = check_compute.detect()
    assert found["torch_version"] == torch.__version__
    assert len(found["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
