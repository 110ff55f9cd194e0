"""Run untrusted generated code (HumanEval-style checks) in a separate, confined process.

Never ``exec`` in the benchmark's own process. Each program runs in a fresh interpreter:

* a temporary working directory (deleted afterwards), ``HOME`` and ``TMPDIR`` pointing into it;
* resource limits: address space (``RLIMIT_AS``), CPU seconds (``RLIMIT_CPU``), processes
  (``RLIMIT_NPROC``; the kernel does not apply it to root, so the audit hook below is what
  stops a fork bomb there), file size (``RLIMIT_FSIZE``), no core dumps;
* no network: a new, empty network namespace (``unshare -rn``) when the kernel allows it;
* a read-only file system except the working directory: a new mount namespace in which every
  mount is remounted read-only and the working directory bound read-write (``unshare -m``),
  when the kernel allows it;
* an audit hook (PEP 578, cannot be removed once installed) installed before the program runs,
  which refuses writes, deletes and renames outside the working directory, process creation
  (fork, exec, subprocess, os.system), sockets and ctypes;
* a wall-clock timeout after which the whole process group is killed.

Whatever the program does, the result is a :class:`SandboxResult`; a timeout or a refused
operation is a failed item, never a hung or crashed benchmark.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Runs first inside the sandboxed interpreter: read the program, install the guard, run it.
_GUARD = r"""
import os, sys
_ROOT = os.path.realpath(os.getcwd())
_SRC = open("program.py", encoding="utf-8").read()

def _inside(path):
    if isinstance(path, int):  # a file descriptor opened earlier
        return True
    try:
        full = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return full == _ROOT or full.startswith(_ROOT + os.sep)

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {"os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate",
                "os.utime", "os.listxattr", "os.setxattr", "os.removexattr", "shutil.rmtree",
                "shutil.copyfile", "shutil.move", "shutil.chown"}
_TWO_PATH_EVENTS = {"os.rename", "os.link", "os.symlink"}
_DENIED_PREFIXES = ("os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
                    "os.kill", "os.killpg", "os.startfile", "subprocess.", "socket.", "ctypes.",
                    "pty.", "resource.setrlimit", "sys.addaudithook", "os.putenv", "os.unsetenv")
# Modules that reach fork/exec or raw memory without raising the events above.
_DENIED_MODULES = {"_posixsubprocess", "_ctypes", "ctypes", "_socket", "socket", "multiprocessing"}

def _deny(event):
    raise PermissionError(f"sandbox: {event} is not allowed")

def _hook(event, args):
    if event == "import":
        if args[0] in _DENIED_MODULES:
            _deny(f"import {args[0]}")
    elif event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & _WRITE_FLAGS
        if writing and path is not None and not _inside(path):
            _deny(f"writing {path}")
    elif event in _PATH_EVENTS:
        if args and not _inside(args[0]):
            _deny(f"{event} on {args[0]}")
    elif event in _TWO_PATH_EVENTS:
        if not (_inside(args[0]) and _inside(args[1])):
            _deny(f"{event} outside the sandbox")
    elif event.startswith(_DENIED_PREFIXES):
        _deny(event)

sys.addaudithook(_hook)
del _hook
_code = compile(_SRC, "program.py", "exec")
del _SRC
exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
"""


@dataclass
class SandboxResult:
    status: str  # "passed" | "failed" | "timeout"
    returncode: int | None
    seconds: float
    stdout: str
    stderr: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# Inside the new mount namespace: every mount read-only, then the working directory ($0) bound
# read-write, then exec the interpreter. Remounts the kernel refuses (locked mounts) are skipped.
_READ_ONLY_FS = (
    'for m in $(awk "{print \\$5}" /proc/self/mountinfo); do mount -o remount,bind,ro "$m" 2>/dev/null; done; '
    'mount --bind "$0" "$0" && mount -o remount,bind,rw "$0" && cd "$0" && exec "$@"'
)


@functools.cache
def isolation_mode() -> str:
    """``"fs+net"`` when ``unshare -rnm`` works and the read-only remount holds, ``"net"`` when only
    ``unshare -rn`` works, ``"none"`` otherwise (the audit hook and rlimits still apply)."""
    unshare = shutil.which("unshare")
    if not unshare:
        return "none"
    probe = tempfile.mkdtemp(prefix="nexus-sandbox-probe-")
    try:
        outside = Path(probe).parent / f"{Path(probe).name}-outside"
        cmd = [unshare, "-rnm", "sh", "-c", _READ_ONLY_FS, probe, "sh", "-c", f"touch ok; touch '{outside}'"]
        result = subprocess.run(cmd, capture_output=True, timeout=20)
        escaped = outside.exists()
        outside.unlink(missing_ok=True)
        if (Path(probe) / "ok").exists() and not escaped and result.returncode != 0:
            return "fs+net"
        if subprocess.run([unshare, "-rn", "true"], capture_output=True, timeout=10).returncode == 0:
            return "net"
    except (OSError, subprocess.TimeoutExpired):
        pass
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return "none"


def _confined(cmd: list[str], workdir: Path) -> list[str]:
    mode = isolation_mode()
    unshare = shutil.which("unshare") or "unshare"
    if mode == "fs+net":
        return [unshare, "-rnm", "sh", "-c", _READ_ONLY_FS, str(workdir), *cmd]
    if mode == "net":
        return [unshare, "-rn", "--", *cmd]
    return cmd


def _limits(memory_mb: int, cpu_seconds: int, max_file_mb: int, max_processes: int):
    """The ``preexec_fn`` that applies the resource limits in the child, before exec."""

    def apply() -> None:
        mem = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        size = max_file_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (max_processes, max_processes))

    return apply


def run_sandboxed(
    program: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    max_file_mb: int = 16,
    max_processes: int = 1,
    output_chars: int = 2000,
) -> SandboxResult:
    """Run the Python source ``program`` confined (see the module docstring).

    ``passed`` when it exits with status 0 within ``timeout_s`` wall seconds; ``timeout`` when it
    was killed for time (wall clock or ``RLIMIT_CPU``); ``failed`` otherwise (an assertion, an
    exception, a refused operation, a memory limit).
    """
    workdir = Path(tempfile.mkdtemp(prefix="nexus-sandbox-"))
    try:
        (workdir / "program.py").write_text(program, encoding="utf-8")
        (workdir / "_guard.py").write_text(_GUARD, encoding="utf-8")
        cmd = _confined([sys.executable, "-I", "-B", "_guard.py"], workdir)
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(workdir),
            "TMPDIR": str(workdir),
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
        }
        start = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # own process group, killed as a whole
            preexec_fn=_limits(memory_mb, max(1, int(timeout_s) + 1), max_file_mb, max_processes),
        )
        timed_out = False
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            out, err = proc.communicate()
        seconds = time.monotonic() - start
        code = proc.returncode
        if timed_out or code in (-signal.SIGXCPU, -signal.SIGKILL) and seconds >= timeout_s * 0.5:
            status = "timeout"
        else:
            status = "passed" if code == 0 else "failed"
        return SandboxResult(
            status,
            code,
            round(seconds, 4),
            out.decode("utf-8", "replace")[-output_chars:],
            err.decode("utf-8", "replace")[-output_chars:],
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The program that checks one HumanEval completion: prompt + completion + tests + ``check(f)``."""
    return f"{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n"
