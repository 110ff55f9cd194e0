import time

from nexus.benchmark.sandbox import humaneval_program, run_sandboxed


def test_passing_and_failing_programs():
    ok = run_sandboxed("assert sum([1, 2]) == 3\nprint('fine')")
    assert ok.passed and ok.stdout.strip() == "fine"
    bad = run_sandboxed("assert 1 + 1 == 3")
    assert bad.status == "failed" and "AssertionError" in bad.stderr


def test_infinite_loop_is_killed_and_reported_as_timeout():
    start = time.monotonic()
    result = run_sandboxed("while True:\n    pass\n", timeout_s=1.5)
    assert result.status == "timeout" and not result.passed
    assert time.monotonic() - start < 6


def test_fork_bomb_is_refused():
    result = run_sandboxed("import os\nwhile True:\n    os.fork()\n", timeout_s=5)
    assert result.status == "failed" and "not allowed" in result.stderr
    spawn = run_sandboxed("import subprocess\nsubprocess.run(['true'])\n", timeout_s=5)
    assert spawn.status == "failed" and not spawn.passed


def test_write_outside_the_directory_fails_and_leaves_no_file(tmp_path):
    target = tmp_path / "escaped.txt"
    result = run_sandboxed(f"open({str(target)!r}, 'w').write('x')\n")
    assert result.status == "failed"
    assert not target.exists()
    inside = run_sandboxed("open('mine.txt', 'w').write('x')\nassert open('mine.txt').read() == 'x'\n")
    assert inside.passed


def test_no_network_and_memory_limit():
    net = run_sandboxed("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)\n", timeout_s=5)
    assert net.status == "failed"
    mem = run_sandboxed("x = bytearray(3 * 1024 ** 3)\n", memory_mb=512)
    assert mem.status == "failed" and "MemoryError" in mem.stderr


def test_humaneval_program_runs_the_check():
    prompt = "def add(a, b):\n"
    test = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
    assert run_sandboxed(humaneval_program(prompt, "    return a + b\n", test, "add")).passed
    assert not run_sandboxed(humaneval_program(prompt, "    return a - b\n", test, "add")).passed
