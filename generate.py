"""Write a document of text and images with DreamLLM, as an HTML page and PNG files.

    python generate.py "Tell a short story about a square that changes color, with pictures."
    python generate.py "Draw a green triangle in the center." --model path/to/dreamllm --seed 1

The default model is the shapes-world DreamLLM in `checkpoints/toy`; `--model` takes any DreamLLM folder (e.g. a
converted DreamLLM-7B). The prompt is sent as a user turn of the model's chat template.
"""

import argparse
import html
import re
from pathlib import Path

import torch

DEFAULT_MODEL = Path(__file__).resolve().parent / "checkpoints" / "toy"


def slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "document"


def write_document(segments: list, prompt: str, folder: Path) -> Path:
    """`segments` (str and PIL images, in order) -> `folder/index.html` + `folder/image_N.png`."""
    folder.mkdir(parents=True, exist_ok=True)
    body, count = [], 0
    for segment in segments:
        if isinstance(segment, str):
            if segment.strip():
                body.append(f"<p>{html.escape(segment.strip())}</p>")
        else:
            count += 1
            name = f"image_{count}.png"
            segment.save(folder / name)
            body.append(f'<img src="{name}" alt="image {count}" width="{max(segment.width, 256)}">')
    page = (
        "<!doctype html><meta charset='utf-8'><title>DreamLLM</title>"
        "<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}img{image-rendering:pixelated;display:block}</style>"
        f"<h3>{html.escape(prompt)}</h3>\n" + "\n".join(body) + "\n"
    )
    (folder / "index.html").write_text(page)
    return folder / "index.html"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="a DreamLLM folder (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=Path("outputs"), help="parent folder of the document")
    parser.add_argument("--max-new-tokens", type=int, default=120)
    parser.add_argument("--max-images", type=int, default=4)
    parser.add_argument("--steps", type=int, default=25, help="denoising steps per image")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--sample", action="store_true", help="sample text (top-p 0.9) instead of greedy decoding")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.model / "config.json").exists():
        parser.error(f"{args.model} is not a DreamLLM folder (no config.json); build one with `python -m train.toy` "
                     "or pass --model")

    from pipeline_dreamllm import DreamLLMPipeline

    pipe = DreamLLMPipeline.from_pretrained(args.model)
    pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    pipe.set_progress_bar_config(disable=True)
    out = pipe.generate_interleaved(
        [{"role": "user", "content": args.prompt}],
        max_new_tokens=args.max_new_tokens,
        max_images=args.max_images,
        do_sample=args.sample,
        top_p=0.9,
        guidance_scale=args.guidance,
        num_inference_steps=args.steps,
        generator=torch.Generator().manual_seed(args.seed),
    )
    page = write_document(out.segments, args.prompt, args.output / slug(args.prompt))
    images = sum(not isinstance(segment, str) for segment in out.segments)
    print(f"wrote {page} ({images} images)")
    return page


if __name__ == "__main__":
    main()
