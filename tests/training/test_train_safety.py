"""Training runs against hostile and careless input: no code from a model folder runs, another run's output folder
is not overwritten unasked, a damaged checkpoint or weights folder is named instead of resumed or half-loaded, the
converter reads no shard outside its input, and `python -m train` answers a bad path with one line."""

import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from train.data.example_files import write_pair_folder
from train.errors import InputError
from train.stages import build_trainer, load_model, load_processor, main, parse_args

REPO_ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def argv(folder, output, data, *extra, steps=2):
    return ["--stage", "alignment", "--model_name_or_path", str(folder), "--output_dir", str(output),
            "--data", str(data), "--max_steps", str(steps), "--per_device_train_batch_size", "2", "--bf16", "false",
            "--activation_checkpointing", "false", "--save_steps", "1", "--disable_tqdm", "true", "--seed", "0",
            "--report_to", "none", *map(str, extra)]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pair_folder(tmp_path_factory.mktemp("pairs") / "pairs", count=4)


@pytest.fixture(scope="module")
def run(tiny_folder, pairs, tmp_path_factory):
    """A finished two-step run: checkpoint-1, checkpoint-2 and the final model in one output folder."""
    output = tmp_path_factory.mktemp("run") / "out"
    main(argv(tiny_folder, output, pairs))
    return output


def test_the_final_folder_is_complete_and_keeps_the_checkpoints(run, tiny_folder):
    names = {path.name for path in run.iterdir()}
    assert {"checkpoint-1", "checkpoint-2", "config.json", "model.safetensors", "unet", "vae", "scheduler"} <= names
    assert not [name for name in names if name.startswith(".")]  # no staging left inside
    assert not list(run.parent.glob(f".{run.name}.*"))  # nor beside it
    assert set(load_file(run / "model.safetensors")) == set(load_file(tiny_folder / "model.safetensors"))
    assert load_model(run) is not None


# -------------------------------------------------------------------------------------------- no remote code
EVIL = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"


def test_training_runs_no_code_shipped_in_the_model_folder(tiny_folder, pairs, tmp_path):
    """Every code file of the folder replaced by code that leaves a mark, and `auto_map`s pointing at it from the
    tokenizer and processor configs: a whole run (model, processor, decoder, data, saves) leaves no mark."""
    marker = tmp_path / "MARK"
    folder = shutil.copytree(tiny_folder, tmp_path / "evil")
    for code in (*folder.glob("*.py"), folder / "evil_tok.py"):
        code.write_text(EVIL.format(marker=str(marker)))
    for name in ("tokenizer_config.json", "processor_config.json"):
        config = json.loads((folder / name).read_text())
        config["auto_map"] = {"AutoTokenizer": [None, "evil_tok.EvilTokenizer"],
                              "AutoProcessor": "evil_tok.EvilProcessor"}
        (folder / name).write_text(json.dumps(config))
    main(argv(folder, tmp_path / "out", pairs, "--save_strategy", "no", steps=1))
    assert not marker.exists()
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_a_tokenizer_that_exists_only_as_folder_code_is_refused(tiny_folder, tmp_path):
    marker = tmp_path / "MARK"
    folder = shutil.copytree(tiny_folder, tmp_path / "evil")
    (folder / "evil_tok.py").write_text(EVIL.format(marker=str(marker)))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": [None, "evil_tok.EvilTokenizer"]})
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="training never runs code from a model folder"):
        load_processor(folder)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------- reused output folders
def test_an_output_folder_of_another_run_is_refused_unless_resumed_or_overwritten(run, tiny_folder, pairs, tmp_path):
    before = sorted(str(path.relative_to(run)) for path in run.rglob("*"))
    with pytest.raises(InputError, match=r"holds another run \(checkpoint-1, checkpoint-2\).*--overwrite_output_dir"):
        main(argv(tiny_folder, run, pairs))
    assert sorted(str(path.relative_to(run)) for path in run.rglob("*")) == before  # nothing touched

    # overwrite: the other run's checkpoints go, so a later resume can only pick this run's
    other = shutil.copytree(run, tmp_path / "other")
    main(argv(tiny_folder, other, pairs, "--overwrite_output_dir", "true", steps=1))
    assert sorted(path.name for path in other.glob("checkpoint-*")) == ["checkpoint-1"]
    state = json.loads((other / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["max_steps"] == 1

    # a folder holding only a saved model is another run too; resuming it, with nothing to resume, is refused
    model_only = tmp_path / "model_only"
    shutil.copytree(run, model_only, ignore=shutil.ignore_patterns("checkpoint-*"))
    with pytest.raises(InputError, match="holds another run"):
        main(argv(tiny_folder, model_only, pairs))
    with pytest.raises(InputError, match="holds a saved model but no checkpoint"):
        main(argv(tiny_folder, model_only, pairs, "--resume_from_checkpoint", "true"))


# ------------------------------------------------------------------------------------------ damaged checkpoints
def _truncate(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _drop_lm_head(path: Path):
    state = load_file(path)
    state.pop("lm_head.weight")
    save_file(state, path, metadata={"format": "pt"})


DAMAGE = {
    "no optimizer": ("optimizer.pt", Path.unlink, "optimizer.pt is missing"),
    "no scheduler": ("scheduler.pt", Path.unlink, "scheduler.pt is missing"),
    "no rng state": ("rng_state.pth", Path.unlink, "rng_state.pth is missing"),
    "no trainer state": ("trainer_state.json", Path.unlink, "trainer_state.json is missing"),
    "no weights": ("model.safetensors", Path.unlink, "has no model.safetensors"),
    "truncated weights": ("model.safetensors", _truncate, "model.safetensors is damaged or truncated"),
    "truncated optimizer": ("optimizer.pt", _truncate, "optimizer.pt is damaged or truncated"),
    "truncated scheduler": ("scheduler.pt", _truncate, "scheduler.pt is damaged or truncated"),
    "truncated rng state": ("rng_state.pth", _truncate, "rng_state.pth is damaged or truncated"),
    "damaged trainer state": ("trainer_state.json", _truncate, "trainer_state.json is damaged"),
    "a tensor missing": ("model.safetensors", _drop_lm_head, "weights lack 1 tensors \\(lm_head.weight"),
}


@pytest.fixture(scope="module")
def resumer(run, tiny_folder, pairs):
    script_args, training_args = parse_args(argv(tiny_folder, run, pairs, steps=3))
    return build_trainer(script_args, training_args)


@pytest.mark.parametrize("damage", DAMAGE)
def test_resuming_names_what_is_missing_or_damaged(resumer, run, tmp_path, damage):
    name, edit, message = DAMAGE[damage]
    checkpoint = shutil.copytree(run / "checkpoint-2", tmp_path / "checkpoint-2")
    edit(checkpoint / name)
    with pytest.raises(InputError, match=rf"cannot resume exactly from {checkpoint}: .*{message}"):
        resumer.train(resume_from_checkpoint=str(checkpoint))


def test_a_missing_checkpoint_path_is_named(run, tiny_folder, pairs, tmp_path):
    with pytest.raises(InputError, match="--resume_from_checkpoint .*nope: no such checkpoint folder"):
        main(argv(tiny_folder, tmp_path / "new", pairs, "--resume_from_checkpoint", tmp_path / "nope"))


# ---------------------------------------------------------------------------------------------- weights folders
@pytest.mark.parametrize("damage, message", [
    ("drop lm_head", r"weights lack 1 tensors \(lm_head.weight"),
    ("truncate", "model.safetensors is damaged or truncated"),
    ("no weights", "has no model.safetensors"),
    ("shard outside", "names shards outside"),
    ("no config", r"not a DreamLLM folder \(no config.json\)"),
    ("bad config", "config.json is not valid JSON"),
])
def test_a_damaged_model_folder_is_named_not_half_loaded(tiny_folder, tmp_path, damage, message):
    folder = shutil.copytree(tiny_folder, tmp_path / "model")
    weights = folder / "model.safetensors"
    if damage == "drop lm_head":
        _drop_lm_head(weights)
    elif damage == "truncate":
        _truncate(weights)
    elif damage == "no weights":
        weights.unlink()
    elif damage == "shard outside":
        weights.rename(tmp_path / "elsewhere.safetensors")
        index = {"weight_map": {"lm_head.weight": "../elsewhere.safetensors"}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    elif damage == "no config":
        (folder / "config.json").unlink()
    else:
        (folder / "config.json").write_text("{not json")
    with pytest.raises(InputError, match=message):
        load_model(folder)


# ------------------------------------------------------------------------------------------------- converter
def test_converter_refuses_shards_outside_its_input(tmp_path):
    from train.convert.sources import ConversionError, find_main_checkpoint

    release, outside = tmp_path / "release", tmp_path / "outside"
    release.mkdir()
    outside.mkdir()
    torch.save({"x": torch.zeros(1)}, outside / "secret.bin")
    (release / "link.bin").symlink_to(outside / "secret.bin")
    torch.save({"x": torch.zeros(1)}, release / "shard-1.bin")
    for name in (str(outside / "secret.bin"), "../outside/secret.bin", "link.bin", "sub/../../outside/secret.bin"):
        (release / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"x": name}}))
        with pytest.raises(ConversionError, match="names a shard outside"):
            find_main_checkpoint(release)
    (release / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"x": "shard-1.bin"}}))
    assert find_main_checkpoint(release) == [release / "shard-1.bin"]


# ------------------------------------------------------------------------------------------ the command line
def _run_cli(args: list[str], monkeypatch, capsys) -> str:
    """`python -m train ARGS` in this process (the module's own `__main__` code); returns what it printed."""
    monkeypatch.setattr(sys, "argv", ["train", *map(str, args)])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("train", run_name="__main__", alter_sys=True)
    assert exit_.value.code not in (0, None)
    captured = capsys.readouterr()
    return f"{exit_.value.code if isinstance(exit_.value.code, str) else ''}{captured.err}"


def test_bad_paths_on_the_command_line_end_in_one_line(run, tiny_folder, pairs, tmp_path, monkeypatch, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    base = ["--stage", "alignment", "--max_steps", "1", "--report_to", "none"]
    cases = {
        "--data .*missing: no such file or folder": ["--model_name_or_path", tiny_folder, "--output_dir",
                                                     tmp_path / "o1", "--data", tmp_path / "missing"],
        "--model_name_or_path .*nowhere: no such folder": ["--model_name_or_path", tmp_path / "nowhere",
                                                           "--output_dir", tmp_path / "o2", "--data", pairs],
        r"--model_name_or_path .*a_file: no such folder": ["--model_name_or_path", a_file, "--output_dir",
                                                           tmp_path / "o3", "--data", pairs],
        "--output_dir .*a_file: a file, not a folder": ["--model_name_or_path", tiny_folder, "--output_dir", a_file,
                                                        "--data", pairs],
        "holds another run": ["--model_name_or_path", tiny_folder, "--output_dir", run, "--data", pairs],
        "--image_folder .*: no such folder": ["--model_name_or_path", tiny_folder, "--output_dir", tmp_path / "o4",
                                              "--data", pairs, "--image_folder", tmp_path / "no_images"],
    }
    for message, args in cases.items():
        printed = _run_cli(base + args, monkeypatch, capsys)
        assert printed.startswith("error: ") and len(printed.strip().splitlines()) == 1, printed
        assert __import__("re").search(message, printed), (message, printed)
    printed = _run_cli(["--config", tmp_path / "missing.yaml"], monkeypatch, capsys)
    assert printed.startswith("error: --config") and "Traceback" not in printed


def test_a_missing_data_folder_in_a_fresh_process_prints_one_line(tiny_folder, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "train", "--stage", "alignment", "--model_name_or_path", str(tiny_folder),
         "--output_dir", str(tmp_path / "out"), "--data", "missing/"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: --data missing/: no such file or folder; pass")


def test_streamed_training_logs_every_skipped_record_the_last_ones_included(tiny_folder, tmp_path):
    """`--streaming`: the data-loader sees the stream through `datasets` and accelerate; records skipped after the
    last good one still reach the logged counters."""
    from train.data.example_files import write_llava

    chat = write_llava(tmp_path / "llava", count=2)
    records = json.loads(chat.read_text())
    bad = [{"conversations": "x"}, {"image": 5, "conversations": []}, {"caption": 7, "image": "0.png"}]
    (tmp_path / "llava" / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records + bad))
    trainer = main(argv(tiny_folder, tmp_path / "out", tmp_path / "llava" / "chat.jsonl", "--stage", "sft",
                        "--streaming", "true", "--shuffle_buffer", "0", "--logging_steps", "1",
                        "--save_strategy", "no", steps=1))
    step = next(entry for entry in trainer.state.log_history if entry.get("step") == 1 and "loss" in entry)
    logged = {key: value for key, value in step.items() if key.startswith("data/skipped_")}
    assert logged == {"data/skipped_invalid_field": 2, "data/skipped_missing_field": 1}  # empty conversations
