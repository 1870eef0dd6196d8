"""Stage 0 of the toy DreamLLM: the shapes world's own pretrained components, trained from scratch with the
libraries' classes and saved in their native formats (what real DreamLLM downloads).

    python -m train.toy.stage0 --output /tmp/toy_stage0 [--seed 0] [--steps-scale 1.0] [--threads N]
                               [--clip-patch-steps 3000]

writes
    clip/        CLIPModel (contrastive, then patch-level) + CLIPImageProcessor + tokenizer
                 (CLIPVisionModel.from_pretrained loads the vision tower)
    diffusion/   StableDiffusionPipeline folder: unet/ vae/ scheduler/ text_encoder/ tokenizer/ model_index.json
    lm/          LlamaForCausalLM + its word-level LLaMA-style tokenizer
    stage0_log.json  loss curves, wall times, CLIP zero-shot and text-to-image accuracies

Deterministic under --seed for a given thread count. --steps-scale multiplies every step count (0.01 for tests).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import CLIPModel, CLIPTextModel

from .evaluate import GUIDANCE_SCALE
from .stage0_clip import PATCH_STEPS, save_clip, train_clip, zero_shot
from .stage0_common import scaled, timed
from .stage0_diffusion import evaluate_pipeline, make_pipeline, train_unet, train_vae, vae_reconstruction_accuracy
from .stage0_lm import save_lm, train_lm


def text_tower(clip: CLIPModel) -> CLIPTextModel:
    """The CLIP text tower as a standalone CLIPTextModel (Stable Diffusion's text encoder)."""
    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    return text_encoder.eval().requires_grad_(False)


def run(output: Path, seed: int = 0, steps_scale: float = 1.0, clip_patch_steps: int = PATCH_STEPS) -> dict:
    """Train and save every component under `output`; returns the log (also written to stage0_log.json).
    `clip_patch_steps` is the length of CLIP's patch-level phase (`stage0_clip_patches`; 0 skips it); the phase
    trains the vision tower alone, so it leaves the decoder unchanged."""
    output.mkdir(parents=True, exist_ok=True)
    log: dict = {"seed": seed, "steps_scale": steps_scale, "threads": torch.get_num_threads(), "seconds": {}}
    log["clip_patch_steps"] = clip_patch_steps
    seconds = log["seconds"]
    eval_scale = min(1.0, max(steps_scale, 0.1))  # evaluations shrink less than training, but stay quick in tests

    with timed(seconds, "clip"):
        clip, clip_tokenizer = train_clip(seed, steps_scale, log, patch_steps=clip_patch_steps)
        save_clip(clip, clip_tokenizer, output / "clip")
    with timed(seconds, "clip_eval"):
        log["clip_zero_shot"] = zero_shot(clip, clip_tokenizer, seed + 1000, num_images=scaled(300, eval_scale, 30))

    text_encoder = text_tower(clip)
    with timed(seconds, "vae"):
        vae = train_vae(seed, steps_scale, log)
    with timed(seconds, "vae_eval"):
        log["vae_reconstruction_accuracy"] = vae_reconstruction_accuracy(vae, seed + 1001, scaled(200, eval_scale, 20))
    with timed(seconds, "unet"):
        unet = train_unet(vae, text_encoder, clip_tokenizer, seed, steps_scale, log)
        pipeline = make_pipeline(vae, text_encoder, clip_tokenizer, unet)
        pipeline.save_pretrained(output / "diffusion")
    with timed(seconds, "diffusion_eval"):
        num_captions = scaled(50, eval_scale, 4)
        log["text_to_image"] = evaluate_pipeline(pipeline, seed + 1002, num_captions)  # the pipeline's default CFG 7.5
        log["text_to_image_cfg3"] = evaluate_pipeline(pipeline, seed + 1002, num_captions,
                                                      guidance_scale=GUIDANCE_SCALE)

    with timed(seconds, "lm"):
        lm, lm_tokenizer = train_lm(seed, steps_scale, log)
        save_lm(lm, lm_tokenizer, output / "lm")

    seconds["total"] = round(sum(seconds.values()), 1)
    (output / "stage0_log.json").write_text(json.dumps(log, indent=1))
    return log


def summary(log: dict) -> str:
    """The numbers worth reading at the end of a run."""
    lines = [f"wall time (s): {log['seconds']}"]
    lines += [f"{part} final loss: {log[f'{part}_final_loss']:.4f}" for part in ("clip", "vae", "unet", "lm")]
    lines.append(
        f"lm held-out loss {log['lm_heldout_loss']:.4f}, token accuracy {log['lm_heldout_token_accuracy']:.3f}"
    )
    lines.append(f"vae reconstruction accuracy (judge): {log['vae_reconstruction_accuracy']:.3f}")
    lines.append("clip zero-shot: " + ", ".join(f"{k} {v:.2f}" for k, v in log["clip_zero_shot"].items()))
    if "clip_patch_accuracy" in log:
        accuracy = log["clip_patch_accuracy"]
        lines.append("clip patch head, patches of a shape: " + ", ".join(f"{k} {v:.2f}" for k, v in accuracy.items()))
    for key, name in (("text_to_image", "guidance 7.5"), ("text_to_image_cfg3", "guidance 3")):
        lines.append(f"text-to-image, {name} (judge): " + ", ".join(f"{k} {v:.2f}" for k, v in log[key].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiplies every step count")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--clip-patch-steps", type=int, default=PATCH_STEPS,
        help=f"steps of CLIP's patch-level phase (default {PATCH_STEPS}; 0 skips it; the README measures 0, 500, 3000)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = run(args.output, args.seed, args.steps_scale, args.clip_patch_steps)
    print(summary(log))
    return log


if __name__ == "__main__":
    main()
