"""Stage 0, part 3: a small LLaMA trained on the world's text (captions, Q&A, stories, instructions, chats)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from .stage0_common import build_lm_tokenizer, progress, scaled, scaled_batch, smooth, warmup_cosine
from .world import as_rng, world_text_stream

STEPS = 300
BATCH = 16
SEQUENCE = 256  # later stages put ~100-token chats around 64-token image blocks
LR = 2e-3


def build_lm(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=128,
            intermediate_size=384,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=2048,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=False,
        )
    )


def packed_batches(tokenizer: PreTrainedTokenizerFast, seed: int, batch: int, length: int):
    """Endless (batch, length) id tensors: world documents as `<s> ... </s>`, packed back to back."""
    stream, buffer = world_text_stream(as_rng(seed)), []
    while True:
        while len(buffer) < batch * length:
            buffer += tokenizer(next(stream)).input_ids + [tokenizer.eos_token_id]
        ids, buffer = buffer[: batch * length], buffer[batch * length :]
        yield torch.tensor(ids).view(batch, length)


def train_lm(seed: int, steps_scale: float, log: dict) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Next-token loss on packed world text; held-out loss and token accuracy go to the log."""
    tokenizer = build_lm_tokenizer()
    torch.manual_seed(seed)
    model = build_lm(tokenizer).train()
    batches = packed_batches(tokenizer, seed + 51, scaled_batch(BATCH, steps_scale), SEQUENCE)
    steps = scaled(STEPS, steps_scale)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    schedule = warmup_cosine(optimizer, steps, warmup=50)
    losses = []
    for _, bar in progress(steps, "lm"):
        ids = next(batches)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    held_out = next(packed_batches(tokenizer, seed + 52, 8, SEQUENCE))
    with torch.no_grad():
        out = model(input_ids=held_out, labels=held_out)
    accuracy = (out.logits[:, :-1].argmax(-1) == held_out[:, 1:]).float().mean()
    log["lm_loss"] = smooth(losses, max(1, steps // 50))
    log["lm_final_loss"] = float(np.mean(losses[-20:]))
    log["lm_heldout_loss"], log["lm_heldout_token_accuracy"] = float(out.loss), float(accuracy)
    return model, tokenizer


def save_lm(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
