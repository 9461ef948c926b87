"""``pytest tests/unit`` needs only torch, numpy and scipy: run it with every other installed package hidden."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
# It runs unit/, which never imports ComfyUI: whichever host is there, the same result (CI runs it with unit/).
pytestmark = pytest.mark.hostless

# Runs in a fresh interpreter: a finder refuses the top-level modules of every installed
# distribution that is not torch, numpy, scipy, pytest or one of their requirements.
HIDE_OTHERS = r"""
import importlib.metadata as md, re, sys
import pytest

def closure(names):
    seen, todo = set(), [n.lower() for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.distribution(name).requires or []
        except md.PackageNotFoundError:
            continue
        todo += [re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0].lower() for r in requires if "extra ==" not in r]
    return seen

allowed = closure(["torch", "numpy", "scipy", "pytest"])
hidden = set()
for dist in md.distributions():
    if dist.metadata["Name"].lower().replace("_", "-") in {a.replace("_", "-") for a in allowed}:
        continue
    for f in dist.files or []:
        top = f.parts[0]
        if top.endswith((".dist-info", ".data")) or top in ("..", "__pycache__"):
            continue
        hidden.add(top[:-3] if top.endswith(".py") else top)
hidden -= {"_distutils_hack", "pip", "setuptools", "pkg_resources"}

class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in hidden:
            raise ModuleNotFoundError(f"{name} is hidden: unit tests may use only torch, numpy and scipy")

sys.meta_path.insert(0, Hide())
assert "segment_anything" in hidden and "safetensors" in hidden, sorted(hidden)
sys.exit(pytest.main([sys.argv[1], "-q", "-p", "no:cacheprovider"]))
"""


def test_unit_tests_need_only_torch_numpy_scipy():
    # No plugins from other packages (pytest-xdist's would import execnet, hidden here).
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    run = subprocess.run([sys.executable, "-c", HIDE_OTHERS, str(TESTS / "unit")], capture_output=True, text=True,
                         timeout=600, cwd=str(TESTS), env=env)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout and "error" not in run.stdout.lower()
