"""Folders are published whole (`dreamllm_common.folders`): a reader, a failure at any step or a `kill -9` at any moment
leaves the target as it was or complete, never half written."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import dreamllm_common.folders as folders
from dreamllm_common.folders import publish_folder, staged_folder, staging_path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _write_model(folder: Path, generation: int, files: int = 6) -> None:
    """A stand-in model folder: numbered files, a subfolder, and `config.json` naming the generation."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "unet").mkdir(exist_ok=True)
    for index in range(files):
        (folder / f"part-{index}.safetensors").write_text(f"{generation}")
    (folder / "unet" / "weights.bin").write_text(f"{generation}")
    (folder / "config.json").write_text(json.dumps({"generation": generation, "files": files}))


def _state(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): path.read_text() for path in sorted(folder.rglob("*")) if path.is_file()}


def _is_checkpoint(name: str) -> bool:
    return name.startswith("checkpoint-")


@pytest.fixture
def output(tmp_path):
    """An output folder holding a run: a checkpoint and the generation-1 model."""
    final = tmp_path / "run"
    _write_model(final, 1)
    (final / "checkpoint-1").mkdir()
    (final / "checkpoint-1" / "optimizer.pt").write_text("state")
    return final


def test_a_new_folder_appears_whole(tmp_path):
    with staged_folder(tmp_path / "new") as staging:
        _write_model(staging, 1)
        assert not (tmp_path / "new").exists()  # nothing visible until the block completes
    assert _state(tmp_path / "new")["config.json"] == json.dumps({"generation": 1, "files": 6})
    assert not staging.exists()
    with pytest.raises(FileExistsError, match="exists; choose a new output folder"):
        with staged_folder(tmp_path / "new"):
            pass


def test_replacing_keeps_carried_entries_as_links_and_drops_the_rest(output):
    checkpoint_inode = (output / "checkpoint-1" / "optimizer.pt").stat().st_ino
    (output / "part-9.safetensors").write_text("an older model's extra shard")
    with staged_folder(output, replace=True, carry=_is_checkpoint) as staging:
        _write_model(staging, 2)
    state = _state(output)
    assert state["config.json"] == json.dumps({"generation": 2, "files": 6})
    assert "part-9.safetensors" not in state  # the older model's files go with it
    assert state["checkpoint-1/optimizer.pt"] == "state"
    assert (output / "checkpoint-1" / "optimizer.pt").stat().st_ino == checkpoint_inode  # linked, not copied
    assert not staging_path(output).exists() and not list(output.parent.glob(".run.*"))


def _fail_after(calls: int, function):
    count = {"n": 0}

    def failing(*args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise OSError("injected failure")
        return function(*args, **kwargs)

    return failing


@pytest.mark.parametrize("step", ["writing", "linking", "exchange", "rename fallback"])
def test_a_failure_at_any_step_leaves_the_old_folder_untouched(output, monkeypatch, step):
    before = _state(output)
    if step == "linking":
        monkeypatch.setattr(folders.os, "link", _fail_after(0, os.link))
    elif step == "exchange":
        monkeypatch.setattr(folders, "_exchange", _fail_after(0, folders._exchange))
    elif step == "rename fallback":  # no renameat2: the first of the two renames fails
        monkeypatch.setattr(folders, "_exchange", lambda first, second: False)
        monkeypatch.setattr(folders.os, "rename", _fail_after(0, os.rename))
    with pytest.raises(OSError, match="injected failure"):
        with staged_folder(output, replace=True, carry=_is_checkpoint) as staging:
            _write_model(staging, 2)
            if step == "writing":
                raise OSError("injected failure")
    assert _state(output) == before
    assert not staging_path(output).exists()


def test_without_renameat2_the_two_renames_replace_the_folder(output, monkeypatch):
    monkeypatch.setattr(folders, "_exchange", lambda first, second: False)
    with staged_folder(output, replace=True, carry=_is_checkpoint) as staging:
        _write_model(staging, 2)
    assert json.loads((output / "config.json").read_text())["generation"] == 2
    assert (output / "checkpoint-1" / "optimizer.pt").read_text() == "state"
    assert not list(output.parent.glob(".run.*"))


PUBLISHER = """
import json, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from dreamllm_common.folders import staged_folder
final = Path({final!r})
files = {files}
for generation in range(2, 10**6):
    with staged_folder(final, replace=True, carry=lambda name: name.startswith("checkpoint-")) as staging:
        (staging / "unet").mkdir()
        for index in range(files):
            (staging / f"part-{{index}}.safetensors").write_text(f"{{generation}}")
        (staging / "unet" / "weights.bin").write_text(f"{{generation}}")
        (staging / "config.json").write_text(json.dumps({{"generation": generation, "files": files}}))
    print(generation, flush=True)
"""


def test_kill_9_at_any_moment_leaves_the_folder_complete(output):
    """A real process publishing generation after generation into a run folder, killed with SIGKILL at random
    moments: every time, the folder is one whole generation, with the run's checkpoint intact."""
    files = 40
    _write_model(output, 1, files)
    script = PUBLISHER.format(root=str(REPO_ROOT), final=str(output), files=files)
    rng = random.Random(0)
    generations = set()
    for _ in range(12):
        process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True)
        process.stdout.readline()  # at least one publish done: the kills land in later ones
        time.sleep(rng.uniform(0, 0.05))
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close()
        state = _state(output)
        config = json.loads(state.pop("config.json"))
        generations.add(config["generation"])
        assert state.pop("checkpoint-1/optimizer.pt") == "state"
        expected = {f"part-{index}.safetensors" for index in range(files)} | {"unet/weights.bin"}
        assert set(state) == expected
        assert set(state.values()) == {str(config["generation"])}  # every file of the same generation
    assert len(generations) > 1  # the kills hit different moments
