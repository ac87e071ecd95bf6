"""Documentation: every command's --help has examples, docs/cli.md is generated and up to date, the README
documents every command and its commands run, and shell completion works."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer.main

from ftctl.cli.app import app
from ftctl.cli.examples import EXAMPLES

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
COMMANDS = list(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
OPERATORS = {"|", "||", "&&", ";", "<", ">", ">>", "&", "<<"}


def _generator():
    spec = importlib.util.spec_from_file_location("generate_cli_md", ROOT / "docs" / "generate_cli_md.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ftctl_invocations(script: str) -> list[list[str]]:
    """The argument lists of every `ftctl ...` in a shell snippet (pipes, redirections and heredoc
    bodies left out)."""
    found = []
    heredoc_end = None
    for line in script.splitlines():
        if heredoc_end is not None:
            if line.strip() == heredoc_end:
                heredoc_end = None
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
        if "<<" in tokens:
            heredoc_end = tokens[tokens.index("<<") + 1]
        command: list[str] | None = None
        for token in [*tokens, ";"]:
            if token in OPERATORS or set(token) <= set("|&;<>"):
                if command is not None:
                    if command and command[-1].isdigit() and token.startswith(">"):
                        command.pop()  # 2> file
                    found.append(command)
                command = None
            elif command is not None:
                command.append(token)
            elif token == "ftctl":
                command = []
    return found


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.DOTALL)


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def _parses(ftctl, args: list[str]) -> None:
    """The command and its options exist (`--help` after them: nothing runs)."""
    result = ftctl(*args, "--help", code=None)
    assert result.exit_code == 0, (
        f"`ftctl {shlex.join(args)}` does not parse: {result.stderr or result.stdout}"
    )


def test_invocation_parser() -> None:
    script = textwrap.dedent(
        """\
        ftctl run --to register   # train
        printf 'a\\nb\\n' | ftctl chat --json < q.txt
        ftctl submit 2> train.log && ftctl status
        cat > r.json <<'EOF'
        ftctl not-a-command
        EOF
        """
    )
    assert ftctl_invocations(script) == [
        ["run", "--to", "register"],
        ["chat", "--json"],
        ["submit"],
        ["status"],
    ]


def test_cli_reference_is_up_to_date() -> None:
    generated = _generator().render()
    current = (ROOT / "docs" / "cli.md").read_text()
    assert current == generated, "docs/cli.md is out of date: run `python docs/generate_cli_md.py`"
    for name in COMMANDS:
        assert f"\n## ftctl {name}\n" in current


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_with_examples_that_parse(ftctl, name: str) -> None:
    result = ftctl(name, "--help")
    assert "Usage: ftctl " in result.stdout and "Examples:" in result.stdout
    assert name in EXAMPLES, f"ftctl.cli.examples has no examples for {name}"
    invocations = [inv for example, _ in EXAMPLES[name] for inv in ftctl_invocations(example)]
    assert invocations and all(name in inv for inv in invocations), EXAMPLES[name]
    for args in invocations:
        _parses(ftctl, args)


def test_readme_documents_every_command_and_its_commands_parse(ftctl) -> None:
    for name in COMMANDS:
        assert f"ftctl {name}" in README, f"README does not show `ftctl {name}`"
    invocations = [inv for block in bash_blocks(README) for inv in ftctl_invocations(block)]
    assert len(invocations) >= 15  # the parser finds them
    for args in invocations:
        _parses(ftctl, args)


def test_readme_metrics_commands_run(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    block = bash_blocks(section("Watching training: progress and metrics"))[0]
    outputs = [trained(*args).stdout for args in ftctl_invocations(block)]
    assert len(outputs) == 3
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "\nSTEP " in outputs[0] and "\nSTEP " in outputs[1] and '"steps": [' in outputs[2]


def test_readme_endpoint_commands_run(deployed, tmp_path: Path) -> None:
    block = bash_blocks(section("Talking to the fine-tuned model"))[0]
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        capture_output=True, text=True, env=deployed.env(), cwd=tmp_path, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"primary_key      {deployed.key()}" in done.stdout
    assert done.stdout.count("assistant> ") == 2
    assert "\noutput: " in done.stdout
    assert "- deploy: up to date" in done.stderr


def test_shell_completion(trained) -> None:
    env = {**trained.env(), "_FTCTL_COMPLETE": "complete_bash", "COMP_WORDS": "ftctl met", "COMP_CWORD": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "ftctl"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.stdout.split() == ["metrics"], done.stdout + done.stderr
    env.update(COMP_WORDS="ftctl chat --te", COMP_CWORD="2")
    done = subprocess.run(
        [sys.executable, "-m", "ftctl"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.stdout.split() == ["--temperature"]
    shown = subprocess.run(
        [sys.executable, "-m", "ftctl", "--show-completion", "bash"],
        capture_output=True, text=True, timeout=60,
        # Typer finds the shell from the process tree, which a test run started by no shell (CI, a
        # pytest-xdist worker) lacks: its switch to read $SHELL instead.
        env={**trained.env(), "SHELL": "/bin/bash", "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"},
    )  # fmt: skip
    assert "_FTCTL_COMPLETE=complete_bash" in shown.stdout and "complete " in shown.stdout
