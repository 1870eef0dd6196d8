"""The shipped DeepSpeed configs, turned into DeepSpeed configs the way `accelerate launch` and the Trainer do it,
pass DeepSpeed's own validation (`deepspeed.runtime.config.DeepSpeedConfig`)."""

from pathlib import Path

import pytest

deepspeed = pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install -r requirements.txt)")

from accelerate.commands.launch import _validate_launch_command, launch_command_parser  # noqa: E402
from accelerate.utils import DeepSpeedPlugin  # noqa: E402
from accelerate.utils.launch import prepare_deepspeed_cmd_env  # noqa: E402
from deepspeed.runtime.config import DeepSpeedConfig  # noqa: E402
from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig  # noqa: E402

from train.stages import parse_args  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "train" / "accelerate_configs"


def deepspeed_config(name: str, tiny_model, tmp_path, monkeypatch, *, micro_batch: int = 4, accumulation: int = 2):
    """The DeepSpeed config a rank of `accelerate launch --config_file <name>.yaml -m train ...` ends up with."""
    launch = launch_command_parser().parse_args(["--config_file", str(CONFIGS / f"{name}.yaml"), "train.py"])
    launch, defaults, mixed_precision_from_config = _validate_launch_command(launch)
    fields = list(defaults.deepspeed_config) + ["mixed_precision"] * mixed_precision_from_config  # as launch_command
    launch.deepspeed_fields_from_accelerate_config = ",".join(fields)
    _, env = prepare_deepspeed_cmd_env(launch)
    for key, value in env.items():
        if key.startswith(("ACCELERATE_", "DEEPSPEED_")):
            monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()  # reads the launcher's environment, as in each rank
    _, training = parse_args(["--stage", "igpt", "--model_name_or_path", "m", "--output_dir", str(tmp_path),
                              "--per_device_train_batch_size", str(micro_batch),
                              "--gradient_accumulation_steps", str(accumulation), "--bf16", "false"])
    config = HfTrainerDeepSpeedConfig(plugin.deepspeed_config)
    config.trainer_config_process(training)
    config.trainer_config_finalize(training, tiny_model, num_training_steps=100)
    return plugin, config.config


@pytest.mark.parametrize("name, stage", [("zero2", 2), ("zero3", 3)])
def test_shipped_configs_pass_deepspeed_validation(name, stage, tiny_model, tmp_path, monkeypatch):
    plugin, config = deepspeed_config(name, tiny_model, tmp_path, monkeypatch)
    validated = DeepSpeedConfig(config)  # raises on unknown keys, bad types and inconsistent batch sizes
    assert validated.zero_optimization_stage == stage == plugin.zero_stage
    assert validated.zero_config.offload_param.device == validated.zero_config.offload_optimizer.device == "none"
    assert validated.gradient_clipping == 1.0  # the stages' max_grad_norm
    assert validated.train_micro_batch_size_per_gpu == 4 and validated.gradient_accumulation_steps == 2
    assert validated.train_batch_size == 8  # one process here: micro batch x accumulation x 1
    if stage == 3:
        assert plugin.zero3_init_flag  # the model is built partitioned
        assert validated.zero_config.gather_16bit_weights_on_model_save  # checkpoints are plain folders


def test_deepspeed_validation_rejects_what_the_configs_must_not_hold(tiny_model, tmp_path, monkeypatch):
    _, config = deepspeed_config("zero3", tiny_model, tmp_path, monkeypatch)
    with pytest.raises(Exception, match="not_a_zero_option"):
        DeepSpeedConfig({**config, "zero_optimization": {**config["zero_optimization"], "not_a_zero_option": 1}})
    with pytest.raises(AssertionError, match="train_batch_size"):
        DeepSpeedConfig({**config, "train_batch_size": 7})
