"""What prepare-data leaves in the download folder when the folder or the run is hostile.

- The output <download_dir>/<split>.jsonl is never written through a symlink: an existing link (to a
  file, a folder, or nowhere) is replaced by a regular file and its target is untouched. Temp files are
  created with O_EXCL|O_NOFOLLOW, so a link planted at a temp file's name is never followed either.
  Inputs may be symlinks pointing anywhere (reading them is fine).
- Interrupted (KeyboardInterrupt while reading, writing or committing; SIGINT to the process; a worker
  pool interrupted), or failing to read or write: no partial <split>.jsonl, no temp file, earlier output
  untouched; the files of one run are committed all or none.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import ftctl.data.prepare as prepare_module
import ftctl.data.writer as writer_module
from ftctl.data.prepare import SAMPLE_DATASET, PrepareOptions, prepare
from ftctl.errors import DataError


def record(i: int) -> dict[str, Any]:
    return {
        "prompt_id": str(i),
        "messages": [{"role": "user", "content": f"q{i}?"}, {"role": "assistant", "content": f"a{i}."}],
    }


def jsonl(rows: range) -> bytes:
    return b"".join(json.dumps(record(i)).encode() + b"\n" for i in rows)


def ids(path: Path) -> list[int]:
    return [int(json.loads(text)["prompt_id"]) for text in path.read_bytes().splitlines()]


def source(tmp_path: Path, train: int = 12, test: int = 3) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "train_sft.jsonl").write_bytes(jsonl(range(train)))
    (folder / "test_sft.jsonl").write_bytes(jsonl(range(100, 100 + test)))
    return folder


def earlier_output(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "train_sft.jsonl").write_bytes(b"old train\n")
    (out / "test_sft.jsonl").write_bytes(b"old test\n")
    return out


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """name -> bytes of a regular file, or "link -> target" / "dir" (nothing followed)."""
    found: dict[str, bytes | str] = {}
    for path in sorted(folder.iterdir()):
        if path.is_symlink():
            found[path.name] = f"link -> {os.readlink(path)}"
        elif path.is_dir():
            found[path.name] = "dir"
        else:
            found[path.name] = path.read_bytes()
    return found


def assert_untouched(out: Path) -> None:
    assert snapshot(out) == {"test_sft.jsonl": b"old test\n", "train_sft.jsonl": b"old train\n"}


# --- symlinks -------------------------------------------------------------------------------------------


def test_input_split_may_be_a_symlink_pointing_outside(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "real.jsonl").write_bytes(jsonl(range(12)))
    src = tmp_path / "src"
    src.mkdir()
    (src / "train_sft.jsonl").symlink_to(elsewhere / "real.jsonl")
    report = prepare(str(src), tmp_path / "out")
    assert report.split("train_sft").rows_written == 12
    assert (elsewhere / "real.jsonl").read_bytes() == jsonl(range(12))


@pytest.mark.parametrize("kind", ["file", "dangling", "folder", "the-input-file"])
def test_output_symlink_is_replaced_never_written_through(tmp_path: Path, kind: str) -> None:
    src = source(tmp_path)
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    (victim_dir / "precious.jsonl").write_bytes(b"do not touch\n")
    target = {
        "file": victim_dir / "precious.jsonl",
        "dangling": victim_dir / "missing.jsonl",
        "folder": victim_dir,
        "the-input-file": src / "train_sft.jsonl",
    }[kind]
    out = tmp_path / "out"
    out.mkdir()
    (out / "train_sft.jsonl").symlink_to(target)
    before = {p.name: p.read_bytes() for p in [*victim_dir.iterdir(), *src.iterdir()]}

    # A failed run leaves the link alone ...
    with pytest.raises(DataError):
        prepare(str(src), out, PrepareOptions(min_train_rows=13))
    assert os.readlink(out / "train_sft.jsonl") == str(target)
    # ... a successful one replaces it with a regular file.
    prepare(str(src), out)
    written = out / "train_sft.jsonl"
    assert not written.is_symlink() and written.is_file()
    assert ids(written) == list(range(12))
    assert {p.name: p.read_bytes() for p in [*victim_dir.iterdir(), *src.iterdir()]} == before
    assert sorted(snapshot(out)) == ["test_sft.jsonl", "train_sft.jsonl"]


def test_temp_file_never_follows_a_planted_symlink(tmp_path: Path, monkeypatch) -> None:
    """A link planted at the temp file's name is neither followed nor removed; another name is used."""
    src = source(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.jsonl"
    victim.write_bytes(b"do not touch\n")
    planted = [out / f".{split}.jsonl.{os.getpid()}.deadbeef.tmp" for split in ("test_sft", "train_sft")]
    for link in planted:
        link.symlink_to(victim)
    calls = [0]

    def token_hex(n: int) -> str:  # every other name is taken by a planted link
        calls[0] += 1
        return "deadbeef" if calls[0] % 2 else f"{calls[0]:08x}"

    monkeypatch.setattr(writer_module.secrets, "token_hex", token_hex)
    flags: list[int] = []
    real_open = os.open

    def spy(path: Any, mode: int, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(".tmp"):
            flags.append(mode)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    prepare(str(src), out)
    assert victim.read_bytes() == b"do not touch\n"
    assert [os.readlink(link) for link in planted] == [str(victim)] * 2
    assert sorted(snapshot(out)) == sorted(
        [*(link.name for link in planted), "test_sft.jsonl", "train_sft.jsonl"]
    )
    assert len(flags) == 4 and all(f & os.O_EXCL and f & os.O_NOFOLLOW and f & os.O_CREAT for f in flags)


# --- targets that cannot be replaced, read and write errors ------------------------------------------------


def test_output_path_that_is_a_folder_fails_before_anything_is_replaced(tmp_path: Path) -> None:
    src = source(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "test_sft.jsonl").write_bytes(b"old test\n")  # test_sft is committed first (file-name order)
    (out / "train_sft.jsonl").mkdir()
    (out / "train_sft.jsonl" / "inside").write_bytes(b"x")
    with pytest.raises(DataError) as info:
        prepare(str(src), out)
    assert str(out / "train_sft.jsonl") in info.value.message and "folder" in info.value.message
    assert snapshot(out) == {"test_sft.jsonl": b"old test\n", "train_sft.jsonl": "dir"}
    assert (out / "train_sft.jsonl" / "inside").read_bytes() == b"x"


def test_write_error_is_a_data_error_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    src = source(tmp_path)
    out = earlier_output(tmp_path)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DataError) as info:
        prepare(str(src), out)
    assert str(out) in info.value.message and "No space left on device" in info.value.message
    assert_untouched(out)


def test_unwritable_download_folder_is_a_data_error(tmp_path: Path, monkeypatch) -> None:
    src = source(tmp_path)
    out = earlier_output(tmp_path)
    real_open = os.open

    def denied(path: Any, mode: int, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(".tmp"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(DataError, match="Permission denied") as info:
        prepare(str(src), out)
    assert str(out) in info.value.message
    assert_untouched(out)


def test_read_error_is_a_data_error_naming_the_file(tmp_path: Path, monkeypatch) -> None:
    src = source(tmp_path)
    out = earlier_output(tmp_path)
    real_open = Path.open

    def unreadable(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.name == "train_sft.jsonl" and self.parent == src:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", unreadable)
    with pytest.raises(DataError, match="Permission denied") as info:
        prepare(str(src), out)
    assert str(src / "train_sft.jsonl") in info.value.message
    assert_untouched(out)


# --- interrupts ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("at_row", [1, 3, 14])  # in test_sft (first), at its end, in train_sft
def test_keyboard_interrupt_while_writing_leaves_nothing(tmp_path: Path, monkeypatch, at_row: int) -> None:
    src = source(tmp_path)
    out = earlier_output(tmp_path)
    real_check, calls = writer_module.check_record, [0]

    def check(record: Any) -> str | None:
        calls[0] += 1
        if calls[0] == at_row:
            raise KeyboardInterrupt
        return real_check(record)

    monkeypatch.setattr(writer_module, "check_record", check)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(src), out)
    assert_untouched(out)


def test_sigint_while_committing_commits_every_split_or_none(tmp_path: Path, monkeypatch) -> None:
    """SIGINT between the os.replace of two splits: the interrupt waits until both files are in place."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not handled by Python's default handler here")
    src = source(tmp_path)
    out = earlier_output(tmp_path)
    real_replace, calls = os.replace, [0]

    def replace(a: Any, b: Any, **kwargs: Any) -> None:
        calls[0] += 1
        real_replace(a, b, **kwargs)
        if calls[0] == 1:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the signal is delivered before the next split is committed

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(src), out)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert sorted(snapshot(out)) == ["test_sft.jsonl", "train_sft.jsonl"]
    assert ids(out / "test_sft.jsonl") == list(range(100, 103))
    assert ids(out / "train_sft.jsonl") == list(range(12))


@pytest.mark.parametrize(
    "when", ["after-the-workers-finished", "while-the-workers-write", "in-progress-output"]
)
def test_keyboard_interrupt_in_the_parallel_writer_leaves_nothing(
    tmp_path: Path, monkeypatch, when: str
) -> None:
    import concurrent.futures

    monkeypatch.setattr(prepare_module, "PARALLEL_MIN_ROWS", 10)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    out = tmp_path / "out"
    out.mkdir()
    real_wait = concurrent.futures.wait

    def interrupted(futures: Any, timeout: float | None = None, return_when: str = "ALL_COMPLETED") -> Any:
        if when == "in-progress-output":
            return real_wait(futures, timeout, return_when)
        if when == "after-the-workers-finished":
            real_wait(futures)
        else:
            deadline = time.monotonic() + 30
            while not list(out.glob(".*.tmp")) and time.monotonic() < deadline:
                time.sleep(0.005)
        raise KeyboardInterrupt

    monkeypatch.setattr(concurrent.futures, "wait", interrupted)

    def progress(line: str) -> None:  # Ctrl-C while the first finished split is reported
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(SAMPLE_DATASET, out, progress=progress)
    assert snapshot(out) == {}


SLOW_RECORDS = """
import sys, time
import ftctl.data.writer as writer
real = writer.check_record
def slow(record):
    time.sleep(0.005)
    return real(record)
writer.check_record = slow
"""


def _signalled_while_writing(
    then: str, out: Path, signum: int, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Python code `then` run after SLOW_RECORDS (5 ms a record) in a child process that gets `signum` once
    it writes a temp file into `out`: its exit code and stderr."""
    script = SLOW_RECORDS + textwrap.dedent(then)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob(".*.jsonl.*.tmp")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        time.sleep(0.2)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr.decode())


def test_sigint_to_a_running_prepare_leaves_nothing(tmp_path: Path) -> None:
    """A real SIGINT (Ctrl-C) to a prepare-data process while it writes: exit, and no file left behind."""
    src = source(tmp_path, train=400)
    out = earlier_output(tmp_path)
    then = f"""
import ftctl.data.prepare as module
try:
    module.prepare({str(src)!r}, module.Path({str(out)!r}))
except KeyboardInterrupt:
    sys.exit(130)
sys.exit(0)
"""
    done = _signalled_while_writing(then, out, signal.SIGINT)
    assert done.returncode == 130, done.stderr
    assert_untouched(out)


def test_sigterm_to_prepare_data_cleans_up_as_ctrl_c_does(tmp_path: Path) -> None:
    """`kill PID` (SIGTERM, what a service manager, `timeout` or a CI runner sends) to `ftctl prepare-data`
    while it writes: exit 143 with one word, no temp file and the workspace lock free, as after a Ctrl-C.
    Before the fix the process died where it stood (-15, no message), its temp file and lock left behind."""
    from ftctl.state import lock_is_free

    ws = tmp_path / "ws"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTCTL_")}
    ready = subprocess.run([sys.executable, "-m", "ftctl", "-w", str(ws), "run", "--to", "check-compute"],
                           capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert ready.returncode == 0, ready.stderr
    src = source(tmp_path, train=400)
    then = f"""
sys.argv = ["ftctl", "-w", {str(ws)!r}, "prepare-data", "--force", "--dataset", {str(src)!r}]
from ftctl.cli import main
main()
"""
    done = _signalled_while_writing(then, ws / "data", signal.SIGTERM, env)
    assert done.returncode == 143, done.stderr
    assert "terminated" in done.stderr and "Traceback" not in done.stderr, done.stderr
    time.sleep(0.5)  # a helper ends once it sees its parent gone
    assert not [p.name for p in (ws / "data").glob(".*.tmp")], "temp files left"
    assert lock_is_free(ws)


def _helper_writing(proc: subprocess.Popen[bytes], out: Path) -> int:
    """The pid of a helper of `proc` once it writes a temp file into `out` (its name holds the pid)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        pids = {int(p.name.split(".")[3]) for p in out.glob(".*.jsonl.*.tmp")}
        helper = next(iter(pids - {proc.pid}), None)
        if helper is not None:
            return helper
        time.sleep(0.01)
    raise AssertionError("no helper wrote a temp file")


def _hub_layout(root: Path, splits: dict[str, range]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "data").mkdir(parents=True)
    for split, rows in splits.items():
        table = pa.Table.from_pylist([record(i) for i in rows])
        pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def test_a_killed_prepare_leaves_no_helper_process_behind(tmp_path: Path) -> None:
    """Found by killing `ftctl prepare-data` (SIGKILL) on a 10 % ultrachat: the helper process that
    wrote a share of the splits outlived it, idle, forever; its temp files, those of a live process,
    were never cleaned up. A helper now ends when the process that started it does."""
    src = _hub_layout(tmp_path / "src", {"train_sft": range(2000), "test_sft": range(5000, 5300)})
    out = tmp_path / "out"
    out.mkdir()
    script = textwrap.dedent(
        f"""
        import time
        import ftctl.data.prepare as module
        import ftctl.data.writer as writer
        module.PARALLEL_MIN_ROWS, module.HELPER_START_ROWS = 10, 0  # test_sft goes to a helper
        real = writer.check_record
        def slow(record):  # this process's split (train_sft) is written slowly; the helper's is not
            time.sleep(0.002)
            return real(record)
        writer.check_record = slow
        module.prepare({str(src)!r}, module.Path({str(out)!r}))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        helper = _helper_writing(proc, out)
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    from ftctl.state import pid_alive

    deadline = time.monotonic() + 15
    while pid_alive(helper) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = pid_alive(helper)
    if alive:
        os.kill(helper, signal.SIGKILL)
    assert not alive, "the helper outlived the prepare that started it"
    report = prepare(str(src), out)  # the next run removes what the dead ones left
    assert {s.name: s.rows_written for s in report.splits} == {"train_sft": 2000, "test_sft": 300}
    assert sorted(p.name for p in out.iterdir()) == ["test_sft.jsonl", "train_sft.jsonl"]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_helper_killed_midway_is_a_clear_failure_that_leaves_nothing(tmp_path: Path, method: str) -> None:
    """Found by SIGKILLing the helper of a full-size prepare-data (as the kernel's OOM killer would):
    "unexpected BrokenProcessPool: A process in the process pool was terminated abruptly...". It is now
    a failure that says which splits the helper was writing; no temp file is left, none of the old
    outputs is touched."""
    src = _hub_layout(tmp_path / "src", {"train_sft": range(2000), "test_sft": range(5000, 5300)})
    out = tmp_path / "out"
    out.mkdir()
    (out / "train_sft.jsonl").write_text("old train\n")
    script = textwrap.dedent(
        f"""
        import time
        import ftctl.data.prepare as module
        import ftctl.data.writer as writer
        from ftctl.errors import FtctlError
        module.PARALLEL_MIN_ROWS = 10
        module._helper_start = lambda: ({method!r}, 0)  # test_sft goes to the helper
        real = writer.check_record
        def slow(record):  # both processes write slowly: the helper is killed while it writes
            time.sleep(0.002)
            return real(record)
        writer.check_record = slow
        try:
            module.prepare({str(src)!r}, module.Path({str(out)!r}))
        except FtctlError as exc:
            print(type(exc).__name__, exc.exit_code, exc.message, "|", exc.hint)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        os.kill(_helper_writing(proc, out), signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    said = stdout.decode()
    assert said.startswith("StageFailed 1 "), (said, stderr.decode()[-2000:])
    assert "test_sft" in said and "ended abruptly" in said and "BrokenProcessPool" not in said
    assert sorted(p.name for p in out.iterdir()) == ["train_sft.jsonl"]
    assert (out / "train_sft.jsonl").read_text() == "old train\n"
