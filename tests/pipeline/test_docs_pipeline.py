"""docs/pipeline.md's examples run as written, in order, on checkpoints/toy, in one fresh process."""

import os
import re
import subprocess
import sys
import tempfile

import pytest

from conftest import REPO_ROOT

DOC = REPO_ROOT / "docs" / "pipeline.md"
pytestmark = pytest.mark.skipif(not (REPO_ROOT / "checkpoints" / "toy" / "config.json").exists(),
                                reason="checkpoints/toy is not built")


def test_pipeline_doc_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 8
    script = "import torch\ntorch.set_num_threads(1)\n" + "\n".join(blocks) + "\nprint('all examples ran')\n"
    # diffusers copies the folder's code into HF_MODULES_CACHE: a private one keeps parallel runs apart.
    env = {**os.environ, "HF_MODULES_CACHE": tempfile.mkdtemp(), "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout
    assert "all examples ran" in output
    assert "['llm', 'processor', 'scheduler', 'transformer', 'unet', 'vae']" in output
    assert "(4, 64, 64, 3)" in output and "variant=ema" in output
    assert output.count("must be") >= 3  # the validation examples' errors name their argument
