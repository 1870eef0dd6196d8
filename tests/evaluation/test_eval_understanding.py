"""lmms-eval on the shapes world: the `dreamllm` adapter and the `shapes_vqa` tasks, through lmms-eval's evaluator,
agree with `python -m train.toy evaluate` on checkpoints/toy."""

import importlib.metadata
import os
import subprocess
import sys
import tomllib

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (docs/evaluation.md gives the install line)")

from tests.conftest import REPO_ROOT  # noqa: E402

TOY = REPO_ROOT / "checkpoints" / "toy"
LIMIT = 120  # the first 120 held-out questions hold one the toy model gets wrong (index 109)


MC_LIMIT = 30  # each multiple-choice question costs one forward per choice


@pytest.fixture(scope="module")
def lmms_results():
    from eval.understanding import main

    return main(["--model", str(TOY), "--tasks", "shapes_vqa", "--limit", str(LIMIT), "--log-samples"])


@pytest.fixture(scope="module")
def mc_results():
    from eval.understanding import main

    return main(["--model", str(TOY), "--tasks", "shapes_vqa_mc", "--limit", str(MC_LIMIT), "--log-samples"])


def test_shapes_vqa_agrees_with_the_toy_evaluation(lmms_results):
    from pipeline_dreamllm import DreamLLMPipeline
    from train.toy.evaluate import understanding

    pipe = DreamLLMPipeline.from_pretrained(TOY)
    expected = understanding(pipe.llm, pipe.processor, num_questions=LIMIT)
    got = lmms_results["results"]["shapes_vqa"]
    assert got["accuracy,none"] == pytest.approx(expected["all"])
    assert expected["all"] < 1.0  # the comparison includes a wrong answer
    for kind in ("color", "shape", "position"):
        assert got[f"{kind},none"] == pytest.approx(expected[kind])
    samples = lmms_results["samples"]["shapes_vqa"]
    wrong = [sample for sample in samples if not sample["accuracy"]]  # the same number as the toy evaluation's
    assert len(samples) == LIMIT and len(wrong) == round((1 - expected["all"]) * LIMIT) > 0


def test_multiple_choice_ranks_choices_by_likelihood(mc_results):
    samples = mc_results["samples"]["shapes_vqa_mc"]
    assert len(samples) == MC_LIMIT
    for sample in samples:
        nll = [pair[0] for pair in sample["filtered_resps"]]
        assert len(nll) == len(sample["doc"]["choices"]) and all(value > 0 for value in nll)
        greedy = [pair[1] for pair in sample["filtered_resps"]]
        assert sum(greedy) <= 1  # one choice at most is what greedy decoding writes
    # The toy model answers nearly every written question right; scoring its choices must agree.
    assert mc_results["results"]["shapes_vqa_mc"]["acc,none"] >= 0.95


def test_unknown_task_and_missing_model_are_refused():
    from eval.understanding import evaluate

    with pytest.raises(ValueError, match="no_such_task"):
        evaluate(TOY, ["no_such_task"])
    with pytest.raises(FileNotFoundError, match="not a DreamLLM folder"):
        evaluate(REPO_ROOT / "no-such-folder", ["shapes_vqa"])


def test_entry_point_declared_in_pyproject_resolves_to_the_adapter():
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    from eval.lmms_dreamllm import DreamLLM

    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["lmms_eval.models"]
    entry_point = importlib.metadata.EntryPoint(name="dreamllm", value=declared["dreamllm"], group="lmms_eval.models")
    registry = ModelRegistryV2()
    registry.register_manifest(entry_point.load())
    assert registry.get_model_class("dreamllm") is DreamLLM


def test_lmms_eval_cli_finds_the_entry_point_and_runs(tmp_path):
    """lmms-eval's own CLI, in a fresh process outside the checkout, finds `dreamllm` the way it does once the project
    is installed: through the `lmms_eval.models` entry point of the distribution's metadata (written here as pip
    writes it, from pyproject.toml, so the shared environment is left alone)."""
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["lmms_eval.models"]
    dist_info = tmp_path / "site" / "dreamllm_hf-0.1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: dreamllm-hf\nVersion: 0.1.0\n")
    (dist_info / "entry_points.txt").write_text(f"[lmms_eval.models]\ndreamllm = {declared['dreamllm']}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO_ROOT)])}
    command = [sys.executable, "-m", "lmms_eval", "--model", "dreamllm", "--model_args", f"pretrained={TOY}",
               "--tasks", "shapes_vqa", "--include_path", str(REPO_ROOT / "eval" / "lmms_tasks"), "--limit", "6",
               "--output_path", str(tmp_path / "out"), "--verbosity", "WARNING"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "shapes_vqa" in result.stdout and "accuracy" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    assert list((tmp_path / "out").rglob("*results*.json")), "lmms-eval wrote no results file"
