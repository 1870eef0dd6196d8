"""The model card (`README.md`, a `huggingface_hub.ModelCard`) of a shapes-world DreamLLM: what the model knows (the
world's vocabulary), its held-out scores and how it was trained.

    write_model_card(Path("runs/toy/sft"), scores.table(), seconds={"stage0": 1500.0, "igpt": 600.0},
                     seed=0, scale=1.0)
    refresh_model_card(Path("checkpoints/toy"))  # new metadata and vocabulary, every number of the card kept
"""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from train.toy.evaluate import GUIDANCE_SCALE
from train.toy.world import CHANGE_PHRASES, COLORS, IMAGE_SIZE, POSITION_PHRASES, SHAPES, Scene, Shape, caption

TAGS = ["dreamllm", "multimodal", "text-to-image", "custom_code", "toy"]
KNOWLEDGE_HEADING = "## What the model knows"

CARD_TEMPLATE = """# DreamLLM of the shapes world

A complete, tiny DreamLLM (Dong et al., ICLR 2024) trained from scratch on CPU on a procedural world: 64x64 pictures
of one or two coloured shapes (6 colours, 3 shapes, 5 positions) on black. It is trained to answer questions about
pictures, to draw pictures from captions and to write picture stories with each image at its sentence; how well it
does each is measured below, on held-out seeds. Every part was built with the libraries' own classes and trained with this repository's code, the same code paths as the
7B model: a CLIP (its vision tower reads images; its text tower conditioned the decoder's own training), an
AutoencoderKL and a UNet2DConditionModel (the frozen "Stable Diffusion" of the world), a LLaMA LM, then
`train.assemble` and the three DreamLLM stages (alignment, I-GPT, SFT).

{size_line}

{{knowledge}}

## Use

```python
from pipeline_dreamllm import DreamLLMPipeline          # or DiffusionPipeline.from_pretrained(..., trust_remote_code=True)

pipe = DreamLLMPipeline.from_pretrained("checkpoints/toy")
image = pipe("a red circle on the left and a blue square at the top", guidance_scale={guidance:g}).images[0]
story = pipe.generate_interleaved([{{"role": "user", "content": "Tell a short story about a square that changes color, with pictures."}}])
story.segments                                           # sentences (str) and the images created at them
```

```python
from PIL import Image
from transformers import AutoModelForCausalLM, AutoProcessor

model = AutoModelForCausalLM.from_pretrained("checkpoints/toy", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("checkpoints/toy", trust_remote_code=True)
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What color is the shape?"}}]}}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
inputs = processor(text=prompt, images=[Image.open("shapes.png")])  # a 64x64 picture of the world
print(processor.batch_decode(model.generate(**inputs, max_new_tokens=4)[:, inputs["input_ids"].shape[1]:],
                             skip_special_tokens=True))
```

Or `python generate.py "<prompt>"` from the repository, which writes the document as an HTML page with PNG files.

## Held-out scores

`python -m train.toy evaluate checkpoints/toy` (held-out seeds; pictures judged by exact pixel analysis; text-to-image
and stories at guidance {guidance:g} with 25 DPM-Solver++ steps; half the captions name two shapes, and the `two_shape_*`
rows score the pictures and questions with two shapes alone; `all`: every attribute of every shape right):

```
{table}
```

Targets of the world: text-to-image colour >= 90%, shape >= 80%, position >= 80%; understanding >= 95%; stories
>= 80% of images at their sentence and matching it; draw instructions answered with exactly one image and then the end
of the reply >= 95%, that image at the text-to-image targets.{decoder_line}

## Training

`python -m train.toy --output runs/toy --seed {seed} --scale {scale}` on 2 CPU cores, wall time per part (s):
{seconds}.

| stage | trained | steps | batch | lr | noise draws per created image | data |
|---|---|---:|---:|---:|---:|---|
{plan_rows}

{pair_share} of the caption pairs and {qa_share} of the Q&A pictures show two shapes (the others one).
{num_dream_queries} dream queries, Min-SNR-{snr_gamma} weighting of the diffusion loss at timesteps drawn from
[{min_timestep}, 1000) (where the loss depends on layout), lm/diffusion loss weights 1/1 (alignment) and 1/10
(I-GPT, SFT), as the paper.
"""

TRAINED = {"alignment": "projectors, dream queries", "igpt": "+ the LLM", "sft": "+ the LLM"}


def _size_line(folder: Path) -> str:
    total = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    return f"The whole folder is {total / 2**20:.1f} MiB."


def _decoder_line(stage0_log: dict | None) -> str:
    if not stage0_log or "text_to_image_cfg3" not in stage0_log:
        return ""
    scores = stage0_log["text_to_image_cfg3"]
    return (
        "\n\nThe world's own Stable Diffusion (stage 0, prompted through its CLIP text tower rather than by the LLM) "
        f"scores colour {scores['all_color']:.0%}, shape {scores['all_shape']:.0%}, position "
        f"{scores['all_position']:.0%} on the same kind of captions: a reference for the decoder that DreamLLM steers."
    )


def write_model_card(
    folder: Path, scores_table: str, seconds: dict[str, float], seed: int, scale: float,
    stage0_log: dict | None = None,
) -> Path:
    """Write `folder/README.md` from the run's scores table, timings and (optionally) stage 0's log."""
    from train.toy.recipe import (
        MIN_TIMESTEP, NUM_DREAM_QUERIES, PAIR_TWO_SHAPE_SHARE, PLANS, QA_TWO_SHAPE_SHARE,
        SNR_GAMMA,
    )

    if stage0_log and "stage0" not in seconds:  # a reused stage 0: the time it took when it was trained
        seconds = {"stage0": stage0_log["seconds"]["total"], **seconds}
    rows = []
    for stage, plan in PLANS.items():
        data = ", ".join(plan.data) + f" (pairs {plan.creation_prob:.0%} creation)"
        cells = (stage, TRAINED[stage], round(plan.steps * scale), plan.batch_size, f"{plan.learning_rate:g}",
                 plan.noise_samples_per_image, data)
        rows.append("| " + " | ".join(map(str, cells)) + " |")
    card = CARD_TEMPLATE.format(
        size_line=_size_line(folder),
        table=scores_table,
        seed=seed,
        scale=f"{scale:g}",
        seconds=", ".join(f"{name} {value:.0f}" for name, value in seconds.items()),
        plan_rows="\n".join(rows),
        pair_share=f"{PAIR_TWO_SHAPE_SHARE:.0%}",
        qa_share=f"{QA_TWO_SHAPE_SHARE:.0%}",
        num_dream_queries=NUM_DREAM_QUERIES,
        snr_gamma=f"{SNR_GAMMA:g}",
        min_timestep=MIN_TIMESTEP,
        decoder_line=_decoder_line(stage0_log),
        guidance=GUIDANCE_SCALE,
    )
    return _save(folder, card.replace("{knowledge}", knowledge_section().strip()))  # as `refresh_model_card` writes it


def card_data() -> ModelCardData:
    """The card's metadata. No `base_model`: every part was trained from scratch."""
    return ModelCardData(library_name="transformers", pipeline_tag="any-to-any", license="apache-2.0", tags=TAGS)


def knowledge_section() -> str:
    """The world's whole vocabulary, from `train.toy.world`: the colours, shapes and positions the model can name,
    read and draw, and the prompt forms it was trained on."""
    one = caption(Scene((Shape("red", "circle", "left"),)))
    two = caption(Scene((Shape("red", "circle", "left"), Shape("blue", "square", "top"))))
    colors = ", ".join(f"{name} {rgb}" for name, rgb in COLORS.items())
    changes = " / ".join(CHANGE_PHRASES.values())
    return f"""{KNOWLEDGE_HEADING}

Only the shapes world: {IMAGE_SIZE}x{IMAGE_SIZE} pictures of one or two filled shapes on black, and the words that
describe them. Words outside this vocabulary are unknown to its word-level tokenizer.

- Colours ({len(COLORS)}): {colors} (RGB).
- Shapes ({len(SHAPES)}): {", ".join(SHAPES)}.
- Positions ({len(POSITION_PHRASES)}): {", ".join(POSITION_PHRASES.values())}.
- Captions to draw: "{one}", "{two}".
- Questions about a picture: "What color is the shape?", "What shape is it?", "Where is the shape?", "Describe the
  image."; with two shapes "What color is the circle?", "What shape is on the left?", "Where is the red circle?".
- Requests for one picture, answered with that picture and nothing after it: "Draw {one}." or the caption alone as
  a chat turn ("{one}").
- Story instructions, answered with sentences and a picture at each: "Tell a short story about a square that changes
  color, with pictures." (a shape that {changes}), "Tell a short story with pictures."
"""


def _save(folder: Path, body: str) -> Path:
    path = folder / "README.md"
    ModelCard(f"---\n{card_data().to_yaml()}\n---\n\n{body.strip()}\n").save(path)
    return path


def refresh_model_card(folder: Path) -> Path:
    """Rewrite `folder/README.md` with the current metadata and vocabulary section, keeping the rest of its text (the
    run's scores, timings and recipe) as it is: no retraining, no number changed."""
    body = ModelCard.load(folder / "README.md").text
    knowledge = knowledge_section().strip()
    if KNOWLEDGE_HEADING in body:
        body = re.sub(re.escape(KNOWLEDGE_HEADING) + r".*?(?=\n## )", lambda _: knowledge + "\n", body, flags=re.S)
    else:
        body = body.replace("\n## Use\n", f"\n{knowledge}\n\n## Use\n", 1)
    return _save(folder, body)
