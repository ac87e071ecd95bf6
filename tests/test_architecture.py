"""The shape of the package, checked: which module may import which, and what `--help`/`status` load.

Import directions (walked with `ast`, so a lazy import inside a function counts too):
- a backend-neutral module (anything outside a backend's package ftctl.backends.<name>; the registry
  ftctl.backends and the base class ftctl.backends.base are neutral) imports no backend, with no
  exemption: the Context builds its backend through the registry, by name;
- one backend never imports the other;
- stage code (ftctl.stages.*, ftctl.backends.<name>.stages.*) imports neither the runner nor the CLI;
- nothing but the CLI (and `python -m ftctl`) imports the CLI.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from harness import Ftctl

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ftctl"

# Everything that makes `ftctl --help` slow when imported: ML frameworks, SDKs, servers, plotting.
HEAVY = (
    "torch", "transformers", "peft", "accelerate", "deepspeed", "mlflow", "datasets", "huggingface_hub",
    "azure", "azureml", "fastapi", "uvicorn", "starlette", "pandas", "pyarrow", "numpy", "matplotlib",
    "openai", "orjson", "sqlalchemy", "safetensors", "tokenizers",
)  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every ftctl module `path` imports, at the top or inside a function (TYPE_CHECKING ones too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "ftctl" or name.startswith("ftctl.")}


BACKEND_PACKAGES = {path.name for path in (PACKAGE / "backends").iterdir() if (path / "__init__.py").exists()}


def backend_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) > 2 and parts[1] == "backends" and parts[2] in BACKEND_PACKAGES:
        return parts[2]
    return None


def wrong_way(importer: str, imported: str) -> str | None:
    """Why `importer` must not import `imported` (None when it may)."""
    mine, theirs = backend_of(importer), backend_of(imported)
    if theirs and mine is None:
        return "a backend-neutral module imports a backend"
    if theirs and mine and theirs != mine:
        return "one backend imports the other"
    is_stage = importer.startswith("ftctl.stages") or ".stages" in importer.removeprefix("ftctl.stages")
    if is_stage and (imported == "ftctl.pipeline" or imported.startswith("ftctl.cli")):
        return "stage code imports the runner or the CLI"
    entry = importer == "ftctl.__main__"  # `python -m ftctl`
    if imported.startswith("ftctl.cli") and not importer.startswith("ftctl.cli") and not entry:
        return "only the CLI imports the CLI"
    return None


def test_rules_catch_each_wrong_way_import() -> None:
    assert wrong_way("ftctl.stages.shared", "ftctl.backends.local.jobs")
    assert wrong_way("ftctl.metrics", "ftctl.backends.local.jobs")
    assert wrong_way("ftctl.backends.azureml.stages.score", "ftctl.backends.local.stages.score")
    assert wrong_way("ftctl.backends.local.stages.submit", "ftctl.pipeline")
    assert wrong_way("ftctl.stages.contract", "ftctl.cli.common")
    assert wrong_way("ftctl.pipeline", "ftctl.cli.common")
    assert wrong_way("ftctl.context", "ftctl.backends.local.workspace")
    assert wrong_way("ftctl.context", "ftctl.backends.base") is None
    assert wrong_way("ftctl.config", "ftctl.backends.NAMES") is None
    assert wrong_way("ftctl.backends.local.stages.submit", "ftctl.stages.shared") is None
    assert wrong_way("ftctl.cli.common", "ftctl.pipeline") is None


def test_no_module_imports_the_wrong_way() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        for imported in sorted(imports_of(path)):
            why = wrong_way(importer, imported)
            if why:
                problems.append(f"{importer} imports {imported}: {why}")
    assert not problems, "\n".join(problems)


def test_every_backend_is_one_registered_class_with_every_stage() -> None:
    from ftctl.backends import NAMES, backend_class
    from ftctl.backends.base import Backend
    from ftctl.pipeline import ORDER

    assert set(NAMES) == BACKEND_PACKAGES  # the registry is the only list, and it lists them all
    for name in NAMES:
        cls = backend_class(name)
        assert issubclass(cls, Backend) and cls.name == name
        backend = cls(ctx=None)  # type: ignore[arg-type]  # the table needs no context
        assert list(backend.stages) == ORDER
        assert set(cls.reads) <= set(ORDER)
        for stage, impl in backend.stages.items():
            for member in ("run", "inputs", "output_files", "alive", "retire", "summary"):
                assert callable(getattr(impl, member, None)), f"{name} {stage} lacks {member}"


def test_a_declared_capability_needs_its_method_and_a_method_its_capability() -> None:
    from ftctl.backends.base import Backend, Capabilities

    with pytest.raises(TypeError, match="capability metrics is True but its method is not overridden"):
        type("Claims", (Backend,), {"name": "x", "capabilities": Capabilities(metrics=True)})
    with pytest.raises(TypeError, match="capability logs is False but its method is overridden"):
        type("Hides", (Backend,), {"name": "y", "logs": lambda self, *a: {}})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, prepared_ws: Ftctl) -> Path:
    """A workspace with a state file, so `status` reads and evaluates real records (a copy of the
    session's prepared one)."""
    return Ftctl(tmp_path_factory.mktemp("guard")).load(prepared_ws).workspace


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["status"],
        ["status", "--json"],
        ["submit", "--help"],
        ["metrics", "--help"],
        ["chat", "--help"],
        ["credentials", "--help"],
        ["--backend", "azureml", "--help"],
    ],
)
def test_help_and_status_import_nothing_heavy(workspace: Path, args: list[str]) -> None:
    done, imported = Ftctl(workspace.parent).imports(*args, of=HEAVY)
    assert not imported, done.stdout[-2000:]


def test_the_liveness_probe_imports_no_http_client() -> None:
    """`ftctl status` asks whether a recorded endpoint's port is open (probe.port_is_open); urllib.request
    and http.client (with ssl and email) cost ~45 ms of its ~300 and are imported only to poll an endpoint
    that starts (deploy) or to check a key."""
    code = (
        "import sys; from ftctl.backends.local.serving import probe; "
        "print(sorted(m for m in ('urllib.request', 'http.client', 'ssl') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
