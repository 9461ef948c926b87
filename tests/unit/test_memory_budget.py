"""The suite's memory budget (tests/memory_budget.py) measures what a module holds, in the worker and in what it
starts, and fails the run over budget: a small run of pytest with the plugin, its budget lowered below what a test
module allocates."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
MIB = 1 << 20
HOLDS = 300  # MiB, touched, so that they are resident
MODULES = {
    "test_holds": f"""
def test_holds():
    block = bytearray({HOLDS} * {MIB})
    block[::4096] = b"x" * len(block[::4096])
""",
    "test_starts": f"""
import subprocess, sys

def test_starts():  # a child that holds {HOLDS} MiB for a second (read while it runs)
    code = "b = bytearray({HOLDS} * {MIB}); b[::4096] = b'x' * len(b[::4096]); import time; time.sleep(1)"
    subprocess.run([sys.executable, "-c", code], check=True)
""",
    "test_holds_and_starts": f"""
import subprocess, sys

def test_holds_and_starts():  # a worker holding {HOLDS} MiB starts a small child
    block = bytearray({HOLDS} * {MIB})
    block[::4096] = b"x" * len(block[::4096])
    subprocess.run([sys.executable, "-c", "import time; time.sleep(0.5)"], check=True)
""",
    "test_small": "def test_small():\n    assert sum(range(10)) == 45\n",
}

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measured on Linux only")


def run(pytester: pytest.Pytester, budget: str, *modules: str):
    pytester.makepyfile(**{name: MODULES[name] for name in modules})
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), "LR_MEMORY_BUDGET": budget}
    for name, value in env.items():
        pytester._monkeypatch.setenv(name, value)
    return pytester.runpytest_subprocess("-p", "memory_budget", "-p", "no:cacheprovider", "-p", "no:xdist")


def test_a_module_over_the_workers_budget_fails_the_run_by_name(pytester):
    over = run(pytester, "worker=0.25", "test_holds", "test_small")
    assert over.ret == pytest.ExitCode.TESTS_FAILED
    over.stdout.fnmatch_lines(["memory budget: test_holds.py: worker peaked at 0.3* GiB, over its budget of 0.25 GiB"])
    assert "memory budget: test_small.py" not in over.stdout.str()  # measured per test: the small one is not blamed
    # Within the budget, the same run passes and prints its table.
    within = run(pytester, "", "test_holds", "test_small")
    assert within.ret == pytest.ExitCode.OK, within.stdout.str()
    within.stdout.fnmatch_lines(["*memory: peak per test module (GiB)*", "test_holds.py *", "test_small.py *"])


@pytest.mark.parametrize("module", ["test_starts"])
def test_a_subprocess_over_its_budget_fails_the_run(pytester, module):
    over = run(pytester, "subprocess=0.25", module)
    assert over.ret == pytest.ExitCode.TESTS_FAILED, over.stdout.str()
    over.stdout.fnmatch_lines([f"memory budget: {module}.py: subprocess (*) peaked at 0.3* GiB, over its budget of "
                               "0.25 GiB"])
    assert f"memory budget: {module}.py: worker peaked" not in over.stdout.str()


def test_a_small_child_of_a_large_worker_is_small(pytester):
    """A forked child reports its parent's memory as its own until it execs (and getrusage's RUSAGE_CHILDREN keeps
    that figure for every child): the budget reads neither, so a small child of a large worker is not blamed."""
    result = run(pytester, "subprocess=0.25", "test_holds_and_starts")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    row = [line for line in result.stdout.lines if line.startswith("test_holds_and_starts.py")][-1]  # the table's
    assert float(row.split()[1]) >= 0.29  # the worker's own peak: its 300 MiB


def test_a_budget_entry_it_does_not_know_is_refused(pytester):
    result = run(pytester, "workers=1", "test_small")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "LR_MEMORY_BUDGET: unknown entry 'workers'" in result.stderr.str()


def test_the_suite_runs_with_the_budget(request):
    """The plugin is the root conftest's, so every run of the suite, CI's included, is measured and judged."""
    plugin = request.config.pluginmanager.get_plugin("memory-budget")
    assert plugin is not None and plugin.limits["worker"] <= 6 and plugin.limits["subprocess"] <= 4.5
    assert 2 * plugin.limits["worker and its processes"] <= 14  # two workers within 14 GiB
