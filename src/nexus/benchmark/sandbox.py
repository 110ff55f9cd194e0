"""Run untrusted generated code (HumanEval-style checks) in a separate, confined process.

One file on purpose (over 500 lines): it is a security boundary, and the launcher, the probe of
what the kernel allows and the in-process guard must be reviewed together.

Never ``exec`` in the benchmark's own process. Each program runs in a fresh interpreter, in a
temporary working directory (deleted afterwards; ``HOME`` and ``TMPDIR`` point into it).

Isolation (what really confines the program), when the kernel allows it (:func:`isolation_mode`
is ``"namespaces"``): ``unshare`` puts the interpreter in new user, mount, network and PID
namespaces. Before the program runs, the launcher (the first lines of the interpreter, trusted)
confines, in its private mount namespace:

- writes: it binds the working directory onto itself and remounts every other mount read-only;
- reads: it hides where user data and secrets are kept (:func:`_private_places`): ``/root``,
  ``/home``, ``/var``, ``/srv``, ``/mnt``, ``/media``, ``/run``, ``/tmp``, ``/lost+found``,
  ``/etc/ssh``, ``/etc/ssl/private``, ``/dev``, the invoking account's home (``HOME`` and the
  password database's, wherever they are) and the temporary directory that holds the working
  directory (other runs' files), each under an empty read-only tmpfs, and ``/etc/shadow``,
  ``/etc/gshadow`` and their ``-`` backups under ``/dev/null``. Then it binds back, from
  descriptors opened before, what must stay readable under them: the interpreter's prefixes
  (``sys.prefix``, ``sys.base_prefix``, the exec prefixes, whole: the standard library, extension
  modules and libraries kept there as in a conda environment; a venv or pyenv in one's home
  works) and ``sys.path`` entries, read-only (a library that an extension module loads from
  another hidden place is missing); ``/dev/null``, ``zero``, ``full``, ``random``, ``urandom``
  (and new ``fd``, ``stdin``, ``stdout``, ``stderr`` links to ``/proc/self/fd``); and the
  working directory.

Then it checks all of it: each hidden directory is the new tmpfs and holds only what was bound
back, each hidden file is ``/dev/null``, each path bound back is the original, every mount but the
working directory is read-only; if not, the program does not run (exit 3, one line on stderr,
and :func:`isolation_mode`'s probe reports ``"none"``). Everything else the account can read stays
readable: ``/usr``, ``/etc`` (but the files above), ``/opt``, ``/sys``, other top-level
directories (a project directory such as ``/work``), the same files where another mount shows
them, and the paths (not the contents) of the hidden places and kept directories in
``/proc/self/mountinfo``. ``/proc`` is the PID namespace's own: only the sandbox's processes, and
the launcher's descriptors on the originals are closed before the program runs. There is no
network (an empty network namespace) and no other process is visible or reachable.

Where this is not available, :func:`run_sandboxed` refuses to run code (:class:`SandboxUnavailable`,
a one-line error) unless the caller passes ``allow_unsandboxed=True`` (``nexus benchmark
--allow-unsandboxed-code``): then nothing is hidden and the kernel confines neither writes nor
reads. The guard still refuses writes outside the working directory, but not reads: the program
can read every file the invoking account can read (``~/.ssh``, tokens under ``~/.cache``, other
accounts' readable files) and print it into the benchmark's output.

Then, for the checked program only (after the launcher's own setup, so the setup can still start
``mount``): resource limits on address space, CPU seconds, file size and no core dumps, and a
seccomp filter that refuses ``execve`` and new processes (threads still work). Where the filter
cannot be installed (another architecture, a kernel that refuses it), ``RLIMIT_NPROC`` refuses new
processes instead, for ordinary accounts only (the kernel exempts the host's root, also as root of
a user namespace) and at the cost of threads (it counts them too).

Defence in depth, the guard: an audit hook (PEP 578, cannot be removed once installed) refuses
writes, deletes and renames outside the working directory, opening a directory outside it and
``chdir`` (so ``dir_fd=`` cannot reach outside), process creation, signals, sockets, ctypes,
symlinks, crafted bytecode (``code.replace``, ``marshal.loads`` of anything but the ``.pyc`` the
import system just read outside the working directory), ``/proc/self/mem``, and the
introspection that would reach the hook's own state (``gc.get_objects`` / ``get_referrers``, the
hook's frames on the tracebacks of the errors it raises, tracing, ``signal`` handlers). The program runs in a fresh ``__main__`` module, the hook keeps its own
copy of the builtins and of the functions it calls, and never runs the program's code (no
``__fspath__``, ``__hash__`` or ``__eq__`` of its objects), so nothing the program can reach
(``__main__``, ``sys.modules``, ``builtins``, ``os.path``) changes what the hook does.

A program passes only when it ran to its end: after the program's last statement returns, the
launcher writes a per-run random marker (sent on the interpreter's stdin, then replaced by
``/dev/null``; the hook releases it only from that one line) and the result requires it in
stdout. ``sys.exit(0)``, ``os._exit(0)``, ``exit()`` or ``raise SystemExit`` before the tests ran
are therefore failures, as in HumanEval's own harness (which records a result only after
``exec`` of the check returns).

Whatever the program does, the result is a :class:`SandboxResult`; a timeout or a refused
operation is a failed item, never a hung or crashed benchmark.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from nexus.errors import NexusError

# The launcher and guard: runs first inside the sandboxed interpreter, as `python -I -B _guard.py
# ROOT MEMORY CPU FSIZE NPROC DONE_LINE [MOUNT PLACE...]` (the PLACEs: what to hide, see
# _private_places). The program never sees this module: it runs in a fresh `__main__`, and the hook
# is built in a private namespace and referenced only by the interpreter's hook list.
_GUARD = r'''
import sys


def _hook_factory(root, marker, main_frame, done_line, os_calls, get_ident, traceback_type):
    # Built with private globals and builtins (see _setup): nothing here looks anything up in a
    # namespace the program can change.
    write, getcwd, readlink, stat, is_dir, read_file = os_calls
    o_write = 0o1 | 0o2 | 0o100 | 0o1000 | 0o2000  # O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND
    denied_imports = frozenset({
        "_posixsubprocess", "_ctypes", "ctypes", "_socket", "socket", "multiprocessing",
        "_multiprocessing", "signal", "_signal", "_cffi_backend", "cffi", "_testcapi",
        "_xxsubinterpreters", "_xxinterpchannels",
    })
    # os.chdir: the working directory stays put, so a relative path given with dir_fd= (which the
    # "open" event does not show) resolves from a directory at or below the one checked here.
    denied_prefixes = (
        "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.kill",
        "os.killpg", "os.startfile", "os.symlink", "os.chdir", "subprocess.", "socket.", "ctypes.", "pty.",
        "signal.", "resource.setrlimit", "resource.prlimit", "sys.addaudithook",
        "sys._current_frames", "sys.settrace", "sys.setprofile", "gc.get_objects",
        "gc.get_referrers", "gc.get_referents", "code.__new__", "marshal.load", "nexus.",
    )
    one_path = {"os.remove": 0, "os.rmdir": 0, "os.mkdir": 0, "os.chmod": 0, "os.chown": 0,
                "os.utime": 0, "os.truncate": 0, "os.setxattr": 0, "os.removexattr": 0,
                "os.chflags": 0, "os.lchflags": 0, "shutil.rmtree": 0}
    two_paths = frozenset({"os.rename", "os.link"})
    released = []
    busy = set()  # threads in the checks below that read audited attributes or files themselves
    last_pyc = {}  # thread -> the .pyc outside the working directory it opened last

    def deny(what):
        raise PermissionError("sandbox: " + what + " is not allowed")

    def resolve(path):
        """(the absolute path with symlinks resolved, like os.path.realpath; whether it went
        through a /proc magic link such as /proc/self/fd/3, whose target can change under us)."""
        if type(path) is bytes:
            path = path.decode("utf-8", "surrogateescape")
        elif type(path) is not str:
            return None, True
        if not path.startswith("/"):
            path = getcwd() + "/" + path
        todo = path.split("/")
        todo.reverse()
        done = []
        hops = 0
        magic = False
        while todo:
            part = todo.pop()
            if part == "" or part == ".":
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            here = "/" + "/".join(done + [part])
            try:
                target = readlink(here)
            except (OSError, ValueError):
                done.append(part)
                continue
            hops += 1
            if hops > 40:
                return here, True
            if here.startswith("/proc/") and here != "/proc/self" and here != "/proc/thread-self":
                magic = True
            if target.startswith("/"):
                done = []
            parts = target.split("/")
            parts.reverse()
            todo.extend(parts)
        return "/" + "/".join(done), magic

    def shown(path):
        return repr(path) if type(path) is str or type(path) is bytes else "a path that is not str or bytes"

    def inside(path):
        if type(path) is int:  # a file descriptor: opened earlier, through this hook
            return True
        full, magic = resolve(path)
        return not magic and (full == root or full.startswith(root + "/"))

    def hook(event, args):
        if busy and get_ident() in busy:
            return
        if event == "open":
            path, mode, flags = args
            if path is None or type(path) is int:
                return
            if type(path) is not str and type(path) is not bytes:
                deny("open() with a path that is not str or bytes")
            full, magic = resolve(path)
            if (not magic and (full == root or full.startswith(root + "/"))) or full == "/dev/null":
                return
            if full.startswith("/proc/") and (full.endswith("/mem") or full == "/proc/kcore"):
                deny("reading " + full)  # the hook's memory, the marker in it
            if full.endswith(".pyc") and not magic:
                last_pyc[get_ident()] = full  # what the import system may unmarshal next
            writing = (type(mode) is str and ("w" in mode or "a" in mode or "x" in mode or "+" in mode)) or (
                type(flags) is int and flags & o_write
            )
            if writing:
                deny("writing " + repr(path))
            try:
                st = stat(path)
            except (OSError, ValueError):
                return
            if is_dir(st.st_mode):  # a directory fd outside would let dir_fd= reach outside
                deny("opening the directory " + repr(path))
        elif event == "import":
            if type(args[0]) is not str:  # a str subclass could run its own __hash__ in here
                deny("import of a name that is not a str")
            if args[0] in denied_imports:
                deny("import " + args[0])
        elif event in one_path:
            if args and type(args[0]) is int:  # fchmod, fchown, ...: the fd may be a file outside
                deny(event + " on a file descriptor")
            if args and not inside(args[0]):
                deny(event + " on " + shown(args[0]))
        elif event in two_paths:
            if not (inside(args[0]) and inside(args[1])):
                deny(event + " outside the working directory")
        elif event == "object.__getattr__":
            if type(args[1]) is str and args[1] == "tb_frame":
                # The program's own frames are fine (the traceback module reads them); the hook's,
                # on the tracebacks of the errors it raises, are not.
                if type(args[0]) is not traceback_type:
                    deny("reading tb_frame")
                me = get_ident()
                busy.add(me)
                try:
                    code = args[0].tb_frame.f_code
                finally:
                    busy.discard(me)
                if code in guard_code:
                    deny("reading the frame of the sandbox's guard")
        elif event == "marshal.loads":
            # Code objects only from a .pyc the import system just read outside the working
            # directory, byte for byte: crafted bytecode could read and write any memory.
            me = get_ident()
            pyc = last_pyc.pop(me, None)
            data = args[0]
            if pyc is None or (type(data) is not bytes and type(data) is not memoryview):
                deny(event)
            busy.add(me)
            try:
                same = read_file(pyc)[16:] == data
            except (OSError, ValueError):
                same = False
            finally:
                busy.discard(me)
            if not same:
                deny(event)
        elif event == "nexus.sandbox.done":
            # Only the launcher's line after the program's last statement releases the marker.
            if released or main_frame.f_lineno != done_line:
                deny(event)
            released.append(True)
            write(1, b"\n" + marker + b"\n")
        elif event.startswith(denied_prefixes):
            deny(event)

    guard_code = frozenset(f.__code__ for f in (hook, deny, resolve, inside, shown, read_file))
    return hook


def _read_file(path, open_, read, close, rdonly):
    fd = open_(path, rdonly)
    try:
        chunks = []
        while True:
            chunk = read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        close(fd)


def _setup():
    import builtins
    import os
    import posix
    import resource
    import stat
    import _thread
    import types  # (reads a tb_frame when first imported: before the hook)

    root = os.path.realpath(sys.argv[1])  # the hook compares resolved paths
    memory, cpu, fsize, nproc, done_line = (int(a) for a in sys.argv[2:7])
    mount = sys.argv[7] if len(sys.argv) > 7 else ""
    places = sys.argv[8:]  # to hide from the program
    marker = b""
    while not marker.endswith(b"\n"):  # one line from the parent, then EOF
        chunk = os.read(0, 256)
        if not chunk:
            break
        marker += chunk
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    if mount:
        _confine(os, stat, mount, root, places)
    os.chdir(root)
    for limit, value in (
        (resource.RLIMIT_AS, (memory, memory)),
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_FSIZE, (fsize, fsize)),
        (resource.RLIMIT_CORE, (0, 0)),
    ):
        resource.setrlimit(limit, value)
    private = {"__builtins__": dict(vars(builtins)), "__name__": "nexus_sandbox_guard"}
    factory = type(_setup)(_hook_factory.__code__, private)
    if done_line == 0:  # isolation_mode's probe: the kernel's confinement alone
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        return
    if not _seccomp(forks=nproc > 1) or nproc > 1:
        # Without the filter, the process limit is what refuses new processes. With it, a limit
        # of 1 would refuse threads too for an ordinary account (RLIMIT_NPROC counts them).
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    read_file = type(_setup)(_read_file.__code__, {"__builtins__": {}})
    read_file.__defaults__ = (posix.open, posix.read, posix.close, posix.O_RDONLY)
    os_calls = (posix.write, posix.getcwd, posix.readlink, posix.stat, stat.S_ISDIR, read_file)
    hook = factory(root, marker.strip(), sys._getframe(1), done_line, os_calls, _thread.get_ident, types.TracebackType)
    sys.modules.pop("_signal", None)  # loaded at start-up; a re-import goes through the hook
    sys.addaudithook(hook)


def _seccomp(forks):
    """A seccomp filter (kernel-enforced, for root too, where RLIMIT_NPROC does not apply): no
    execve, and no new process (clone without CLONE_THREAD, fork, vfork) unless ``forks``;
    threads still work (clone3 answers ENOSYS, so the C library falls back to clone). Skipped
    on other architectures or where the kernel refuses it (the guard still applies). True when
    the filter is in place."""
    import platform

    arch = platform.machine()
    # (AUDIT_ARCH, clone, clone3, [process creation], [exec])
    # and [refused outright: mknod(at) (a device node in the working directory would pass the
    # guard's path check), mount, umount2, pivot_root, chroot, ptrace, unshare, setns,
    # open_by_handle_at, and on x86_64 also process_vm_readv/writev, name_to_handle_at, module and
    # kexec calls, bpf, perf_event_open, reboot, swapon/off, keyctl, add_key, request_key,
    # io_uring, userfaultfd, iopl/ioperm, settimeofday, clock_settime, the new mount API]
    table = {
        "x86_64": (0xC000003E, 56, 435, [57, 58], [59, 322], [
            133, 259, 165, 166, 155, 161, 101, 272, 308, 304, 310, 311, 303, 175, 313, 176, 246,
            320, 321, 298, 169, 167, 168, 250, 248, 249, 425, 426, 427, 323, 172, 173, 164, 227,
            428, 429, 430, 431, 432, 442,
        ]),
        "aarch64": (0xC00000B7, 220, 435, [], [221, 281], [33, 40, 39, 41, 51, 117, 97, 268, 265]),
    }
    if arch not in table:
        return False
    audit_arch, clone, clone3, new_process, exec_, refused = table[arch]
    allow, enosys = 0x7FFF0000, 0x00050000 | 38
    eperm, eagain = 0x00050000 | 1, 0x00050000 | 11
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, audit_arch), (ret, 0, 0, eperm), (ld, 0, 0, 0)]
    prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, eperm)]  # the x32 ABI
    for nr in exec_ + refused:
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, eperm)]
    if not forks:
        prog += [(jeq, 0, 1, clone3), (ret, 0, 0, enosys)]
        for nr in new_process:
            prog += [(jeq, 0, 1, nr), (ret, 0, 0, eagain)]
        # clone: a thread (CLONE_THREAD in the flags, args[0]) is fine, a process is not
        prog += [(jeq, 0, 3, clone), (ld, 0, 0, 16), (jset, 1, 0, 0x00010000), (ret, 0, 0, eagain)]
    prog += [(ret, 0, 0, allow)]
    try:
        import ctypes

        class Filter(ctypes.Structure):
            _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                        ("k", ctypes.c_uint32)]

        class Program(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

        filters = (Filter * len(prog))(*[Filter(*ins) for ins in prog])
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
            return False
        fprog = Program(len(prog), filters)
        address = ctypes.cast(ctypes.pointer(fprog), ctypes.c_void_p).value
        return libc.prctl(22, 2, address, 0, 0) == 0  # PR_SET_SECCOMP
    except (ImportError, OSError, AttributeError):
        return False
    finally:
        for name in [m for m in sys.modules if m in ("ctypes", "_ctypes", "platform") or m.startswith("ctypes.")]:
            del sys.modules[name]


def _confine(os, stat, mount, root, places):
    """Inside the new mount namespace, before the program runs; exit 3 (one line on stderr) when
    any of it is not as it should be.

    Writes: the working directory stays writable (bound onto itself first), every other mount
    becomes read-only. Reads: each of ``places`` that exists is hidden (a directory under an empty
    tmpfs, a file under /dev/null), then what lies under them and must stay readable is bound back
    from descriptors opened before: the interpreter's prefixes and ``sys.path`` entries, /dev's
    null, zero, full, random and urandom, and the working directory. Paths are handled parents
    first, so a place hidden inside a kept one is hidden again. Then checks: every hidden
    directory holds only what the launcher put there, every hidden file is /dev/null, every kept
    path is the original, and every mount but the working directory is read-only."""
    null = os.open(os.devnull, os.O_WRONLY)  # before /dev is hidden
    me = os.getpid()

    def run(*args):
        to_null = [(os.POSIX_SPAWN_DUP2, null, 1), (os.POSIX_SPAWN_DUP2, null, 2)]
        # LIBMOUNT_UTAB: libmount would otherwise make /run/mount in the hidden /run
        env = {"PATH": "/usr/bin:/bin", "LIBMOUNT_UTAB": "/dev/null"}
        pid = os.posix_spawn(mount, [mount, *args], env, file_actions=to_null)
        return os.waitpid(pid, 0)[1] == 0

    def fail(message):
        sys.stderr.write("sandbox: " + message + "\n")
        os._exit(3)

    def mount_points():
        points = []
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                field = line.split(" ")[4]
                for code in ("\\040", "\\011", "\\012", "\\134"):
                    field = field.replace(code, chr(int(code[1:], 8)))
                points.append(field)
        return points

    def within(path, top):
        return path == top or path.startswith(top + "/")

    def unexpected(path):
        """The first entry under the hidden directory ``path`` that the launcher did not make."""
        for name in os.listdir(path):
            full = path + "/" + name
            if full not in made:
                return full
            if made[full] == "dir":
                found = unexpected(full)
                if found:
                    return found
        return None

    if not (run("--bind", root, root) and run("-o", "remount,bind,rw", root)):
        fail("could not bind the working directory")
    for point in mount_points():
        if point != root:
            run("-o", "remount,bind,ro", point)

    # (path, 0 kept | 1 hidden | 2 the working directory), parents first; at one path, a kept
    # path is hidden again and the working directory always stays
    kept = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path]
    kept = [os.path.abspath(p) for p in kept if type(p) is str and p]
    kept += [os.path.realpath(p) for p in kept]
    kept += ["/dev/" + name for name in ("null", "zero", "full", "random", "urandom")]
    hidden = [os.path.realpath(p) for p in places if p.startswith("/")]
    actions = {(p, 0) for p in kept} | {(p, 1) for p in hidden if p != "/" and os.path.lexists(p)}
    actions = sorted(actions | {(root, 2)}, key=lambda a: (a[0].split("/"), a[1]))
    fds = {}
    for path, kind in actions:
        if kind != 1 and path not in fds:
            try:
                fds[path] = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                pass  # missing, or not this account's to read anyway
    if "/dev/null" not in fds:
        fail("cannot open /dev/null")
    null_device = os.fstat(fds["/dev/null"]).st_rdev
    done = []  # (path, kind) applied
    made = {}  # in the hidden tmpfs: path -> "dir" (on the way to what follows) or "end"
    tmpfs = {}  # hidden directory -> the st_dev of its tmpfs
    to_seal = []  # those of them still writable
    blanked = []
    for path, kind in actions:
        over = max((a for a in done if within(path, a[0])), key=lambda a: len(a[0]), default=None)
        if kind == 1:
            if within(path, root) or (over and over[1] == 1):
                continue  # inside the working directory, or hidden already
            try:
                before = os.stat(path)
            except OSError:
                fail("could not hide " + path)
            if stat.S_ISDIR(before.st_mode):
                # read-only at once, unless something is to be bound back in it
                filled = path == "/dev" or any(k != 1 and p.startswith(path + "/") for p, k in actions)
                options = "mode=0755,size=64k" + ("" if filled else ",ro")
                if not run("-t", "tmpfs", "-o", options, "nexus-hidden", path):
                    fail("could not hide " + path)
                tmpfs[path] = os.stat(path).st_dev
                if filled:
                    to_seal.append(path)
                if tmpfs[path] == before.st_dev:
                    fail(path + " is not hidden")
            else:
                if not run("-c", "--bind", f"/proc/{me}/fd/{fds['/dev/null']}", path):
                    fail("could not hide " + path)
                blanked.append(path)
        else:
            if path not in fds or not over or over[1] != 1:
                continue  # missing, or readable anyway
            step = os.path.dirname(path)
            while step != over[0]:
                made.setdefault(step, "dir")
                step = os.path.dirname(step)
            made[path] = "end"
            try:
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                if stat.S_ISDIR(os.fstat(fds[path]).st_mode):
                    os.makedirs(path, mode=0o755, exist_ok=True)
                else:
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
            except OSError:
                fail("could not keep " + path + " readable")
            if not run("-c", "--rbind", f"/proc/{me}/fd/{fds[path]}", path):
                fail("could not keep " + path + " readable")
        done.append((path, kind))
    if "/dev" in tmpfs:
        for name, target in (("fd", ""), ("stdin", "/0"), ("stdout", "/1"), ("stderr", "/2")):
            try:
                os.symlink("/proc/self/fd" + target, "/dev/" + name)
            except OSError:
                fail("could not make /dev/" + name)
            made["/dev/" + name] = "end"
    for path in to_seal:
        if not run("-o", "remount,bind,ro", path):
            fail("could not make " + path + " read-only")

    for path, dev in tmpfs.items():
        try:
            extra = "" if os.stat(path).st_dev == dev else path
            extra = extra or unexpected(path)
        except OSError:
            extra = path
        if extra:
            fail(path + " is not hidden (" + extra + " is visible)")
    for path in blanked:
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if not (st and stat.S_ISCHR(st.st_mode) and st.st_rdev == null_device):
            fail(path + " is not hidden")
    for path, kind in done:
        if kind != 1:
            try:
                same = os.path.samestat(os.stat(path), os.fstat(fds[path]))
            except OSError:
                same = False
            if not same:
                fail("could not keep " + path + " readable")
    for fd in [*fds.values(), null]:
        os.close(fd)
    for point in dict.fromkeys(mount_points()):
        if point == root:
            continue
        try:
            writable = not os.statvfs(point).f_flag & os.ST_RDONLY
        except OSError:
            continue  # not reachable from here
        if writable:
            fail("could not make " + point + " read-only")


_setup()
del _setup, _hook_factory, _read_file, _confine, _seccomp


def _run():
    with open("program.py", encoding="utf-8") as f:
        source = f.read()
    code = compile(source, "program.py", "exec")
    main = type(sys)("__main__")
    main.__file__ = "program.py"
    sys.modules["__main__"] = main
    sys.argv = ["program.py"]
    del source
    exec(code, main.__dict__)


_run()
for _stream in (sys.stdout, sys.__stdout__):
    try:
        _stream.flush()
    except Exception:
        pass
sys.audit("nexus.sandbox.done")
'''

_DONE_LINE = _GUARD.splitlines().index('sys.audit("nexus.sandbox.done")') + 1


class SandboxUnavailable(NexusError):
    """Code tasks were asked for where the kernel gives no namespace isolation."""


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


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    cpu_s: int
    max_file_mb: int
    max_processes: int


# Hidden from the program in the namespaces mode (see _private_places): where user data and secrets
# are kept. What the interpreter needs under them is bound back by the launcher.
_PRIVATE_PLACES = (
    "/root",
    "/home",
    "/var",
    "/srv",
    "/mnt",
    "/media",
    "/run",
    "/tmp",
    "/lost+found",
    "/dev",  # all but null, zero, full, random, urandom and the fd, stdin, stdout, stderr links
    "/etc/ssh",
    "/etc/ssl/private",
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
)
# Never hidden as the account's home or the temporary directory (a system account's home can be /
# or /usr/sbin): the interpreter and mount live there.
_SYSTEM_PLACES = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc", "/sys")


def _private_places(workdir: Path) -> list[str]:
    """What the launcher hides: :data:`_PRIVATE_PLACES`, the invoking account's home (``HOME`` and
    the password database's) and the temporary directory that holds ``workdir`` (other runs' and
    programs' files), unless one of those is ``/`` or overlaps a system directory."""
    extra = [os.environ.get("HOME", ""), str(workdir.parent)]
    with contextlib.suppress(KeyError):
        extra.append(pwd.getpwuid(os.getuid()).pw_dir)
    places = list(_PRIVATE_PLACES)
    for path in extra:
        if not path.startswith("/"):
            continue
        path = os.path.realpath(path)
        if path != "/" and not any(
            path == s or path.startswith(s + "/") or s.startswith(path + "/") for s in _SYSTEM_PLACES
        ):
            places.append(path)
    return list(dict.fromkeys(places))


def _command(workdir: Path, mode: str, limits: Limits, done_line: int = _DONE_LINE) -> list[str]:
    """The launcher's command line: the guard with its limits, in new namespaces for
    ``mode == "namespaces"`` (``unshare`` maps the caller to root in the new user namespace;
    the guard remounts and hides :func:`_private_places` with ``mount`` before it applies the
    limits)."""
    mb = 1024 * 1024
    args = [str(workdir), str(limits.memory_mb * mb), str(limits.cpu_s), str(limits.max_file_mb * mb)]
    cmd = [sys.executable, "-I", "-B", "_guard.py", *args, str(limits.max_processes), str(done_line)]
    if mode != "namespaces":
        return cmd
    unshare = shutil.which("unshare") or "unshare"
    flags = [
        "--user",
        "--map-root-user",
        "--net",
        "--mount",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
    ]
    return [unshare, *flags, "--", *cmd, shutil.which("mount") or "mount", *_private_places(workdir)]


# The probe's program: with the guard left out (DONE_LINE 0), only the kernel can refuse the write.
_PROBE = """
open("ok", "w").write("x")
try:
    open({outside!r}, "w").write("x")
except OSError:
    open("refused", "w").write("x")
"""


@functools.cache
def isolation_mode() -> str:
    """``"namespaces"`` when the launcher works in new user, mount, network and PID namespaces
    with every mount but the working directory read-only and the private places hidden (probed
    once, with the guard left out: a write in the working directory must work and one next to it
    must fail, and the launcher's checks must pass); ``"none"`` otherwise."""
    if not (shutil.which("unshare") and shutil.which("mount")):
        return "none"
    probe = Path(tempfile.mkdtemp(prefix="nexus-sandbox-probe-"))
    outside = probe.parent / f"{probe.name}-outside"
    try:
        (probe / "program.py").write_text(_PROBE.format(outside=str(outside)), encoding="utf-8")
        (probe / "_guard.py").write_text(_GUARD, encoding="utf-8")
        limits = Limits(memory_mb=4096, cpu_s=30, max_file_mb=16, max_processes=64)
        cmd = _command(probe, "namespaces", limits, done_line=0)
        subprocess.run(cmd, cwd=probe, input=b"probe\n", capture_output=True, timeout=30)
        if (probe / "ok").exists() and (probe / "refused").exists() and not outside.exists():
            return "namespaces"
    except (OSError, subprocess.SubprocessError):
        pass
    finally:
        with contextlib.suppress(OSError):
            outside.unlink()
        shutil.rmtree(probe, ignore_errors=True)
    return "none"


def require_isolation(allow_unsandboxed: bool = False) -> str:
    """The isolation that code checks will get; raises :class:`SandboxUnavailable` (one line)
    when there is none and ``allow_unsandboxed`` is false."""
    mode = isolation_mode()
    if mode == "none" and not allow_unsandboxed:
        raise SandboxUnavailable(
            "code tasks need user/mount/network/PID namespaces (unshare) to confine generated code, "
            "and this system does not allow them; pass --allow-unsandboxed-code to run it with "
            "resource limits and the in-process guard only"
        )
    return mode


def run_sandboxed(
    program: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    max_file_mb: int = 16,
    max_processes: int = 1,
    output_chars: int = 2000,
    allow_unsandboxed: bool = False,
    namespaces: bool | None = None,
) -> SandboxResult:
    """Run the Python source ``program`` confined (see the module docstring).

    ``passed`` when it ran to its end (the completion marker is in stdout) and exited with status
    0 within ``timeout_s`` wall seconds; ``timeout`` when it was killed for time (wall clock or
    ``RLIMIT_CPU``); ``failed`` otherwise (an assertion, an exception, an early exit, a refused
    operation, a memory limit).

    ``namespaces``: ``None`` uses them when available (else, with ``allow_unsandboxed``, runs
    with the limits and the guard only; without it, raises :class:`SandboxUnavailable`);
    ``False`` runs without them (only with ``allow_unsandboxed``).
    """
    if namespaces is False:
        if not allow_unsandboxed:
            raise SandboxUnavailable("running code without namespaces needs allow_unsandboxed=True")
        mode = "none"
    else:
        mode = require_isolation(allow_unsandboxed)
    workdir = Path(tempfile.mkdtemp(prefix="nexus-sandbox-"))
    try:
        (workdir / "program.py").write_text(program, encoding="utf-8")
        (workdir / "_guard.py").write_text(_GUARD, encoding="utf-8")
        limits = Limits(memory_mb, max(1, int(timeout_s) + 1), max_file_mb, max_processes)
        cmd = _command(workdir, mode, limits)
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(workdir),
            "TMPDIR": str(workdir),
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
        }
        marker = f"nexus-sandbox-done-{secrets.token_hex(16)}"
        # Output goes to unlinked files, not pipes: RLIMIT_FSIZE then bounds it too (a program
        # printing without end is stopped at max_file_mb instead of filling this process's memory).
        with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
            start = time.monotonic()
            proc = subprocess.Popen(
                cmd,
                cwd=workdir,
                env=env,
                stdin=subprocess.PIPE,
                stdout=out_file,
                stderr=err_file,
                start_new_session=True,  # own process group, killed as a whole
            )
            timed_out = False
            try:
                proc.communicate(input=f"{marker}\n".encode(), timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc.pid)
                proc.wait()
            out, err = (_read_back(f) for f in (out_file, err_file))
        seconds = time.monotonic() - start
        code = proc.returncode
        stdout = out.decode("utf-8", "replace")
        stderr = err.decode("utf-8", "replace")
        finished = f"\n{marker}\n" in stdout
        stdout = stdout.replace(f"\n{marker}\n", "", 1) if finished else stdout
        killed = code in (-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU, 128 + signal.SIGKILL)
        if timed_out or killed and seconds >= timeout_s * 0.5:
            status = "timeout"
        elif code == 0 and finished:
            status = "passed"
        else:
            status = "failed"
            if code == 0:
                stderr += "sandbox: the program exited before its end (its tests did not all run)\n"
        return SandboxResult(status, code, round(seconds, 4), stdout[-output_chars:], stderr[-output_chars:])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _read_back(file) -> bytes:
    file.seek(0)
    return file.read()


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The program that checks one HumanEval completion: prompt + completion + tests + ``check(f)``
    as its last statement (the sandbox's completion marker follows it)."""
    return f"{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n"
