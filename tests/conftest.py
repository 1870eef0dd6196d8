"""Shared fixtures: one tiny random DreamLLM folder per test session, built through `train.assemble`."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)  # tiny models: more threads only add overhead on a shared 2-core machine


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: tiny convolutions on two threads shared with other jobs spin-wait badly;
    one thread is 100x faster here."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    from train.assemble import main

    folder = tmp_path_factory.mktemp("assembled") / "dreamllm-tiny"
    main(["--preset", "tiny-random", "--output", str(folder)])
    return folder


@pytest.fixture(scope="session")
def toy_stage0(tmp_path_factory) -> Path:
    """The shapes world's stage 0 (its CLIP, Stable Diffusion and LM) at --steps-scale 0.01, trained once per session
    for the stage-0 tests and the toy runs that start from it."""
    from train.toy.stage0 import main

    folder = tmp_path_factory.mktemp("toy-stage0") / "stage0"
    main(["--output", str(folder), "--steps-scale", "0.01", "--seed", "0"])
    return folder


@pytest.fixture(scope="session")
def tiny_model(tiny_folder):
    from modeling_dreamllm import DreamLLMForConditionalGeneration

    return DreamLLMForConditionalGeneration.from_pretrained(tiny_folder).eval()


@pytest.fixture(scope="session")
def tiny_processor(tiny_folder):
    from processing_dreamllm import DreamLLMProcessor

    return DreamLLMProcessor.from_pretrained(tiny_folder)


@pytest.fixture
def rgb_image():
    """A deterministic 48x40 RGB test image."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def run_isolated(script: str, cwd: Path, timeout: int = 300) -> str:
    """Run `script` in a fresh Python process whose cwd and sys.path exclude this repository."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    guard = f"import sys\nassert not any(p and {str(REPO_ROOT)!r} in p for p in sys.path), sys.path\n"
    result = subprocess.run(
        [sys.executable, "-c", guard + textwrap.dedent(script)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode:
        raise AssertionError(f"isolated script failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout
