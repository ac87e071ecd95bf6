"""A warm process: torch, transformers, peft and MLflow imported once, then forked for each trainer,
endpoint server and calibration that asks, so none of them pays the ~9 CPU-seconds of imports again.

`ftctl run` starts one at its beginning (the imports then overlap auth, pick-model and prepare-data) and
puts its address in FTCTL_WARM for the processes it starts; any ftctl process that finds FTCTL_WARM set
asks it first. Without it, or when it cannot serve a request, the process starts cold as before
(`python -m MODULE ...`): the warm process is only ever a shortcut, never a requirement.

A forked process is the process `python -m MODULE ARGS` would have been, as far as ftctl and the user
can see: the same module run as __main__ with the same arguments, working folder, environment and open
files (stdin/stdout/stderr and any passed descriptor, at the same numbers), in a session of its own. Its
command line (/proc/PID/cmdline, `ps`) reads `python -m MODULE ARGS`: the warm process is started with
room reserved in its own arguments, and a child writes its command line there before its pid is handed
out, so the identity ftctl records (procs.identity) is the one it keeps for life.

What it will not do, so that a forked process never differs from a cold one:
- serve a module it has not imported (SERVED), or another interpreter;
- serve an environment that differs from its own in a variable its imports read (recorded while they
  ran: HF_HUB_OFFLINE, ...) or that C libraries read as they load (OMP_NUM_THREADS, ...): those imports
  are done, with its values;
- serve another user (the peer's uid is checked on every connection; the address is abstract, so no
  file is written for it).

Lifetime: a *tied* child (a trainer, asked for by its job's supervisor; a calibration) is sent SIGTERM
when the connection to the process that asked for it closes, and gets SIGTERM from the kernel when the
warm process ends (PR_SET_PDEATHSIG): the cold trainer's tie to its supervisor. Endpoint servers are not
tied and outlive it. The warm process exits once it has no tied child left and its owner has ended (at
once, if that happens while it still imports), or it has been idle for `--idle` seconds, or on SIGTERM.

Protocol (one SOCK_SEQPACKET connection per process): the client sends one JSON request with its
descriptors attached (SCM_RIGHTS); the answer is {"pid": N} or {"refused": reason}; a tied child's exit
follows as {"exit": code} (negative: the signal that ended it, as subprocess reports it).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ftctl import exiting
from ftctl.backends.local import procs
from ftctl.state import open_log

ENV = "FTCTL_WARM"
OFF = "off"  # FTCTL_WARM=off: no warm process, everything starts cold
MODULE = "ftctl.backends.local.warm"
SERVED = (
    "ftctl.backends.local.trainer",
    "ftctl.backends.local.server",
    "ftctl.backends.local.calibrate",
)
# Which environment variables must be the same in a request as in the warm process: those its imports
# read (recorded while they run: ~500, from HF_HUB_OFFLINE to TORCHINDUCTOR_*), and those C libraries and
# the interpreter read when they load, which no Python code sees (NATIVE_PREFIXES). Any other variable
# was read by nothing the warm process did, and the child gets the requester's value of it as a cold
# process would, as it gets every other. FTCTL_* and MLflow's store variables are read at run time only.
NATIVE_PREFIXES = (
    "OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "GOTO", "BLIS_", "VECLIB_", "NUMEXPR_", "ONEDNN_",
    "DNNL_", "CUDA", "CUBLAS", "CUDNN", "NCCL_", "NVIDIA_", "HIP_", "ROCM", "HSA_", "TORCH", "PYTORCH_",
    "TOKENIZERS_", "RAYON_", "LD_", "MALLOC_", "GLIBC_", "LANG", "LC_", "TZ", "PYTHON", "HOME", "TMP",
)  # fmt: skip
_FREE_PREFIX = "FTCTL_"
_FREE_NAMES = frozenset(
    {"MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"}
)
ROOM = 8192  # bytes reserved in the warm process's arguments for a child's command line
ENV_ROOM = 32768  # and in its environment block, for a child's environment (/proc/PID/environ)
ROOM_ENV = "FTCTL_WARM_ROOM"
MAX_REQUEST = 1 << 20
CONNECT_TIMEOUT_S = 2.0
ANSWER_TIMEOUT_S = 180.0  # a request waits while the warm process still imports (seconds, not minutes)
TITLE_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1


# --- the client side --------------------------------------------------------------------------------

_started: str | None = None  # the address of the warm process this one started (start())
last_refusal: str | None = None  # why the last launch() started nothing (for a log line)


def environ(env: dict[str, str] | None = None) -> dict[str, str] | None:
    """`env` (None: this process's) with FTCTL_WARM naming the warm process this one started, for a
    process it starts; unchanged (None stays None) when it started none."""
    if _started is None:
        return env
    base = dict(os.environ if env is None else env)
    if not base.get(ENV):  # none named (or FTCTL_WARM set empty): this one's
        base[ENV] = _started
    return base


def servable(command: Sequence[str]) -> bool:
    """Whether `command` is `<python> -m <a served module> ...` (the warm process checks the python)."""
    return len(command) >= 3 and command[1] == "-m" and command[2] in SERVED


class WarmChild:
    """A process forked by the warm process for this one: subprocess.Popen's pid, returncode, poll(),
    wait() and send_signal(), so ftctl follows it as it follows a process it started itself."""

    def __init__(self, pid: int, conn: socket.socket, tied: bool) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.tied = tied
        self._conn: socket.socket | None = conn

    def _answer(self, timeout: float | None) -> None:
        """Take the exit the warm process reports (waiting up to `timeout`), or see the process gone."""
        if self._conn is not None:
            self._conn.settimeout(timeout)
            try:
                data = self._conn.recv(4096)
            except (BlockingIOError, TimeoutError):
                return
            except OSError:
                data = b""
            self._conn.close()
            self._conn = None
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                self.returncode = int(json.loads(data).get("exit"))
            if self.returncode is not None:
                return
        # The warm process ended first (no exit will be reported): follow the pid itself.
        if not _alive(self.pid):
            # A tied child got SIGTERM from the kernel as the warm process ended; of a detached one, the
            # exit status went to whoever adopted it: 1, ended for a reason not known here.
            self.returncode = -signal.SIGTERM if self.tied else 1

    def poll(self) -> int | None:
        if self.returncode is None:
            self._answer(0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(["pid", str(self.pid)], timeout or 0.0)
            following = self._conn is not None
            self._answer(left)
            if not following and self.returncode is None:
                time.sleep(0.05)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def launch(
    command: Sequence[str],
    *,
    stdio: Sequence[int],
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    tied: bool = False,
) -> WarmChild | None:
    """Have the warm process named by FTCTL_WARM (in `env`, else this process's environment) start
    `command`; None when there is none or it will not (the caller then starts the command itself).

    `stdio`: the descriptors for the child's 0, 1 and 2; `pass_fds` keep their numbers in the child;
    `tied`: the child ends when this process does (SIGTERM), as under PR_SET_PDEATHSIG."""
    global last_refusal
    env = dict(os.environ if env is None else env)
    address = env.get(ENV) or _started
    if not address or address == OFF or not servable(command):
        last_refusal = "not a module it serves" if address and address != OFF else "no warm process"
        return None
    request = {
        "executable": command[0],
        "module": command[2],
        "args": list(command[3:]),
        "cwd": os.fspath(cwd) if cwd is not None else os.getcwd(),
        "env": env,
        "fds": [0, 1, 2, *pass_fds],
        "tied": tied,
        # What a cold child would inherit from this process beyond the environment.
        "nice": os.nice(0),
        "umask": _umask(),
        "cpus": sorted(os.sched_getaffinity(0)),
    }
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.settimeout(CONNECT_TIMEOUT_S)
        conn.connect("\0" + address)
        socket.send_fds(conn, [json.dumps(request).encode()], [*stdio, *pass_fds])
        conn.settimeout(ANSWER_TIMEOUT_S)
        answer = json.loads(conn.recv(4096) or b"{}")
    except (OSError, ValueError) as exc:
        conn.close()
        last_refusal = f"the warm process did not answer ({exc})"
        return None
    if not isinstance(answer, dict) or not isinstance(answer.get("pid"), int):
        conn.close()
        last_refusal = str(answer.get("refused") if isinstance(answer, dict) else answer)
        return None
    last_refusal = None
    return WarmChild(answer["pid"], conn, tied)


class Started(NamedTuple):
    address: str
    pid: int


def start(
    env: dict[str, str] | None = None, idle_s: float = 120.0, log: Path | None = None, preload: bool = True
) -> Started:
    """Start a warm process owned by this one: its address (for FTCTL_WARM; the processes this one
    starts get it through environ()) and pid. The address answers at once (this process binds it and hands it
    over); requests wait while the libraries load. `preload=False` imports only ftctl's served modules
    (their libraries then load in each child, as in a cold start): for tests of the process mechanics."""
    global _started
    address = f"ftctl-warm-{os.getuid()}-{secrets.token_hex(8)}"
    me = procs.identity(os.getpid()) or {"pid": os.getpid()}
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener:
        listener.bind("\0" + address)
        listener.listen(32)
        safe_path = ["-P"] if sys.version_info >= (3, 11) else []  # not the current folder on sys.path
        command = [sys.executable, *safe_path, "-m", MODULE, f"--fd={listener.fileno()}",
                   f"--owner={me['pid']}:{me.get('start', 0)}", f"--idle={idle_s:g}",
                   *([] if preload else ["--no-preload"]), "--room=" + "." * ROOM]  # fmt: skip
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
        with open_log(log) if log is not None else open(os.devnull, "ab") as out:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={
                    **{k: v for k, v in (os.environ if env is None else env).items() if k != ENV},
                    ROOM_ENV: "." * ENV_ROOM,
                },  # fmt: skip
                start_new_session=True,
                cwd="/",
                pass_fds=[listener.fileno()],
            )
    _started = address
    return Started(address, process.pid)


def running() -> str | None:
    """The address of a warm process this one may use: FTCTL_WARM's, or the one it started ("off" when
    FTCTL_WARM says there is to be none)."""
    return os.environ.get(ENV) or _started


# --- the warm process ------------------------------------------------------------------------------


def preload() -> None:
    """Import what the served modules import when they run (they import it lazily, in functions), and
    what MLflow loads on a trainer's first use rather than at import: its SQL store (SQLAlchemy, alembic;
    ~1.2 s) and the map of installed modules to distributions that saving a model reads to check the
    model's pinned requirements against this environment (~1 s: every installed package's file list).
    The map is MLflow's own cache, built by the function MLflow calls; if a later MLflow lacks it, each
    trainer builds it as before."""
    import mlflow  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    from mlflow.utils import requirements_utils
    from peft import LoraConfig, PeftModel, get_peft_model  # noqa: F401
    from transformers import (  # noqa: F401
        AutoModelForCausalLM,
        AutoTokenizer,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )
    from transformers.models.llama import modeling_llama  # noqa: F401  (SmolLM2)
    from transformers.models.phi3 import modeling_phi3  # noqa: F401  (the built-in model)
    from transformers.trainer_callback import PrinterCallback  # noqa: F401

    for module in SERVED:
        __import__(module)
    from ftctl.backends.local import evaluate, mlflow_model  # noqa: F401
    from ftctl.backends.local.serving import app, generation  # noqa: F401

    with contextlib.suppress(Exception):
        requirements_utils._init_modules_to_packages_map()


@dataclass
class _Child:
    pid: int
    conn: socket.socket | None  # the client following it, until it closes
    tied: bool


@dataclass
class _Request:
    executable: str
    module: str
    args: list[str]
    cwd: str
    env: dict[str, str]
    fds: dict[int, int]  # number in the child -> descriptor received
    tied: bool
    nice: int
    umask: int
    cpus: list[int]


@dataclass
class _Warm:
    listener: socket.socket
    wake: tuple[int, int]
    owner: tuple[int, int]
    idle_s: float
    title: tuple[int, int]  # where this process's arguments lie in its memory
    environ_area: tuple[int, int]  # and its environment block
    env: dict[str, str]  # as it started, before the imports
    set_by_imports: dict[str, str]  # what the imports set (torch's inductor cache, MLflow's session)
    read_by_imports: frozenset[str]
    children: dict[int, _Child] = field(default_factory=dict)
    stopping: bool = False
    last_active: float = field(default_factory=time.monotonic)

    # -- requests

    def refuse_reason(self, request: _Request) -> str | None:
        if request.module not in SERVED:
            return f"{request.module} is not a module this process serves"
        if os.path.realpath(request.executable) != os.path.realpath(sys.executable):
            return f"{request.executable} is not this process's interpreter ({sys.executable})"
        different = {k for k in self.env.keys() ^ request.env.keys()}
        different |= {k for k in self.env.keys() & request.env.keys() if self.env[k] != request.env[k]}
        free = _FREE_NAMES | self.set_by_imports.keys()
        bound = sorted(
            k
            for k in different
            if (k in self.read_by_imports or k.startswith(NATIVE_PREFIXES))
            and not k.startswith(_FREE_PREFIX)
            and k not in free
        )
        if bound:
            return f"the environment differs in {', '.join(bound[:5])}"
        if len(_cmdline_bytes(request)) > self.title[1] - self.title[0]:
            return "the command line does not fit"
        if (
            len(_environ_bytes({**self.set_by_imports, **request.env}))
            > self.environ_area[1] - self.environ_area[0]
        ):
            return "the environment does not fit"
        if request.nice < os.nice(0):
            return f"its niceness {request.nice} is below this process's {os.nice(0)}"
        if not set(request.cpus) & os.sched_getaffinity(0):
            return f"none of its CPUs {request.cpus} is this process's"
        return None

    def accept(self) -> tuple[_Request, socket.socket] | None:
        """Take one connection's request; a refused or broken one is answered and closed here."""
        conn, _ = self.listener.accept()
        fds: list[int] = []
        try:
            conn.settimeout(5.0)
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            if int.from_bytes(creds[4:8], sys.byteorder) != os.getuid():
                raise ValueError("another user")
            data, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST, 64)
            raw = json.loads(data)
            numbers = [int(n) for n in raw["fds"]]
            if len(numbers) != len(fds) or len(set(numbers)) != len(numbers):
                raise ValueError("descriptors do not match the request")
            request = _Request(
                executable=str(raw["executable"]),
                module=str(raw["module"]),
                args=[str(a) for a in raw["args"]],
                cwd=str(raw["cwd"]),
                env={str(k): str(v) for k, v in raw["env"].items()},
                fds=dict(zip(numbers, fds, strict=True)),
                tied=bool(raw.get("tied")),
                nice=int(raw["nice"]),
                umask=int(raw["umask"]) & 0o777,
                cpus=[int(cpu) for cpu in raw["cpus"]],
            )
            reason = self.refuse_reason(request)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            request, reason = None, f"a bad request ({exc})"
        if reason is not None or request is None:
            print(f"[ftctl warm] refused a request: {reason}", flush=True)
            with contextlib.suppress(OSError):
                conn.send(json.dumps({"refused": reason}).encode())
            conn.close()
            for fd in fds:
                os.close(fd)
            return None
        return request, conn

    def fork(self, request: _Request, conn: socket.socket) -> _Request | None:
        """Fork a child for `request`. Returns the request in the child (which then runs it), None here."""
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            self._become_child(request, conn, ready_w)
            return request
        os.close(ready_w)
        for fd in request.fds.values():
            os.close(fd)
        titled = select.select([ready_r], [], [], TITLE_TIMEOUT_S)[0] and os.read(ready_r, 1)
        os.close(ready_r)
        if not titled:  # it could not take its command line: it never runs
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self.children[pid] = _Child(pid, None, False)
            with contextlib.suppress(OSError):
                conn.send(json.dumps({"refused": "the child did not start"}).encode())
            conn.close()
            return None
        with contextlib.suppress(OSError):
            conn.send(json.dumps({"pid": pid}).encode())
        self.children[pid] = _Child(pid, conn, request.tied)
        print(f"[ftctl warm] pid {pid}: -m {request.module}{' (tied)' if request.tied else ''}", flush=True)
        self.last_active = time.monotonic()
        return None

    def _become_child(self, request: _Request, conn: socket.socket, ready_w: int) -> None:
        """In the child: drop the warm process's own state, take the request's, then title itself."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        own = [self.listener, conn, *(c.conn for c in self.children.values() if c.conn is not None)]
        for sock in own:
            os.close(sock.detach())
        for fd in self.wake:
            os.close(fd)
        os.setsid()
        if request.tied:
            _die_with_parent()
        # The received descriptors go to their numbers: first out of the way of every target number.
        high = max([*request.fds, 2]) + 1
        ready = _fcntl_dup(ready_w, high)
        os.close(ready_w)
        staged = {target: _fcntl_dup(fd, high) for target, fd in request.fds.items()}
        for fd in request.fds.values():
            os.close(fd)
        for target, fd in staged.items():
            os.dup2(fd, target, inheritable=True)
            os.close(fd)
        os.nice(request.nice - os.nice(0))
        os.umask(request.umask)
        os.sched_setaffinity(0, request.cpus)
        os.chdir(request.cwd)
        os.environ.clear()
        os.environ.update({**self.set_by_imports, **request.env})  # as a cold process's imports leave it
        _set_title(self.title, _cmdline_bytes(request))
        # /proc/PID/environ shows the block the process started with: this one's, now the child's.
        # Nothing points into it any more (clearing os.environ unset every variable it held).
        _set_title(self.environ_area, _environ_bytes(dict(os.environ)))
        import random

        random.seed()
        os.write(ready, b"1")
        os.close(ready)

    # -- the loop

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is not None and child.conn is not None:
                with contextlib.suppress(OSError):
                    child.conn.send(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode())
                child.conn.close()
            self.last_active = time.monotonic()

    def client_gone(self, fd: int) -> None:
        for child in self.children.values():
            if child.conn is not None and child.conn.fileno() == fd:
                child.conn.close()
                child.conn = None
                if child.tied:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.pid, signal.SIGTERM)

    def done(self) -> bool:
        if self.stopping:  # its tied children get SIGTERM from the kernel as it exits
            return True
        if any(child.tied for child in self.children.values()):
            return False
        if not _alive(*self.owner):
            return True
        return time.monotonic() - self.last_active > self.idle_s

    def serve(self) -> _Request | None:
        """Serve until done (None), or return the request this process now is the child for."""
        while not self.done():
            watched = {self.listener.fileno(): "listen", self.wake[0]: "wake"}
            watched.update({c.conn.fileno(): "client" for c in self.children.values() if c.conn is not None})
            poller = select.poll()
            for fd in watched:
                poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll(1000):
                role = watched[fd]
                if role == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(fd, 512)
                elif role == "client":
                    self.client_gone(fd)  # a client sends nothing after its request: it closed
                elif role == "listen":
                    taken = self.accept()
                    if taken is not None and self.fork(*taken) is not None:
                        return taken[0]
            self.reap()
        return None


@contextlib.contextmanager
def _exit_if_ended(pid: int, start: int) -> Iterator[None]:
    """Meanwhile, exit at once if the owner ends (an `ftctl run` with everything up to date, or
    interrupted): no seconds of imports for nobody. The watching thread is gone before any fork."""
    import threading

    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.25):
            if not _alive(pid, start):
                os._exit(0)

    watcher = threading.Thread(target=watch, name="ftctl-warm-owner", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()


@contextlib.contextmanager
def _recording_reads() -> Iterator[set[str]]:
    """The names of the environment variables Python code reads (os.environ, os.getenv) meanwhile."""
    read: set[str] = set()
    environ_class = type(os.environ)
    original = environ_class.__getitem__

    def getitem(self: Any, key: Any) -> Any:
        read.add(os.fsdecode(key))
        return original(self, key)

    environ_class.__getitem__ = getitem  # type: ignore[method-assign]
    try:
        yield read
    finally:
        environ_class.__getitem__ = original  # type: ignore[method-assign]


def _fcntl_dup(fd: int, lowest: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest)


def _die_with_parent() -> None:
    import ctypes

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _alive(pid: int, start: int = 0) -> bool:
    """Whether `pid` runs (not a zombie), and still with kernel start time `start` when one is given."""
    fields = procs._stat(pid)
    if not fields:
        return False
    return fields[0] not in ("Z", "X") and (not start or int(fields[19]) == start)


def _cmdline_bytes(request: _Request) -> bytes:
    argv = [request.executable, "-m", request.module, *request.args]
    return b"".join(os.fsencode(arg) + b"\0" for arg in argv)


def _environ_bytes(env: dict[str, str]) -> bytes:
    return b"".join(os.fsencode(k) + b"=" + os.fsencode(v) + b"\0" for k, v in env.items())


def _areas() -> tuple[tuple[int, int], tuple[int, int]]:
    """Where this process's arguments and environment block lie in its memory (/proc/self/stat's
    arg_start, arg_end, env_start, env_end)."""
    fields = Path("/proc/self/stat").read_bytes().rsplit(b")", 1)[1].split()
    return (int(fields[45]), int(fields[46])), (int(fields[47]), int(fields[48]))


def _set_title(area: tuple[int, int], strings: bytes) -> None:
    """Write `strings` (NUL-separated) over an area of `_areas()`, padded with NULs: what
    /proc/self/cmdline (`ps`) or /proc/self/environ show from now on (the kernel reads that memory)."""
    import ctypes

    start, end = area
    data = strings + b"\0" * (end - start - len(strings))
    ctypes.memmove(start, data, len(data))


@contextlib.contextmanager
def _frozen_after() -> Iterator[None]:
    """No cyclic collections while importing: the imports allocate millions of objects that all stay,
    so each collection would scan them for nothing (the preload took 6.5-6.7 s instead of 7.7). Then one
    collection, and what the imports made is frozen out of the collector's way: a child's collections
    would otherwise write to (and so copy) every page of it. Collections are on again after, as the
    children need them."""
    gc.disable()
    try:
        yield
    finally:
        gc.collect()
        gc.freeze()
        gc.enable()


def _run_child(request: _Request) -> None:
    """Run the request's module as __main__, as `python -m` does, and exit as Python would.

    The end is Python's orderly exit without its teardown of every module (ftctl.exiting), which in a
    forked child would write to (so copy) the warm process's memory page by page: 0.4 s a process."""
    import runpy
    import traceback

    sys.argv = [request.module, *request.args]  # runpy puts the module's file first, as `-m` does
    sys.orig_argv = [request.executable, "-m", request.module, *request.args]
    sys.modules.pop(request.module, None)  # run fresh as __main__, as `python -m` does
    code: int = 0
    interrupted = False
    try:
        runpy.run_module(request.module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exiting.exit_code(exc.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        interrupted = True
    except BaseException:  # noqa: BLE001  (reported as Python reports it, then exit 1)
        traceback.print_exc()
        code = 1
    exiting.exit_now(code, interrupted=interrupted)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    parser.add_argument("--fd", type=int, required=True, help="the bound, listening socket")
    parser.add_argument("--owner", required=True, help="PID:START of the process it serves")
    parser.add_argument("--idle", type=float, default=120.0)
    parser.add_argument("--room", default="", help="space kept for the children's command lines")
    parser.add_argument("--no-preload", action="store_true", help="import only the served modules")
    args = parser.parse_args(argv)
    pid, _, start = args.owner.partition(":")
    listener = socket.socket(fileno=args.fd)  # requests wait on it while the libraries load
    os.environ.pop(ROOM_ENV, None)  # its space stays, for the children's environments
    began, env = time.monotonic(), dict(os.environ)
    with _recording_reads() as read, _exit_if_ended(int(pid), int(start or 0)), _frozen_after():
        if args.no_preload:
            for module in SERVED:
                __import__(module)
        else:
            preload()
    set_by_imports = {k: v for k, v in os.environ.items() if env.get(k) != v}
    took = time.monotonic() - began
    print(f"[ftctl warm] loaded in {took:.1f} s; serving {listener.getsockname()!r}", flush=True)
    wake = os.pipe()
    for fd in wake:
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake[1])
    signal.signal(signal.SIGCHLD, lambda *_: None)
    warm = _Warm(
        listener,
        wake,
        (int(pid), int(start or 0)),
        args.idle,
        *_areas(),
        env,
        set_by_imports,
        frozenset(read),
    )
    signal.signal(signal.SIGTERM, lambda *_: setattr(warm, "stopping", True))
    request = warm.serve()
    if request is None:
        listener.close()
        return 0
    _run_child(request)
    return 0


if __name__ == "__main__":
    sys.exit(main())
