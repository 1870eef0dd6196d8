"""Write a document of text and images with DreamLLM, as an HTML page and PNG files.

    python generate.py "Tell a short story about a square that changes color, with pictures."
    python generate.py "Draw a green triangle in the center." --model path/to/dreamllm --seed 1

The default model is the shapes-world DreamLLM in `checkpoints/toy`; `--model` takes any DreamLLM folder (e.g. a
converted DreamLLM-7B). The prompt is sent as a user turn of the model's chat template. Each run writes a new folder
`OUTPUT/<prompt>-<time>/` (never an earlier run's) holding `index.html` and `image_N.png`.
"""

from __future__ import annotations

import argparse
import datetime
import html
import re
import sys
from pathlib import Path

from dreamllm_common.folders import staged_folder

DEFAULT_MODEL = Path(__file__).resolve().parent / "checkpoints" / "toy"

PAGE_STYLE = """
body{margin:0;background:#f6f5f1;color:#1d1d1f;font:18px/1.6 Georgia,'Times New Roman',serif}
main{max-width:44rem;margin:3rem auto;padding:2.5rem 3rem;background:#fff;box-shadow:0 1px 4px rgba(0,0,0,.12)}
header{font:15px/1.5 system-ui,sans-serif;color:#555;border-bottom:1px solid #e4e2dc;padding-bottom:1rem;margin-bottom:2rem}
header q{display:block;font:italic 20px/1.4 Georgia,serif;color:#1d1d1f;margin-top:.3rem}
figure{display:flex;gap:1.5rem;align-items:center;margin:0 0 1.5rem}
figure img{flex:none;width:192px;height:192px;object-fit:contain;image-rendering:pixelated;border-radius:4px;background:#000}
figcaption{flex:1}
p{margin:0 0 1.5rem}
footer{font:13px/1.5 system-ui,sans-serif;color:#777;border-top:1px solid #e4e2dc;padding-top:1rem;margin-top:2rem}
footer dl{display:grid;grid-template-columns:max-content 1fr;gap:.1rem 1rem;margin:0}
footer dt{font-weight:600}footer dd{margin:0}
"""


def slug(text: str, limit: int = 40) -> str:
    """A short file-name form of a prompt (ASCII letters and digits); "document" where none are left."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "document"


def _body(segments: list) -> tuple[list[str], list]:
    """HTML blocks for `segments` (text and PIL images in document order), each image beside the text before it."""
    blocks, images, pending = [], [], None

    def flush():
        if pending:
            blocks.append(f"<p>{html.escape(pending)}</p>")

    for segment in segments:
        if isinstance(segment, str):
            flush()
            pending = segment.strip() or None
            continue
        images.append(segment)
        name = f"image_{len(images)}.png"
        caption = f"<figcaption>{html.escape(pending)}</figcaption>" if pending else ""
        blocks.append(f'<figure><img src="{name}" alt="image {len(images)}">{caption}</figure>')
        pending = None
    flush()
    return blocks, images


def render_page(segments: list, prompt: str, settings: dict[str, object] | None = None) -> tuple[str, list]:
    """The HTML page of a generated document and the images it links (`image_1.png`, ... in order)."""
    blocks, images = _body(segments)
    footer = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in (settings or {}).items())
    page = (
        "<!doctype html>\n<html lang='en'><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{html.escape(prompt[:80])}</title><style>{PAGE_STYLE}</style>\n<main>\n"
        f"<header>Prompt<q>{html.escape(prompt)}</q></header>\n" + "\n".join(blocks) + "\n"
        f"<footer>Written by DreamLLM<dl>{footer}</dl></footer>\n</main>\n</html>\n"
    )
    return page, images


def write_document(segments: list, prompt: str, folder: Path, settings: dict[str, object] | None = None) -> Path:
    """Write `folder/index.html` and `folder/image_N.png`; `folder` must not exist and appears only when complete.

    >>> from PIL import Image
    >>> page = write_document(["A red circle.", Image.new("RGB", (64, 64), "red")], "a prompt", Path("out/doc"))
    """
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} already exists: a document is never written over another")
    folder.parent.mkdir(parents=True, exist_ok=True)
    page, images = render_page(segments, prompt, settings)
    with staged_folder(folder) as staging:  # written aside, then moved into place in one rename
        for index, image in enumerate(images, start=1):
            image.save(staging / f"image_{index}.png")
        (staging / "index.html").write_text(page, encoding="utf-8")
    return folder / "index.html"


def new_document_folder(output: Path, prompt: str) -> Path:
    """`output/<prompt slug>-<UTC time>[-N]`: a name no earlier run holds."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = f"{slug(prompt)}-{stamp}"
    for attempt in range(1, 1000):
        folder = output / (base if attempt == 1 else f"{base}-{attempt}")
        if not folder.exists():
            return folder
    raise FileExistsError(f"{output}: too many documents named {base}-N")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _model_folder_error(model: Path) -> str | None:
    if model == DEFAULT_MODEL and not (model / "config.json").exists():
        return f"the default model {model} is missing: build it with `python -m train.toy --output {model}`"
    if not model.exists():
        return f"--model {model}: no such folder"
    if not model.is_dir() or not (model / "config.json").is_file():
        return f"--model {model}: not a DreamLLM folder (it has no config.json)"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="a DreamLLM folder (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=Path("outputs"), help="parent folder of the document")
    parser.add_argument("--max-new-tokens", type=_positive_int, default=120)
    parser.add_argument("--max-images", type=int, default=4, help="at most this many images (0: text only)")
    parser.add_argument("--steps", type=_positive_int, default=25, help="denoising steps per image")
    # The default model's guidance, train.toy.evaluate.GUIDANCE_SCALE (a test keeps them equal; this command imports
    # nothing from train/).
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale")
    parser.add_argument("--sample", action="store_true", help="sample text (top-p 0.9) instead of greedy decoding")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    problem = _model_folder_error(args.model)
    if problem is None and not args.prompt.strip():
        problem = "the prompt is empty"
    if problem is None and args.output.exists() and not args.output.is_dir():
        problem = f"--output {args.output}: is a file; it names the folder the document's folder is written into"
    if problem is None and args.max_images < 0:
        problem = f"--max-images {args.max_images}: must be 0 or more"
    if problem:
        sys.exit(f"generate.py: error: {problem}")

    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from pipeline_dreamllm import DreamLLMPipeline

    transformers_logging.disable_progress_bar()  # a command's output is its result, not loading bars
    diffusers_logging.disable_progress_bar()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = DreamLLMPipeline.from_pretrained(args.model).to(device)
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
    settings = {
        "model": "checkpoints/toy" if args.model == DEFAULT_MODEL else str(args.model),
        "seed": args.seed,
        "text decoding": "top-p 0.9 sampling" if args.sample else "greedy",
        "denoising steps": f"{args.steps} ({type(pipe.scheduler).__name__})",
        "guidance scale": args.guidance,
        "limits": f"{args.max_new_tokens} new tokens, {args.max_images} images",
        "written": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") + f" on {device}",
    }
    page = write_document(out.segments, args.prompt, new_document_folder(args.output, args.prompt), settings)
    images = sum(not isinstance(segment, str) for segment in out.segments)
    print(f"wrote {page} ({images} image{'' if images == 1 else 's'})")
    return page


if __name__ == "__main__":
    main()
