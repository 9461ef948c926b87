"""Memory, measured per test module and held to a budget (a pytest plugin: ``tests/conftest.py`` loads it).

CI runs on 2 cores and 24 GiB, two pytest workers, with 10 GiB left for the OS and the page cache, so the
suite may hold at most 14 GiB at any moment: 7 GiB for each worker together with the interpreters and
servers it starts. Within that, a worker's own peak is at most 6 GiB and any one process it starts at most
4 GiB (:data:`BUDGET_GIB`; ``LR_MEMORY_BUDGET`` overrides them, for the test of this plugin).

Where each figure comes from (Linux's ``/proc``; elsewhere nothing is measured and nothing fails):

- the worker's own peak during a test (setup, call and teardown): ``VmHWM``, reset before each test by
  writing 5 to ``/proc/self/clear_refs`` (``getrusage``'s ``ru_maxrss`` cannot be reset, so after the first
  heavy module it would say nothing of the others);
- the processes the worker starts (bench, the GPU check's dry run, ComfyUI servers, the runner's command
  line) and their own children: a thread reads their ``VmHWM`` (each one's own peak since it started) and
  ``VmRSS`` every :data:`INTERVAL` seconds (a process that lives less than that may be missed). A child not yet
  past ``exec`` (its command line still the worker's) is skipped: until then it reports the worker's memory
  as its own, and so does ``getrusage(RUSAGE_CHILDREN)`` for every child ever started, which is not read;
- the worker with its processes at one moment: the sum of their ``VmRSS`` at one read.

Each worker attaches its figures to the test's teardown report, so they reach the controller under
pytest-xdist; the controller prints one row per module (``memory`` in the summary), fails the run with a
line naming each module over budget (``LR_MEMORY_LOG=FILE`` also has each test's figures written as it
ends, one JSON line each: what a worker the kernel killed was running), and reports the most memory in use on the machine during the run
(``MemTotal - MemAvailable``, read every second: everything running, not only the suite).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

GIB = 1024**3
KIB = 1024
INTERVAL = 0.2
# The pair's 7 GiB keeps two workers within 14 GiB; a process a worker starts may take 4.5 of it (the GPU check's dry
# SDXL bench peaked at 3.6 to 4.2 GiB in four CI runs of one code, 3.0 alone: the margin is for that spread).
BUDGET_GIB = {"worker": 6.0, "subprocess": 4.5, "worker and its processes": 7.0}
PROC = Path("/proc")
MEASURABLE = (PROC / "self" / "clear_refs").exists()


def budget() -> dict[str, float]:
    """:data:`BUDGET_GIB`, with ``LR_MEMORY_BUDGET="worker=1,subprocess=0.5"`` overriding any of its entries."""
    limits = dict(BUDGET_GIB)
    for item in filter(None, os.environ.get("LR_MEMORY_BUDGET", "").split(",")):
        name, _, value = item.partition("=")
        if name.strip() not in limits:
            raise pytest.UsageError(f"LR_MEMORY_BUDGET: unknown entry {name!r} (one of {', '.join(limits)})")
        limits[name.strip()] = float(value)
    return limits


def _status(pid: int | str, *fields: str) -> dict[str, int]:
    """Fields of ``/proc/<pid>/status`` in bytes (missing: the process has ended)."""
    found = {}
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in fields:
                found[name] = int(value.split()[0]) * KIB
    except (OSError, ValueError, IndexError):
        pass
    return found


def _descendants(root: int) -> Iterator[int]:
    """The processes under ``root``, at one read of ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    stack = list(children.get(root, ()))
    while stack:
        pid = stack.pop()
        yield pid
        stack.extend(children.get(pid, ()))


def _label(pid: int) -> str:
    """A short name for a process: its command line's first words, without the interpreter's path."""
    try:
        words = (PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return str(pid)
    words = [Path(w).name if "/" in w else w for w in words if w][:4]
    return " ".join(words)[:60]


def _command_line(pid: int | str) -> bytes:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


class Window:
    """What one process and those it starts held during one test."""

    def __init__(self) -> None:
        self.own_command = _command_line("self")
        self.subprocess = 0
        self.subprocess_label = ""
        self.tree = 0
        self.lock = threading.Lock()

    def sample(self, pid: int) -> None:
        own = _status(pid, "VmRSS").get("VmRSS", 0)
        tree = own
        for child in _descendants(pid):
            if _command_line(child) == self.own_command:  # forked, not yet exec'd: the worker's pages, shared
                continue
            figures = _status(child, "VmRSS", "VmHWM")
            tree += figures.get("VmRSS", 0)
            if figures.get("VmHWM", 0) > self.subprocess:
                with self.lock:
                    self.subprocess, self.subprocess_label = figures["VmHWM"], _label(child)
        with self.lock:
            self.tree = max(self.tree, tree)

    def close(self) -> dict:
        worker = _status("self", "VmHWM").get("VmHWM", 0)
        return {"worker": worker, "subprocess": self.subprocess, "subprocess_label": self.subprocess_label,
                "tree": max(self.tree, worker)}


class Sampler(threading.Thread):
    """Reads this process's tree every :data:`INTERVAL` seconds into the open :class:`Window`."""

    def __init__(self) -> None:
        super().__init__(name="memory-budget", daemon=True)
        self.window: Window | None = None

    def run(self) -> None:
        while True:
            window = self.window
            if window is not None:
                window.sample(os.getpid())
            time.sleep(INTERVAL)


class MachineSampler(threading.Thread):
    """The most memory in use on the machine (``MemTotal - MemAvailable``), read every second."""

    def __init__(self) -> None:
        super().__init__(name="memory-machine", daemon=True)
        self.peak = 0
        self.total = 0

    def run(self) -> None:
        while True:
            info = {}
            for line in (PROC / "meminfo").read_text().splitlines():
                name, _, value = line.partition(":")
                info[name] = int(value.split()[0]) * KIB
            self.total = info["MemTotal"]
            self.peak = max(self.peak, info["MemTotal"] - info["MemAvailable"])
            time.sleep(1.0)


class MemoryBudget:
    """The plugin: in each worker it measures; in the controller it gathers, prints and judges."""

    def __init__(self, config: pytest.Config) -> None:
        self.limits = budget()
        self.is_worker = hasattr(config, "workerinput")
        self.sampler: Sampler | None = None
        self.machine: MachineSampler | None = None
        self.modules: dict[str, dict] = {}

    @pytest.hookimpl
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if not MEASURABLE:
            return
        self.sampler = Sampler()
        self.sampler.start()
        if not self.is_worker:
            self.machine = MachineSampler()
            self.machine.start()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None):
        if self.sampler is not None:
            (PROC / "self" / "clear_refs").write_text("5")  # VmHWM := VmRSS
            self.sampler.window = Window()
        yield

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        outcome = yield
        report = outcome.get_result()
        if call.when == "teardown" and self.sampler is not None and self.sampler.window is not None:
            window, self.sampler.window = self.sampler.window, None
            window.sample(os.getpid())  # once more: a test shorter than the interval is read too
            figures = window.close()
            figures["worker_id"] = os.environ.get("PYTEST_XDIST_WORKER", "main")
            report.user_properties.append(("memory", figures))
            if os.environ.get("LR_MEMORY_LOG"):  # a line per test as it ends: what a killed worker was running
                with open(os.environ["LR_MEMORY_LOG"], "a") as log:
                    log.write(json.dumps({"test": item.nodeid, **figures}) + "\n")

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        module = report.nodeid.split("::")[0]
        row = self.modules.setdefault(module, {"worker": 0, "subprocess": 0, "subprocess_label": "", "tree": 0,
                                               "seconds": 0.0, "workers": set()})
        row["seconds"] += report.duration
        for key, figures in report.user_properties:
            if key != "memory":
                continue
            row["workers"].add(figures["worker_id"])
            for name in ("worker", "tree"):
                row[name] = max(row[name], figures[name])
            if figures["subprocess"] > row["subprocess"]:
                row["subprocess"], row["subprocess_label"] = figures["subprocess"], figures["subprocess_label"]

    def over_budget(self) -> list[str]:
        """One line per module and figure over its budget."""
        lines = []
        for module, row in self.modules.items():
            for name, key in (("worker", "worker"), ("subprocess", "subprocess"), ("worker and its processes", "tree")):
                if row[key] > self.limits[name] * GIB:
                    what = f"{name} ({row['subprocess_label']})" if key == "subprocess" else name
                    lines.append(f"memory budget: {module}: {what} peaked at {row[key] / GIB:.2f} GiB, over its "
                                 f"budget of {self.limits[name]:g} GiB")
        return lines

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if not self.is_worker and self.over_budget() and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter) -> None:
        measured = {m: r for m, r in self.modules.items() if r["workers"]}
        if not measured:
            return
        terminalreporter.section("memory: peak per test module (GiB)")
        limits = self.limits
        terminalreporter.write_line(
            f"{'module':48} {'worker':>6} {'worker+procs':>12} {'largest subprocess':>30} {'seconds':>8}  "
            f"(budget: worker {limits['worker']:g}, with its processes {limits['worker and its processes']:g}, "
            f"a subprocess {limits['subprocess']:g})")
        for module, row in sorted(measured.items(), key=lambda item: -item[1]["tree"]):
            child = f"{row['subprocess'] / GIB:.2f} {row['subprocess_label'][:24]}" if row["subprocess"] else "-"
            terminalreporter.write_line(f"{module:48} {row['worker'] / GIB:6.2f} {row['tree'] / GIB:12.2f} "
                                        f"{child:>30} {row['seconds']:8.1f}")
        if self.machine is not None and self.machine.peak:
            terminalreporter.write_line(f"machine: at most {self.machine.peak / GIB:.2f} GiB of "
                                        f"{self.machine.total / GIB:.1f} in use during the run (everything running)")
        for line in self.over_budget():
            terminalreporter.write_line(line, red=True)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(MemoryBudget(config), "memory-budget")
