"""`generate.py`, the main command: its page, its folders (never an earlier run's, complete or absent), its errors,
and its output as a user sees it (no warnings; the page in a real browser where Chromium is installed)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import generate
from generate import new_document_folder, render_page, slug, write_document

ROOT = Path(__file__).resolve().parents[2]
MAIN_PROMPT = "Tell a short story about a square that changes color, with pictures."


def _image(colour) -> Image.Image:
    return Image.new("RGB", (64, 64), colour)


def test_page_sets_each_image_beside_its_sentence_and_escapes_text():
    page, images = render_page(
        ["A red circle.", _image("red"), " Then <b>it</b> turns blue.", _image("blue"), "The end."],
        "a <prompt> & more",
        {"model": "checkpoints/toy", "seed": 7},
    )
    assert len(images) == 2
    figures = re.findall(r"<figure>(.*?)</figure>", page)
    assert figures == [
        '<img src="image_1.png" alt="image 1"><figcaption>A red circle.</figcaption>',
        '<img src="image_2.png" alt="image 2"><figcaption>Then &lt;b&gt;it&lt;/b&gt; turns blue.</figcaption>',
    ]
    assert "<p>The end.</p>" in page and "a &lt;prompt&gt; &amp; more" in page and "<b>" not in page
    assert "<dt>seed</dt><dd>7</dd>" in page and "<dt>model</dt><dd>checkpoints/toy</dd>" in page


def test_an_image_without_a_sentence_before_it_stands_alone():
    page, _ = render_page([_image("red"), "", _image("blue")], "p")
    assert page.count("<figcaption>") == 0 and page.count("<figure>") == 2


def test_write_document_writes_the_page_and_images_and_never_over_a_folder(tmp_path):
    folder = tmp_path / "doc"
    page = write_document(["A red circle.", _image((255, 0, 0)), "The end <3"], "a prompt", folder)
    html = page.read_text()
    assert html.index('src="image_1.png"') < html.index("A red circle.") < html.index("The end &lt;3")
    assert Image.open(folder / "image_1.png").getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(FileExistsError, match="never written over"):
        write_document(["other"], "another prompt", folder)
    assert "A red circle." in page.read_text()


def test_a_failed_write_leaves_no_folder(tmp_path):
    class Unwritable:
        def save(self, path):
            raise OSError(f"disk full writing {path}")

    with pytest.raises(OSError, match="disk full"):
        write_document(["text", Unwritable()], "p", tmp_path / "doc")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its staging copy


@pytest.mark.parametrize(
    "prompts",
    [
        ["Draw a cat.", "draw a cat", "DRAW A CAT!!"],  # differ in case and punctuation only
        ["!!!", "???", "东京の猫", "кошка"],  # no ASCII letters at all
        ["x" * 60 + " one", "x" * 60 + " two"],  # share their first characters
        ["the same prompt", "the same prompt"],  # the same prompt run twice
    ],
)
def test_every_run_gets_its_own_folder(tmp_path, prompts):
    folders = []
    for prompt in prompts:
        folder = new_document_folder(tmp_path, prompt)
        write_document([prompt, _image("red")], prompt, folder)
        folders.append(folder)
    assert len(set(folders)) == len(prompts)
    for prompt, folder in zip(prompts, folders):
        assert prompt in (folder / "index.html").read_text()


def test_slug_is_a_safe_file_name():
    assert slug("Draw a green triangle in the center.") == "draw-a-green-triangle-in-the-center"
    assert slug("../../etc/passwd") == "etc-passwd"
    assert slug("东京") == "document"
    assert len(slug("word " * 40)) <= 40


def _run_generate(*args, cwd=ROOT, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "generate.py"), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["a prompt", "--model", "/nonexistent/dreamllm"], "--model /nonexistent/dreamllm: no such folder"),
        (["a prompt", "--model", "README.md"], "--model README.md: not a DreamLLM folder (it has no config.json)"),
        (["a prompt", "--model", "docs"], "--model docs: not a DreamLLM folder (it has no config.json)"),
        (["   "], "the prompt is empty"),
        (["a prompt", "--max-images", "-1"], "--max-images -1: must be 0 or more"),
        (["a prompt", "--steps", "0"], "argument --steps: 0 is not a positive integer"),
        (["a prompt", "--output", "README.md"], "--output README.md: is a file"),
    ],
)
def test_bad_arguments_end_in_one_clear_line(args, message):
    result = _run_generate(*args, timeout=60)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("generate.py: error:")


def test_a_missing_default_model_says_how_to_build_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(generate, "DEFAULT_MODEL", tmp_path / "toy")
    with pytest.raises(SystemExit) as exit_info:
        generate.main(["a prompt"])
    assert "python -m train.toy --output" in str(exit_info.value) and str(tmp_path / "toy") in str(exit_info.value)


def _screenshot(page: Path, png: Path) -> Image.Image:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1000,1400",
                    f"--screenshot={png}", page.as_uri()], capture_output=True, timeout=120, check=True)
    return Image.open(png).convert("RGB")


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "checkpoints" / "toy" / "config.json").exists(), reason="checkpoints/toy is not built")
def test_main_command_writes_a_clean_document_that_a_browser_shows(tmp_path):
    result = _run_generate(MAIN_PROMPT, "--output", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", f"the main command printed warnings or notices:\n{result.stderr}"
    (line,) = result.stdout.splitlines()
    match = re.fullmatch(r"wrote (.+/index\.html) \((\d+) images?\)", line)
    assert match, line
    page, count = Path(match.group(1)), int(match.group(2))
    assert page.parent.parent == tmp_path and 1 <= count <= 4
    html = page.read_text()
    assert html.count("<figure>") == count and "<dt>seed</dt><dd>0</dd>" in html and MAIN_PROMPT in html
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("Chromium is not installed (apt-get install chromium): the page was not looked at in a browser")
    shot = np.asarray(_screenshot(page, tmp_path / "page.png")).astype(int)
    # The images are the only black areas of the page (192x192 px each, black background), and their shapes the only
    # saturated colours: the browser drew every image, not a broken-image icon.
    black = (shot.max(axis=-1) < 12).sum()
    saturated = ((shot.max(axis=-1) - shot.min(axis=-1)) > 150).sum()
    assert black >= 0.5 * count * 192 * 192, (black, count)
    assert saturated >= 200 * count, (saturated, count)


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "checkpoints" / "toy" / "config.json").exists(), reason="checkpoints/toy is not built")
@pytest.mark.parametrize("prompt", ["Draw a green triangle in the center.", "a red circle on the left"])
def test_a_request_for_one_picture_gets_exactly_that_picture(tmp_path, prompt):
    from train.toy.judge import score_caption

    result = _run_generate(prompt, "--output", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    match = re.fullmatch(r"wrote (.+/index\.html) \(1 image\)", line)
    assert match, line  # one picture, then the reply ends: no story after it
    page = Path(match.group(1))
    assert page.read_text().count("<figure>") == 1
    assert all(score_caption(Image.open(page.parent / "image_1.png"), prompt).values())


def test_the_default_guidance_is_the_default_models():
    from train.toy.evaluate import GUIDANCE_SCALE

    parser_defaults = {action.dest: action.default for action in generate.build_parser()._actions}
    assert parser_defaults["guidance"] == GUIDANCE_SCALE
