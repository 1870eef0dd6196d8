"""Streaming data over several processes and data-loader workers: the shards of a stream are split over ranks (by
accelerate, as the Trainer prepares its data loader) and over each rank's workers (by `datasets`), so every sample is
read once per epoch; a streaming run resumed from a checkpoint continues with the next unseen sample."""

import hashlib
from pathlib import Path

from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader

from train.data import DreamLLMDataCollator, build_train_dataset
from train.data.example_files import write_webdataset
from train.stages import build_trainer, parse_args

SAMPLES, SHARDS = 8, 4


def _captions(batches, tokenizer) -> list[str]:
    return [tokenizer.decode(row, skip_special_tokens=True) for batch in batches for row in batch["input_ids"]]


def test_two_ranks_with_two_workers_read_every_streamed_sample_once_per_epoch(tiny_processor, tmp_path):
    shards = write_webdataset(tmp_path / "shards", count=SAMPLES, shards=SHARDS)
    dataset = build_train_dataset([str(shards)], tiny_processor, streaming=True, creation_prob=0.0, seed=0,
                                  shuffle_buffer=4)
    assert dataset.n_shards == SHARDS
    collator = DreamLLMDataCollator(tiny_processor.tokenizer.pad_token_id)
    loaders = [
        prepare_data_loader(DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=collator), num_processes=2,
                            process_index=rank, put_on_device=False, dispatch_batches=False)
        for rank in (0, 1)
    ]
    every = sorted(_captions(DataLoader(dataset, batch_size=1, collate_fn=collator), tiny_processor.tokenizer))
    assert len(set(every)) == SAMPLES
    orders = []
    for epoch in (0, 1):
        read = []
        for loader in loaders:
            loader.set_epoch(epoch)
            rank_read = _captions(loader, tiny_processor.tokenizer)
            assert len(rank_read) == SAMPLES // 2  # two shards per rank, one per worker
            read.append(rank_read)
        assert sorted(read[0] + read[1]) == every, epoch  # each sample once, on one rank only
        orders.append(read)
    assert orders[0] != orders[1]  # the shuffle (shard order and buffer) changes with the epoch


def _run(tiny_folder: Path, shards: Path, output: Path, resume: str | None = None) -> list[str]:
    argv = ["--stage", "igpt", "--model_name_or_path", str(tiny_folder), "--output_dir", str(output),
            "--data", str(shards), "--streaming", "true", "--shuffle_buffer", "4", "--max_steps", "4",
            "--save_steps", "2", "--per_device_train_batch_size", "1", "--dataloader_num_workers", "2",
            "--bf16", "false", "--activation_checkpointing", "false", "--use_cpu", "true", "--disable_tqdm", "true",
            "--report_to", "none", "--seed", "0"]
    trainer = build_trainer(*parse_args(argv))
    assert trainer.accelerator.dispatch_batches is False  # each process reads its own shards
    seen, compute_loss = [], trainer.compute_loss

    def recording(model, inputs, *args, **kwargs):
        seen.append(hashlib.sha1(inputs["input_ids"].numpy().tobytes()).hexdigest())
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = recording
    trainer.train(resume_from_checkpoint=resume)
    return seen


def test_a_resumed_streaming_run_continues_with_the_next_unseen_sample(tiny_folder, tmp_path, one_thread):
    shards = write_webdataset(tmp_path / "shards", count=SAMPLES, shards=SHARDS)
    uninterrupted = _run(tiny_folder, shards, tmp_path / "full")
    resumed = _run(tiny_folder, shards, tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-2"))
    assert len(uninterrupted) == 4 and len(set(uninterrupted)) == 4
    assert resumed == uninterrupted[2:]  # steps 3-4: neither a consumed sample again nor one skipped
