import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from nexus.benchmark import sandbox
from nexus.benchmark.sandbox import humaneval_program, isolation_mode, run_sandboxed

REPO = Path(__file__).resolve().parents[1]
SRC = Path(sandbox.__file__).resolve().parents[2]  # the nexus under test, for the other user
ADD_PROMPT = "def add(a, b):\n"
ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
# a name next to the sandbox's working directory (in the temporary directory), never created
PARENT_ESCAPE = f"nexus-sandbox-escape-{os.getpid()}"


@pytest.fixture(scope="module")
def outside():
    """A directory outside the sandbox that root and the unprivileged user could both write to
    (mode 0777), so that only the sandbox stands between a program and a file in it."""
    path = Path(tempfile.mkdtemp(prefix="nexus-sandbox-test-"))
    path.chmod(0o777)
    (path / "victim").write_text("x")
    (path / "victim").chmod(0o644)
    yield path
    assert (path / "victim").stat().st_mode & 0o7777 == 0o644
    shutil.rmtree(path, ignore_errors=True)


def cases(outside: Path) -> dict[str, tuple[str, str]]:
    """name -> (program, expected status). Every attempt on the outside directory must fail."""
    target = str(outside / "escaped")
    write = f"open({target!r}, 'w').write('x')\nprint('ESCAPED')\n"
    return {
        "pass": ("assert sum([1, 2]) == 3\nprint('fine')\n", "passed"),
        "fail": ("assert 1 + 1 == 3\n", "failed"),
        "timeout": ("while True:\n    pass\n", "timeout"),
        "fork_bomb": ("import os\nwhile True:\n    os.fork()\n", "failed"),
        "subprocess": ("import subprocess\nsubprocess.run(['true'])\n", "failed"),
        "threads_work": (  # the filter refuses processes, not threads (for any account)
            "import threading\nt = threading.Thread(target=print, args=('t',))\nt.start()\nt.join()\n",
            "passed",
        ),
        "humaneval_pass": (humaneval_program(ADD_PROMPT, "    return a + b\n", ADD_TEST, "add"), "passed"),
        "humaneval_wrong": (humaneval_program(ADD_PROMPT, "    return a - b\n", ADD_TEST, "add"), "failed"),
        # early exits before the tests ran: all four kinds, and inside a HumanEval completion
        "sys_exit": ("import sys\nsys.exit(0)\nassert False\n", "failed"),
        "os_exit": ("import os\nos._exit(0)\nassert False\n", "failed"),
        "exit": ("exit()\nassert False\n", "failed"),
        "raise_systemexit": ("raise SystemExit\nassert False\n", "failed"),
        "humaneval_early_exit": (
            humaneval_program(ADD_PROMPT, "    return a - b\n\nimport sys\nsys.exit(0)\n", ADD_TEST, "add"),
            "failed",
        ),
        # forging the completion marker: it is not on stdin, in argv or in a file, and only the
        # launcher's own line can release it
        "marker_from_stdin": ("import sys, os\nprint(sys.stdin.read())\nos._exit(0)\n", "failed"),
        "marker_forged_event": ("import sys, os\nsys.audit('nexus.sandbox.done')\nos._exit(0)\n", "failed"),
        "marker_from_files": (
            "import os\nfor n in os.listdir('.'):\n    print(open(n).read())\nprint(open('/proc/self/cmdline').read())\n"
            "os._exit(0)\n",
            "failed",
        ),
        # writes outside the working directory, direct and through every known bypass
        "write_outside": (write, "failed"),
        "guard_via_main": (
            "import __main__\n__main__._inside = lambda path: True\n__main__._DENIED_PREFIXES = ()\n"
            "__main__._DENIED_MODULES = set()\n" + write,
            "failed",
        ),
        "guard_via_dir_fd": (
            f"import os\nfd = os.open({str(outside)!r}, os.O_RDONLY)\n"
            "out = os.open('escaped', os.O_WRONLY | os.O_CREAT, dir_fd=fd)\nos.write(out, b'x')\nprint('ESCAPED')\n",
            "failed",
        ),
        "guard_via_builtins": (
            "import builtins\nbuiltins.isinstance = lambda *a: True\nbuiltins.type = lambda *a: int\n"
            + write,
            "failed",
        ),
        "guard_via_os_path": (
            "import os, posixpath\nfake = lambda p, **k: os.getcwd() + '/x'\nos.path.realpath = fake\n"
            "posixpath.realpath = fake\nos.fsdecode = lambda p: 'x'\n" + write,
            "failed",
        ),
        "guard_via_gc": (
            "import gc\nfor o in gc.get_objects():\n    if callable(o) and getattr(o, '__name__', '') == 'hook':\n"
            "        print(o.__closure__)\n" + write,
            "failed",
        ),
        "guard_via_traceback": (
            f"try:\n    open({target!r}, 'w')\nexcept PermissionError as e:\n    tb = e.__traceback__\n"
            "    while tb.tb_next:\n        tb = tb.tb_next\n    f = tb.tb_frame\n    f.f_globals.clear()\n"
            + write,
            "failed",
        ),
        "guard_via_frames": (
            "import sys\nf = sys._getframe()\nwhile f.f_back:\n    f = f.f_back\n    f.f_globals.clear()\n"
            + write,
            "failed",
        ),
        "guard_via_chdir_and_dir_fd": (
            f"import os\nos.mkdir('a')\nfd = os.open('.', os.O_RDONLY)\nos.chdir('a')\n"
            f"os.close(os.open('../{PARENT_ESCAPE}', os.O_WRONLY | os.O_CREAT, dir_fd=fd))\nprint('ESCAPED')\n",
            "failed",
        ),
        "guard_via_fd_metadata": (
            f"import os\nfd = os.open({str(outside / 'victim')!r}, os.O_RDONLY)\nos.fchmod(fd, 0o666)\nprint('changed')\n",
            "failed",
        ),
        "guard_via_device_node": (
            "import os, stat\nos.mknod('dev', 0o600 | stat.S_IFCHR, os.makedev(1, 3))\nprint('made')\n",
            "failed",
        ),
        "write_dev_null": ("import os\nwith open(os.devnull, 'w') as f:\n    print('x', file=f)\n", "passed"),
        "guard_via_str_subclass": (
            "import sys\nclass S(str):\n    def __hash__(self):\n"
            "        for v in list(sys._getframe(1).f_locals.values()):\n"
            "            for c in getattr(v, '__closure__', None) or ():\n"
            "                if isinstance(c.cell_contents, str) and c.cell_contents.startswith('/'):\n"
            "                    c.cell_contents = ''\n        return 0\n"
            "try:\n    sys.audit('import', S('x'))\nexcept Exception:\n    pass\n" + write,
            "failed",
        ),
        "traceback_module": (
            "import traceback\ntry:\n    1 / 0\nexcept ZeroDivisionError:\n    traceback.print_exc()\n",
            "passed",
        ),
        "guard_via_crafted_bytecode": (
            "def f():\n    return 1\nf.__code__ = f.__code__.replace(co_code=bytes(len(f.__code__.co_code)))\n",
            "failed",
        ),
        "guard_via_marshal": (
            "import marshal\nmarshal.loads(marshal.dumps(compile('1', 'x', 'eval')))\n",
            "failed",
        ),
        "marker_from_memory": ("open('/proc/self/mem', 'rb')\n", "failed"),
        "guard_via_symlink": (
            f"import os\nos.symlink({target!r}, 'link')\nopen('link', 'w').write('x')\n",
            "failed",
        ),
        "guard_via_pathlike": (
            f"class P:\n    def __fspath__(self):\n        return {target!r}\nopen(P(), 'w').write('x')\n",
            "failed",
        ),
        "guard_via_exec": (f"import os\nos.execv('/bin/sh', ['sh', '-c', 'echo x > {target}'])\n", "failed"),
        "guard_via_ctypes": ("import ctypes\n", "failed"),
        "guard_via_signal": ("import _signal\n", "failed"),
        "write_inside": (
            "open('mine.txt', 'w').write('x')\nassert open('mine.txt').read() == 'x'\n",
            "passed",
        ),
    }


# Runs the cases in one process and prints {case: status} as JSON; used as the unprivileged user.
RUNNER = """
import json, sys
from nexus.benchmark import sandbox
from nexus.benchmark.sandbox import isolation_mode, run_sandboxed
programs = json.loads(sys.argv[1])
namespaces = None if sys.argv[2] == "auto" else False
results = {"isolation": isolation_mode()}
for name, program in programs.items():
    timeout = 1.5 if name == "timeout" else 10
    options = {} if namespaces is None and results["isolation"] != "none" else {
        "allow_unsandboxed": True, "namespaces": namespaces}
    results[name] = run_sandboxed(program, timeout_s=timeout, **options).status
print(json.dumps(results))
"""


def run_cases(outside: Path, namespaces: bool | None) -> dict[str, str]:
    results = {}
    for name, (program, _) in cases(outside).items():
        timeout = 1.5 if name == "timeout" else 10
        guard_only = namespaces is False or isolation_mode() == "none"
        options = {"allow_unsandboxed": True, "namespaces": namespaces} if guard_only else {}
        results[name] = run_sandboxed(program, timeout_s=timeout, **options).status
    return results


def expected(outside: Path) -> dict[str, str]:
    return {name: status for name, (_, status) in cases(outside).items()}


@pytest.mark.parametrize("namespaces", [None, False], ids=["namespaces-if-available", "guard-only"])
def test_every_case_as_this_user(outside, namespaces):
    results = run_cases(outside, namespaces)
    assert not {name: status for name, status in results.items() if status != expected(outside)[name]}
    assert not (outside / "escaped").exists()
    assert not (Path(tempfile.gettempdir()) / PARENT_ESCAPE).exists()
    assert (outside / "victim").stat().st_mode & 0o7777 == 0o644


def _unprivileged() -> tuple[list[str], str]:
    """(command prefix, python) that runs as an unprivileged account; pytest.skip where none can."""
    if os.geteuid() != 0:
        return [], sys.executable  # this account already is one
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("running as root without setpriv: cannot switch to an unprivileged account")
    prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC)}
    # The sandbox starts sys.executable as that user, so it must be executable by that user (a
    # venv under /root is not): the first python that imports nexus as that user, via a shell.
    for python in dict.fromkeys([sys.executable, os.path.realpath(sys.executable), "/usr/bin/python3"]):
        probe = [*prefix, "/bin/sh", "-c", 'exec "$0" -c "import nexus.benchmark.sandbox"', python]
        if subprocess.run(probe, env=env, capture_output=True, timeout=60).returncode == 0:
            return prefix, python
    pytest.skip("no python that uid 65534 (nobody) can run and import nexus with")


@pytest.mark.parametrize("mode", ["auto", "guard-only"])
def test_same_results_as_an_unprivileged_user(outside, mode):
    """The same pass/fail as an ordinary account (root is exempt from RLIMIT_NPROC, an ordinary
    account is not: the launcher must start before the process limit applies)."""
    prefix, python = _unprivileged()
    programs = {name: program for name, (program, _) in cases(outside).items()}
    cmd = [*prefix, python, "-c", RUNNER, json.dumps(programs), mode]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC), "LANG": "C.UTF-8"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout)
    isolation = results.pop("isolation")
    wrong = {name: status for name, status in results.items() if status != expected(outside)[name]}
    assert not wrong, (isolation, wrong)
    assert not (outside / "escaped").exists()
    assert not (Path(tempfile.gettempdir()) / PARENT_ESCAPE).exists()
    assert (outside / "victim").stat().st_mode & 0o7777 == 0o644


def test_passing_and_failing_programs():
    ok = run_sandboxed("assert sum([1, 2]) == 3\nprint('fine')")
    assert ok.passed and ok.stdout.strip() == "fine"  # the completion marker is not shown
    bad = run_sandboxed("assert 1 + 1 == 3")
    assert bad.status == "failed" and "AssertionError" in bad.stderr
    early = run_sandboxed("import sys\nsys.exit(0)\n")
    assert early.status == "failed" and early.returncode == 0
    assert "exited before its end" in early.stderr.strip().splitlines()[-1]


def test_infinite_loop_is_killed_and_reported_as_timeout():
    start = time.monotonic()
    result = run_sandboxed("while True:\n    pass\n", timeout_s=1.5)
    assert result.status == "timeout" and not result.passed
    assert time.monotonic() - start < 6


def test_fork_bomb_is_refused():
    result = run_sandboxed("import os\nwhile True:\n    os.fork()\n", timeout_s=5)
    assert result.status == "failed" and "not allowed" in result.stderr


def test_the_kernel_confines_the_program_without_the_guard(outside, tmp_path):
    """With the audit hook left out, the kernel still refuses a new process, exec and (with
    namespaces) a write outside the working directory: the guard is defence in depth only."""
    target = outside / "kernel-escape"
    program = (
        "import os, threading\nt = threading.Thread(target=print, args=('thread',))\nt.start()\nt.join()\n"
        "for name, call in [('fork', os.fork), ('exec', lambda: os.execv('/bin/true', ['true']))]:\n"
        "    try:\n        pid = call()\n    except OSError:\n        print(name, 'refused')\n"
        "    else:\n        print(name, 'worked') if pid else os._exit(0)\n"
        f"try:\n    open({str(target)!r}, 'w')\nexcept OSError:\n    print('write refused')\n"
    )
    (tmp_path / "program.py").write_text(program)
    (tmp_path / "_guard.py").write_text(sandbox._GUARD.replace("    sys.addaudithook(hook)", "    pass"))
    modes = ["namespaces", "none"] if isolation_mode() == "namespaces" else ["none"]
    for mode in modes:
        cmd = sandbox._command(tmp_path, mode, sandbox.Limits(1024, 10, 16, 1))
        out = subprocess.run(cmd, cwd=tmp_path, input=b"m\n", capture_output=True, timeout=60).stdout.decode()
        assert "thread" in out and "fork refused" in out and "exec refused" in out, (mode, out)
        if mode == "namespaces":
            assert "write refused" in out and not target.exists()
    target.unlink(missing_ok=True)


def test_write_outside_the_directory_fails_and_leaves_no_file(outside):
    target = outside / "escaped.txt"
    result = run_sandboxed(f"open({str(target)!r}, 'w').write('x')\n")
    assert result.status == "failed"
    assert not target.exists()
    inside = run_sandboxed("open('mine.txt', 'w').write('x')\nassert open('mine.txt').read() == 'x'\n")
    assert inside.passed


# Reads what it is given (files: their text or the error's name; directories: their names) and
# where it runs from, as JSON on stdout.
READER = """
import json, os, sys
out = {"files": {}, "dirs": {}, "cwd": os.getcwd(), "interpreter": [sys.prefix, sys.base_prefix, *sys.path]}
for path in %r:
    try:
        with open(path, "rb") as f:
            out["files"][path] = f.read(200).decode("utf-8", "replace")
    except OSError as e:
        out["files"][path] = type(e).__name__
for path in %r:
    try:
        out["dirs"][path] = sorted(os.listdir(path))
    except OSError as e:
        out["dirs"][path] = type(e).__name__
print(json.dumps(out))
"""


def _read_in_sandbox(files: list[str], dirs: list[str]) -> dict:
    result = run_sandboxed(READER % (files, dirs), output_chars=100_000)
    assert result.passed, result.stderr
    return json.loads(result.stdout)


def _only_the_way_to_kept_paths(seen: dict) -> dict[str, list[str]]:
    """Names listed in a hidden directory that are not on the way to the interpreter's own
    directories or to the working directory (the only things bound back there)."""
    kept = [*seen["interpreter"], seen["cwd"]]
    return {
        path: [n for n in names if not any(within(k, f"{path.rstrip('/')}/{n}") for k in kept)]
        for path, names in seen["dirs"].items()
        if isinstance(names, list)
    }


def within(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


@pytest.fixture
def needs_namespaces():
    if isolation_mode() != "namespaces":
        pytest.skip("reads are confined only with the namespaces isolation (unshare)")


def test_home_and_temporary_files_cannot_be_read_or_listed(needs_namespaces):
    """Files planted where this account keeps its data (its home, /home, the temporary directory
    next to the sandbox's working directory, /var/tmp, /dev/shm) are neither readable nor listed."""
    name = f".nexus-sandbox-secret-{os.getpid()}"
    places = dict.fromkeys(
        [str(Path.home()), "/root", "/home", tempfile.gettempdir(), "/var/tmp", "/dev/shm"]
    )
    planted = []
    try:
        for place in places:
            with contextlib.suppress(OSError):
                (Path(place) / name).write_text("SECRET")
                planted.append(str(Path(place) / name))
        assert planted
        seen = _read_in_sandbox([*planted, "/etc/shadow"], list(places))
    finally:
        for path in planted:
            Path(path).unlink(missing_ok=True)
    assert all(seen["files"][p] == "FileNotFoundError" for p in planted), seen["files"]
    assert seen["files"]["/etc/shadow"] in ("", "FileNotFoundError")  # /dev/null over it
    assert not any(name in names for names in seen["dirs"].values()), seen["dirs"]
    # nor anything else there (/home's other accounts, other runs' temporary files)
    assert not any(_only_the_way_to_kept_paths(seen).values()), seen["dirs"]


def test_a_home_elsewhere_and_the_temporary_directory_are_hidden(needs_namespaces, tmp_path, monkeypatch):
    """HOME (wherever it is) and the directory that holds the working directory are hidden on
    their own, not only as part of /home or /tmp; what is next to them stays readable."""
    home, temp, public = tmp_path / "home", tmp_path / "tmp", tmp_path / "public"
    for path in (home, temp / "other-run"):
        path.mkdir(parents=True)
        (path / "secret").write_text("SECRET")
    public.write_text("PUBLIC")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    fixed = tuple(p for p in sandbox._PRIVATE_PLACES if not within(str(tmp_path.resolve()), p))
    monkeypatch.setattr(sandbox, "_PRIVATE_PLACES", fixed)
    places = sandbox._private_places(temp / "nexus-sandbox-x")
    assert str(home.resolve()) in places and str(temp.resolve()) in places
    if any(within(str(public.resolve()), p) for p in places):
        pytest.skip("this account's home holds the temporary directory")
    files = [str(home / "secret"), str(temp / "other-run" / "secret"), str(public)]
    seen = _read_in_sandbox(files, [str(tmp_path), str(home), str(temp)])
    assert seen["files"] == {files[0]: "FileNotFoundError", files[1]: "FileNotFoundError", files[2]: "PUBLIC"}
    assert seen["dirs"][str(tmp_path)] == ["home", "public", "tmp"]
    assert seen["dirs"][str(home)] == [] and seen["dirs"][str(temp)] == [Path(seen["cwd"]).name]


def test_an_interpreter_inside_a_hidden_home_still_works(needs_namespaces, monkeypatch):
    """With HOME the directory that holds this interpreter's prefix (a venv in one's home), the
    prefixes and sys.path entries are bound back read-only; their neighbours stay hidden."""
    home = os.path.dirname(os.path.realpath(sys.prefix))
    monkeypatch.setenv("HOME", home)
    if home not in sandbox._private_places(Path(tempfile.gettempdir()) / "x"):
        pytest.skip(f"{home} is a system directory: never hidden")
    program = (
        "import collections, datetime, decimal, hashlib, json, math, re, sys, unicodedata, zlib\n"
        "assert json.loads(json.dumps({'a': [1, 2]})) == {'a': [1, 2]} and math.isqrt(17) == 4\n"
        "assert collections.Counter('abca')['a'] == 2 and re.fullmatch(r'a+b', 'aab')\n"
        "assert str(decimal.Decimal(1) / 4) == '0.25' and zlib.decompress(zlib.compress(b'x')) == b'x'\n"
        "assert hashlib.sha256(b'').hexdigest().startswith('e3b0') and unicodedata.name('a')\n"
        "import os\nassert sorted(os.listdir('.')) == ['_guard.py', 'program.py']\n"
        "assert 'collections' in open('program.py').read() and os.path.isdir(sys.prefix)\n"
        "print(json.dumps({'cwd': os.getcwd(), 'interpreter': [sys.prefix, sys.base_prefix, *sys.path],\n"
        f"                  'dirs': {{{home!r}: sorted(os.listdir({home!r}))}}}}))\n"
    )
    result = run_sandboxed(program, output_chars=100_000)
    assert result.passed, result.stderr
    seen = json.loads(result.stdout)
    assert seen["dirs"][home], "the interpreter's directories are bound back"
    assert not any(_only_the_way_to_kept_paths(seen).values()), (seen["dirs"], os.listdir(home))


def test_private_places_given_to_the_launcher(monkeypatch, tmp_path):
    workdir = tmp_path / "nexus-sandbox-x"
    places = sandbox._private_places(workdir)
    assert {"/root", "/home", "/tmp", "/var", "/run", "/dev", "/etc/shadow"} <= set(places)
    assert str(tmp_path.resolve()) in places  # other runs' working directories
    assert sandbox._command(workdir, "namespaces", sandbox.Limits(1, 1, 1, 1))[-len(places) :] == places
    assert sandbox._command(workdir, "none", sandbox.Limits(1, 1, 1, 1))[-1] == str(sandbox._DONE_LINE)
    monkeypatch.setenv("HOME", "/srv/somebody/else")
    assert "/srv/somebody/else" in sandbox._private_places(workdir)
    for system_home in ("/", "/usr/sbin", "/bin", "/usr", "/etc"):
        monkeypatch.setenv("HOME", system_home)
        assert system_home not in sandbox._private_places(workdir)[len(sandbox._PRIVATE_PLACES) :]


@pytest.mark.parametrize(
    ("tmpfs", "message"), [("exit 0", r"\S+ is not hidden"), ("exit 1", r"could not hide \S+")]
)
def test_the_program_does_not_run_when_hiding_fails(needs_namespaces, monkeypatch, tmp_path, tmpfs, message):
    """A mount that does nothing (or fails) for the tmpfs over a hidden place: the launcher's
    check refuses to run the program, with one line."""
    which = shutil.which
    wrapper = tmp_path / "mount"
    wrapper.write_text(f'#!/bin/sh\ncase " $* " in *" tmpfs "*) {tmpfs};; esac\nexec {which("mount")} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr(
        sandbox.shutil, "which", lambda name: str(wrapper) if name == "mount" else which(name)
    )
    result = run_sandboxed("print('ran')\n")
    assert result.status == "failed" and "ran" not in result.stdout
    assert re.fullmatch(f"sandbox: {message}\n", result.stderr), result.stderr


def test_endless_output_is_bounded_by_the_file_size_limit():
    start = time.monotonic()
    result = run_sandboxed("while True:\n    print('x' * 65536)\n", timeout_s=8, max_file_mb=4)
    assert result.status == "failed" and "File too large" in result.stderr
    assert time.monotonic() - start < 6 and len(result.stdout) <= 2000


def test_a_symlinked_temporary_directory_works(tmp_path, monkeypatch):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "link"))
    program = "open('mine.txt', 'w').write('x')\nassert open('mine.txt').read() == 'x'\n"
    for namespaces in (None, False):
        result = run_sandboxed(program, namespaces=namespaces, allow_unsandboxed=True)
        assert result.passed, result.stderr


def test_no_network_and_memory_limit():
    net = run_sandboxed("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)\n", timeout_s=5)
    assert net.status == "failed"
    mem = run_sandboxed("x = bytearray(3 * 1024 ** 3)\n", memory_mb=512)
    assert mem.status == "failed" and "MemoryError" in mem.stderr


def test_common_modules_work_under_the_guard():
    program = (
        "import collections, enum, functools, itertools, json, logging, math, re, threading, typing\n"
        "P = collections.namedtuple('P', 'x y')\nclass C(enum.Enum):\n    A = 1\n"
        "T = typing.NamedTuple('T', [('a', int)])\nlogging.getLogger('x').info('quiet')\n"
        "import sys\nsys.setrecursionlimit(3000)\ndef depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\n"
        "assert depth(2500) == 2500 and P(1, 2).y == 2\n"
    )
    result = run_sandboxed(program)
    assert result.passed, result.stderr


def test_humaneval_program_runs_the_check():
    assert run_sandboxed(humaneval_program(ADD_PROMPT, "    return a + b\n", ADD_TEST, "add")).passed
    assert not run_sandboxed(humaneval_program(ADD_PROMPT, "    return a - b\n", ADD_TEST, "add")).passed


def test_without_namespaces_code_is_refused_unless_allowed(monkeypatch):
    monkeypatch.setattr(sandbox, "isolation_mode", lambda: "none")
    with pytest.raises(sandbox.SandboxUnavailable) as err:
        run_sandboxed("assert True\n")
    message = str(err.value)
    assert "\n" not in message and "--allow-unsandboxed-code" in message
    with pytest.raises(sandbox.SandboxUnavailable):
        run_sandboxed("assert True\n", namespaces=False)
    assert run_sandboxed("assert True\n", allow_unsandboxed=True).passed
    assert sandbox.require_isolation(allow_unsandboxed=True) == "none"


def test_probe_reports_none_without_unshare(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    assert sandbox.isolation_mode.__wrapped__() == "none"


def _benchmark_cli(args, monkeypatch, capsys, tmp_path, model_dir):
    from nexus.benchmark import runner
    from nexus.cli import main
    from nexus.errors import NexusError

    def reached(role, spec, cfg):
        raise NexusError("reached model loading")

    monkeypatch.setattr(sandbox, "isolation_mode", lambda: "none")
    monkeypatch.setattr(runner, "load_for_benchmark", reached)
    monkeypatch.chdir(tmp_path)
    models = ["--student", str(model_dir), "--teacher", str(model_dir)]
    code = main(["benchmark", *models, "--out", str(tmp_path), *args])
    return code, capsys.readouterr().err.strip().splitlines()


def test_cli_refuses_code_tasks_without_isolation(monkeypatch, capsys, tmp_path, tiny_llama_dir):
    code, err = _benchmark_cli(["--tasks", "builtin-code"], monkeypatch, capsys, tmp_path, tiny_llama_dir)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("nexus: error: code tasks need") and "--allow-unsandboxed-code" in err[0]
    # with the flag, or without code tasks, the run goes on to load the models
    for args in (["--tasks", "builtin-code", "--allow-unsandboxed-code"], ["--tasks", "builtin-math"]):
        code, err = _benchmark_cli(args, monkeypatch, capsys, tmp_path, tiny_llama_dir)
        assert code == 2 and err == ["nexus: error: reached model loading"], (args, err)


def test_benchmark_suite_script_has_the_flag():
    script = REPO / "scripts" / "benchmark_suite.py"
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--allow-unsandboxed-code" in out.stdout
