"""CI's second pass (the pack installed in ``<host>/custom_nodes/``) runs only the tests marked ``install``.
A test that touches what the install layout changes (finding the host, the templates the server serves,
a command run as a user's shell runs it) must carry the marker, or the second pass would not run it."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
# Names whose use means a test depends on the install layout.
LAYOUT_NAMES = ("find_comfyui", "describe_search", "candidate_paths", "provide_host.find", "provide_host.provide",
                "workflow_templates", "fresh_environment", "installed()", "server_command")


def _marked(decorators: list[ast.expr]) -> bool:
    return any("mark.install" in ast.unparse(d) for d in decorators)


def unmarked_layout_tests(source: str) -> list[str]:
    """The test functions of a module's ``source`` that use a :data:`LAYOUT_NAMES` name and carry no ``install``
    marker (their own or the module's ``pytestmark``)."""
    tree = ast.parse(source)
    module_marked = any(isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets)
                        and "mark.install" in ast.unparse(node.value) for node in tree.body)
    found = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test_"):
            continue
        text = ast.unparse(node)
        if any(name in text for name in LAYOUT_NAMES) and not (module_marked or _marked(node.decorator_list)):
            found.append(node.name)
    return found


def test_the_checker_finds_an_unmarked_layout_test():
    source = ("import pytest\n"
              "def test_a(): host.find_comfyui({})\n"
              "@pytest.mark.install\ndef test_b(): host.find_comfyui({})\n"
              "def test_c(): get('/api/workflow_templates')\n"
              "def test_d(): assert 1\n")
    assert unmarked_layout_tests(source) == ["test_a", "test_c"]
    assert unmarked_layout_tests("import pytest\npytestmark = pytest.mark.install\n" + source) == []


def test_every_layout_test_is_marked_install():
    files = sorted(TESTS.rglob("test_*.py"))
    assert len(files) > 30
    unmarked = {str(f.relative_to(TESTS)): names for f in files
                if f.name != "test_markers.py" and (names := unmarked_layout_tests(f.read_text()))}
    assert unmarked == {}, f"mark these @pytest.mark.install (CI's second pass runs only those): {unmarked}"


def test_the_second_pass_has_tests_in_each_part():
    """``-m install`` selects discovery (unit), the layout's host (host) and the server and commands (e2e)."""
    marked = {f.parent.name for f in TESTS.rglob("test_*.py")
              if "mark.install" in f.read_text() and f.name != "test_markers.py"}
    assert marked == {"unit", "host", "e2e"}, marked


def host_versions_ci_runs() -> set[str]:
    """The ComfyUI versions of the archives ``.ci/run`` tests the pack on (``HOSTS=("ComfyUI-<version>.tar.gz" ...)``)."""
    import re

    line = next(line for line in (TESTS.parent / ".ci" / "run").read_text().splitlines() if line.startswith("HOSTS="))
    return set(re.findall(r"ComfyUI-([0-9.]+)\.tar\.gz", line))


def test_ci_runs_every_host_a_marker_names():
    """A test marked ``host("x")`` runs only on ComfyUI x: CI must test on x, or the test would never run."""
    import re

    named = {version for f in TESTS.rglob("test_*.py") if f.name != "test_markers.py"
             for args in re.findall(r"mark\.host\(([^)]*)\)", f.read_text())
             for version in re.findall(r"[\"']([^\"']+)[\"']", args)}
    assert named, "no test is marked for one host's shape"
    assert host_versions_ci_runs() == {"0.3.64", "0.33.0"}
    assert named <= host_versions_ci_runs(), f"marked for hosts CI does not run: {named - host_versions_ci_runs()}"


def test_the_slowest_modules_named_first_exist():
    """The root conftest's SLOWEST orders the run: a module renamed or gone would fall back to the end unnoticed."""
    tree = ast.parse((TESTS / "conftest.py").read_text())
    (slowest,) = [ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                  and any(getattr(t, "id", "") == "SLOWEST" for t in node.targets)]
    assert len(slowest) > 5 and [m for m in slowest if not (TESTS / m).is_file()] == []
    assert len(set(slowest)) == len(slowest)
