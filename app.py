"""A browser chat with a DreamLLM folder: the user writes (and may attach images); the model's text appears in the
conversation as it is written, and each image it creates as soon as it is drawn.

    python app.py                                   # checkpoints/toy on http://127.0.0.1:7860
    python app.py --model DIR --port 7861           # any DreamLLM folder
    python app.py --host 0.0.0.0                    # reachable from other machines (no authentication: mind who can)

Only images uploaded through the page are read (text is never taken for a path or a URL); prompts, images and the
generation settings are capped (see the limits below), and requests wait in one queue, served one at a time.
Requires gradio (docs/evaluation.md gives the install line).
"""

from __future__ import annotations

import argparse
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import torch
from PIL import Image

from pipeline_dreamllm import DEFAULT_GUIDANCE_SCALE, DreamLLMPipeline, DreamLLMStreamer

DEFAULT_MODEL = Path(__file__).resolve().parent / "checkpoints" / "toy"
MAX_PROMPT_CHARS = 2_000
MAX_UPLOADED_IMAGES = 4
MAX_IMAGE_BYTES = 10 * 2**20
MAX_IMAGE_SIDE = 4_096
MAX_QUEUED_REQUESTS = 16
DISPLAY_MIN_SIDE = 256  # small created images (the toy's are 64 px) are shown enlarged, pixel for pixel


@dataclass(frozen=True)
class Limits:
    """Ranges of the generation settings; values sent from outside them (e.g. through the API) are refused."""

    steps: tuple[int, int] = (1, 200)
    guidance: tuple[float, float] = (1.0, 20.0)
    max_images: tuple[int, int] = (0, 8)
    max_new_tokens: tuple[int, int] = (1, 512)
    seed: tuple[int, int] = (0, 2**32 - 1)


LIMITS = Limits()


def is_toy(folder: Path) -> bool:
    """Whether the folder's model card tags it as a shapes-world model."""
    card = folder / "README.md"
    if not card.is_file():
        return False
    front_matter = card.read_text().split("\n---", 1)[0]  # the YAML block between the first two '---' lines
    return "- toy" in front_matter.splitlines()


def toy_guidance_scale() -> float:
    from train.toy.evaluate import GUIDANCE_SCALE

    return GUIDANCE_SCALE


def toy_vocabulary_markdown() -> str:
    from train.toy.world import WORLD_WORDS, sample_instruction

    examples = [sample_instruction(seed, kind=kind).text for seed, kind in ((3, "story"), (5, "draw"))]
    return (
        "**This is the shapes-world model**: it knows only these words (unknown words are dropped by its tokenizer): "
        + " ".join(f"`{word}`" for word in WORLD_WORDS)
        + ".\n\nTry: " + " / ".join(f"*{text}*" for text in examples)
        + " / upload a 64x64 picture and ask *What color is the shape?*"
    )


def _check_range(name: str, value, bounds) -> None:
    if value is None or not bounds[0] <= value <= bounds[1]:
        raise gr.Error(f"{name} must be between {bounds[0]} and {bounds[1]}, got {value!r}")


def read_uploads(files: list, upload_folder: Path) -> list[Image.Image]:
    """Open the images of one message; only files in gradio's upload folder, of bounded size, that are images."""
    if len(files) > MAX_UPLOADED_IMAGES:
        raise gr.Error(f"attach at most {MAX_UPLOADED_IMAGES} images per message, got {len(files)}")
    images = []
    for file in files:
        path = Path(file["path"] if isinstance(file, dict) else file).resolve()
        if not path.is_relative_to(upload_folder):
            raise gr.Error(f"{path.name}: only images uploaded through this page are read")
        if path.stat().st_size > MAX_IMAGE_BYTES:
            raise gr.Error(f"{path.name}: images over {MAX_IMAGE_BYTES // 2**20} MiB are refused")
        try:
            with Image.open(path) as image:
                if max(image.size) > MAX_IMAGE_SIDE:
                    raise gr.Error(f"{path.name}: {image.size[0]}x{image.size[1]} px is over {MAX_IMAGE_SIDE} px")
                images.append(image.convert("RGB"))
        except (OSError, Image.DecompressionBombError) as error:
            raise gr.Error(f"{path.name}: not a readable image ({error})") from None
    return images


def _shown(image: Image.Image) -> gr.Image:
    scale = max(1, -(-DISPLAY_MIN_SIDE // min(image.size)))
    shown = image.resize((image.width * scale, image.height * scale), Image.NEAREST) if scale > 1 else image
    return gr.Image(value=shown, format="png", show_label=False)


class Chat:
    """The event handler: checks a request, then streams the model's segments into the conversation."""

    def __init__(self, pipe: DreamLLMPipeline, upload_folder: Path):
        self.pipe, self.upload_folder = pipe, upload_folder.resolve()
        # One generation at a time even when a cancelled request's thread is still finishing its document.
        self.generating = threading.Lock()

    def respond(self, message, history, conversation, steps, guidance, seed, max_images, max_new_tokens):
        message = message or {}
        text = (message.get("text") or "").strip()
        files = message.get("files") or []
        if not text and not files:
            raise gr.Error("write a message (and attach images if you like)")
        if len(text) > MAX_PROMPT_CHARS:
            raise gr.Error(f"the message has {len(text)} characters; at most {MAX_PROMPT_CHARS} are read")
        for name, value, bounds in (("steps", steps, LIMITS.steps), ("guidance", guidance, LIMITS.guidance),
                                    ("seed", seed, LIMITS.seed), ("maximum images", max_images, LIMITS.max_images),
                                    ("maximum new tokens", max_new_tokens, LIMITS.max_new_tokens)):
            _check_range(name, value, bounds)
        images = read_uploads(files, self.upload_folder)

        texts = [text] if text else []
        content = [{"type": "image", "image": image} for image in images] + [{"type": "text", "text": t} for t in texts]
        conversation = list(conversation or []) + [{"role": "user", "content": content}]
        history = list(history or []) + [{"role": "user", "content": [_shown(image) for image in images] + texts}]
        history.append({"role": "assistant", "content": []})
        yield history, conversation, None

        # The model writes in a thread; the streamer hands its text as decoded and each image as made.
        streamer = DreamLLMStreamer(self.pipe.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failures = []

        def write():
            try:
                with self.generating:
                    self.pipe.generate_interleaved(
                        conversation, max_new_tokens=int(max_new_tokens), max_images=int(max_images),
                        num_inference_steps=int(steps), guidance_scale=float(guidance),
                        generator=torch.Generator().manual_seed(int(seed)), streamer=streamer,
                    )
            except Exception as error:  # reported to the user below (the stream was ended); the server goes on
                failures.append(error)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        reply = []
        for piece in streamer:
            if isinstance(piece, str) and reply and isinstance(reply[-1], str):
                reply[-1] += piece  # the sentence being written grows in place
            elif piece != "":
                reply.append(piece)
            else:
                continue
            history[-1] = {"role": "assistant", "content": [s if isinstance(s, str) else _shown(s) for s in reply]}
            yield history, conversation, None
        writer.join()  # the stream ends before a failure is recorded
        if failures:
            raise gr.Error(f"generation failed: {type(failures[0]).__name__}: {failures[0]}")
        conversation = conversation + [{"role": "assistant", "content": [
            {"type": "text", "text": s} if isinstance(s, str) else {"type": "image", "image": s} for s in reply]}]
        yield history, conversation, None


def build_demo(pipe: DreamLLMPipeline, folder: Path) -> gr.Blocks:
    toy = is_toy(folder)
    upload_folder = Path(os.environ.get("GRADIO_TEMP_DIR") or gr.utils.get_upload_folder())
    chat = Chat(pipe, upload_folder)
    with gr.Blocks(title="DreamLLM") as demo:
        gr.Markdown(f"## DreamLLM: interleaved chat\nModel: `{folder.name}`. Its text appears as it is written, "
                    "each image as soon as it is drawn.")
        if toy:
            gr.Markdown(toy_vocabulary_markdown())
        chatbot = gr.Chatbot(label="Conversation", height=520)
        conversation = gr.State([])
        box = gr.MultimodalTextbox(
            placeholder="Write a message; attach images with the clip", file_types=["image"], file_count="multiple",
            sources=["upload"], show_label=False,
        )
        with gr.Row():
            steps = gr.Slider(*LIMITS.steps, value=25, step=1, label="Diffusion steps")
            guidance = gr.Slider(*LIMITS.guidance, value=toy_guidance_scale() if toy else DEFAULT_GUIDANCE_SCALE,
                                 step=0.5, label="Guidance scale")
            seed = gr.Number(value=0, precision=0, minimum=LIMITS.seed[0], maximum=LIMITS.seed[1], label="Seed")
            max_images = gr.Slider(*LIMITS.max_images, value=4, step=1, label="Maximum images")
            max_new_tokens = gr.Slider(*LIMITS.max_new_tokens, value=80 if toy else 256, step=1,
                                       label="Maximum new tokens")
        clear = gr.Button("New conversation")
        box.submit(chat.respond, [box, chatbot, conversation, steps, guidance, seed, max_images, max_new_tokens],
                   [chatbot, conversation, box], api_name="chat", concurrency_limit=1)
        clear.click(lambda: ([], [], None), None, [chatbot, conversation, box], api_name="clear")
    demo.queue(max_size=MAX_QUEUED_REQUESTS, default_concurrency_limit=1)
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="a DreamLLM folder (default: the toy)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args(argv)
    if not (args.model / "model_index.json").is_file():
        parser.error(f"--model {args.model}: not a DreamLLM folder (no model_index.json)")
    pipe = DreamLLMPipeline.from_pretrained(args.model)
    pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    pipe.set_progress_bar_config(disable=True)
    build_demo(pipe, args.model).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
