"""The ``eval`` command's and ``run --method``'s command lines, without running anything."""

from __future__ import annotations

import pytest

from comfyui_layout_retouch.headless.cli import METHODS, PACK_ROOT, main


def test_every_method_names_a_shipped_workflow():
    assert set(METHODS) == {"plain", "layout-retouch", "pick-and-draw"}
    for workflow, _ in METHODS.values():
        assert (PACK_ROOT / "workflows" / workflow).is_file(), workflow
    assert METHODS["plain"] == ("layout_retouch_stage1_layout.json", ["LR_StepBlendedKSampler.lambda1=0"])


@pytest.mark.parametrize("argv", [["run"], ["run", "workflow.json", "--method", "plain"]])
def test_run_takes_a_workflow_or_a_method(argv):
    with pytest.raises(SystemExit, match="give a workflow file or --method"):
        main(argv)


def test_run_refuses_an_unknown_method(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--method", "dreammatcher"])
    assert "invalid choice: 'dreammatcher'" in capsys.readouterr().err


def test_eval_needs_references_and_both_embedding_models(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "runs/plain", "--dino", "dino"])
    assert "the following arguments are required: --references, --clip" in capsys.readouterr().err


def test_eval_refuses_a_folder_without_manifest(tmp_path):
    with pytest.raises(SystemExit, match=r"eval: RUN_DIR .*: no manifest.json in it"):
        main(["eval", str(tmp_path), "--references", str(tmp_path), "--dino", "d", "--clip", "c"])
