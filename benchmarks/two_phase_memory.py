"""Peak host memory of the two-phase low-memory pattern against one phase, each run in a fresh process:

    python benchmarks/two_phase_memory.py                      # checkpoints/toy, markdown table (docs/pipeline.md)
    python benchmarks/two_phase_memory.py --model DIR --steps 25

- one phase: the whole pipeline loaded, `pipe(prompt)`;
- phase 1: loaded with `unet=None, vae=None, scheduler=None`, `encode_prompt` (conditions saved to a file);
- libraries only: a pipeline of no component, the floor every process pays;
- phase 2: loaded with `llm=None, processor=None`, `pipe(prompt_embeds=..., negative_prompt_embeds=...)`.

Peak resident memory is the process's `ru_maxrss`; the weights of the components each phase holds are counted
exactly from their parameters. Python, torch and the libraries take the same few hundred MiB in every process, so on
the toy model (a few MiB of weights) the peaks differ little; at 7B (13.5 GB of LLM beside 1.9 GB of decoder in
half precision) the weight column is what decides whether a phase fits.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

PHASE = """
import json, resource, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from pipeline_dreamllm import DreamLLMPipeline
mode, folder, embeds, steps = {mode!r}, {folder!r}, {embeds!r}, {steps}
leave_out = {{"encode": dict(unet=None, vae=None, scheduler=None), "decode": dict(llm=None, processor=None)}}
if mode == "none":
    pipe = DreamLLMPipeline(llm=None, processor=None, unet=None, vae=None, scheduler=None)
else:
    pipe = DreamLLMPipeline.from_pretrained(folder, **leave_out.get(mode, {{}}))
pipe.set_progress_bar_config(disable=True)
prompt, generator = "a red circle on the left", torch.Generator().manual_seed(0)
if mode == "none":
    result = None
elif mode == "encode":
    cond, uncond = pipe.encode_prompt(prompt, pipe.device, 1, True)
    torch.save({{"cond": cond, "uncond": uncond}}, embeds)
    result = None
elif mode == "decode":
    saved = torch.load(embeds, weights_only=True)
    result = pipe(prompt_embeds=saved["cond"], negative_prompt_embeds=saved["uncond"], num_inference_steps=steps,
                  generator=generator, output_type="np").images
else:
    result = pipe(prompt, num_inference_steps=steps, generator=generator, output_type="np").images
weights = sum(p.numel() * p.element_size() for c in pipe.components.values() if isinstance(c, torch.nn.Module)
              for p in c.parameters())
print(json.dumps({{"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "weights": weights,
                  "image": None if result is None else result.tolist()}}))
"""


def run_phase(mode: str, folder: Path, embeds: Path, steps: int) -> dict:
    script = PHASE.format(root=str(REPO_ROOT), mode=mode, folder=str(folder), embeds=str(embeds), steps=steps)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "checkpoints" / "toy")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        embeds = Path(scratch) / "conditions.pt"
        none = run_phase("none", args.model, embeds, args.steps)
        one = run_phase("one", args.model, embeds, args.steps)
        encode = run_phase("encode", args.model, embeds, args.steps)
        decode = run_phase("decode", args.model, embeds, args.steps)
    mib = 2**20
    rows = [
        ("libraries only (a pipeline of no component)", none),
        ("one phase (llm + decoder)", one),
        ("phase 1: `encode_prompt` (unet, vae, scheduler None)", encode),
        ("phase 2: `prompt_embeds=` (llm, processor None)", decode),
    ]
    table = ["| run | weights held (MiB) | peak RSS (MiB) |", "|---|---:|---:|"]
    table += [f"| {name} | {r['weights'] / mib:.1f} | {r['peak_rss'] / mib:.0f} |" for name, r in rows]
    table.append(f"\nTwo-phase images equal one-phase images: {one['image'] == decode['image']}")
    return "\n".join(table)


if __name__ == "__main__":
    print(main())
