"""The runner's command line, without running anything."""

from __future__ import annotations

import pytest

from comfyui_layout_retouch.headless.cli import main, parse_set


@pytest.mark.parametrize("bad", ["no-equals-sign", "=5"])
def test_bad_set_is_refused(bad):
    with pytest.raises(SystemExit, match="TITLE.input=value"):
        parse_set([bad])


def test_batch_below_one_is_refused():
    from comfyui_layout_retouch.headless.cli import main

    with pytest.raises(SystemExit, match="--batch 0"):
        main(["run", "workflow.json", "--batch", "0"])


def test_batches_keep_one_template_and_overrides():
    from comfyui_layout_retouch.headless.jobs import Job, batches

    jobs = [Job("a", s) for s in (0, 1, 2)] + [Job("b", 0), Job("b", 1, (("KSampler", "cfg", 5),))]
    assert [[(j.template, j.seed) for j in group] for group in batches(jobs, 2)] == [
        [("a", 0), ("a", 1)], [("a", 2)], [("b", 0)], [("b", 1)]]
    assert [len(group) for group in batches(jobs, 1)] == [1] * 5


def prompt_with(*nodes: tuple[str, dict]) -> dict:
    return {str(i): {"class_type": kind, "inputs": dict(inputs), "_meta": {"title": kind}}
            for i, (kind, inputs) in enumerate(nodes)}


def test_apply_batch_sets_the_batch_and_per_image_seeds():
    from comfyui_layout_retouch.headless.jobs import apply_batch

    prompt = prompt_with(("EmptyLatentImage", {"batch_size": 1, "width": 64}),
                         ("LR_StepBlendedKSampler", {"seed": 3}),
                         ("KSamplerAdvanced", {"noise_seed": 3, "add_noise": "disable"}))
    apply_batch(prompt, [3, 4], {"LR_StepBlendedKSampler"})
    assert prompt["0"]["inputs"]["batch_size"] == 2
    assert prompt["1"]["inputs"]["batch_seeds"] == "3,4"
    assert "batch_seeds" not in prompt["2"]["inputs"]


@pytest.mark.parametrize("nodes", [
    [("KSampler", {"seed": 3})],  # a stock sampler: one noise for the whole batch
    [("LR_StepBlendedKSampler", {"seed": 3})],  # no latent source to batch
])
def test_apply_batch_refuses_what_would_not_equal_single_runs(nodes):
    from comfyui_layout_retouch.headless.jobs import BatchError, apply_batch

    prompt = prompt_with(*([("EmptyLatentImage", {"batch_size": 1})] if nodes[0][0] == "KSampler" else []), *nodes)
    with pytest.raises(BatchError, match="--batch"):
        apply_batch(prompt, [3, 4], {"LR_StepBlendedKSampler"})


@pytest.fixture
def workflow_file(tmp_path):
    path = tmp_path / "wf.json"
    path.write_text('{"nodes": [{"id": 1, "type": "KSamplerAdvanced", "title": "KSampler (Advanced): retouch"}], '
                    '"links": []}')
    return path


@pytest.mark.parametrize("extra, flag, words", [
    (["--prompts-file", "missing_prompts.txt"], "--prompts-file", "does not exist"),
    (["--reference", "missing_photo.jpg"], "--reference", "does not exist"),
    (["--seeds", "5-"], "--seeds", "'5-' is not a seed list"),
    (["--seeds", "a,b"], "--seeds", "is not a seed list"),
    (["--set", "No such node.steps=3"], "--set", "no node titled 'No such node'"),
    (["--server", "gpu0:8188"], "--server", "'gpu0:8188' is not an http(s) URL"),
    (["--servers-file", "missing_servers.txt"], "--servers-file", "does not exist"),
    (["--server", "http://127.0.0.1:1", "--in-flight", "0"], "--in-flight", "0 runs no job"),
])
def test_bad_run_arguments_are_one_line_before_comfyui(workflow_file, tmp_path, capsys, extra, flag, words):
    """Each refused with exit status 2 and one line naming the flag and the fix, before ComfyUI would start
    (nothing written)."""
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(workflow_file), "--prompt", "a {} on a beach", "--output", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith(f"run: {flag}: ") and words in err and "Fix: " in err
    assert not out.exists()


def test_a_missing_workflow_and_no_prompt_are_refused(workflow_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(tmp_path / "nope.json"), "--prompt", "a {}"])
    assert exit_info.value.code == 2 and "run: workflow: " in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(workflow_file)])
    assert exit_info.value.code == 2 and "run: --prompt: no prompt is given" in capsys.readouterr().err


def test_set_takes_titles_and_types_of_subgraph_nodes_too():
    from comfyui_layout_retouch.headless.cli import workflow_titles

    workflow = {"nodes": [{"id": 1, "type": "abc", "title": "Layout"}],
                "definitions": {"subgraphs": [{"nodes": [{"id": 2, "type": "LR_StepBlendedKSampler"}]}]}}
    assert workflow_titles(workflow) == {"Layout", "abc", "LR_StepBlendedKSampler"}
