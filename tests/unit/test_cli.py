"""The runner's command line, without running anything."""

from __future__ import annotations

import pytest

from comfyui_layout_retouch.headless.cli import parse_set


@pytest.mark.parametrize("bad", ["no-equals-sign", "=5"])
def test_bad_set_is_refused(bad):
    with pytest.raises(SystemExit, match="TITLE.input=value"):
        parse_set([bad])
