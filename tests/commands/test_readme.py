"""The README is a front door: short, its links lead somewhere, and every snippet of its tour runs as written on
`checkpoints/toy`, in order, in one fresh folder, with no warning on the way."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")


# tqdm's progress bars (weights loading, denoising steps) are the libraries' intended display, not notices; a bar
# nested in another (transformers' weights inside diffusers' components) moves the cursor with ANSI escapes.
PROGRESS_BAR = re.compile(r"^[^\n|]*\d+%\|[^\n]*\| *\d+/\d+ \[[^\n]*\]$")
CURSOR_MOVE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _notices(stderr: str) -> list[str]:
    """Every stderr line a user would read as a warning or notice: all but progress bars and blank lines."""
    lines = [CURSOR_MOVE.sub("", part).strip() for line in stderr.splitlines() for part in line.split("\r")]
    return [line for line in lines if line and not PROGRESS_BAR.match(line)]


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def _tour() -> str:
    return README[README.index("## A five-minute tour"):README.index("## The real model")]


def test_readme_is_short_and_has_what_a_newcomer_looks_for():
    assert len(README.splitlines()) <= 250
    for heading in ("## Set-up", "## Main command", "## Tests", "## A five-minute tour", "## The real model",
                    "## Documentation", "## License and citation"):
        assert heading in README, heading
    assert "python -m pytest tests" in _blocks(README, "bash")[2]  # the test command .ci/run calls
    assert "python -m pytest tests" in (ROOT / ".ci" / "run").read_text()


def test_every_local_link_leads_to_a_file():
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if not re.match(r"[a-z]+://", target):
                assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to a missing {target}"


def test_the_docs_map_leads_to_every_page():
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", README))
    index = set(re.findall(r"\]\(([\w-]+\.md)\)", (DOCS / "README.md").read_text()))
    pages = {page.name for page in DOCS.glob("*.md")} - {"README.md"}
    assert pages <= linked and pages <= index, (pages - linked, pages - index)


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "checkpoints" / "toy" / "config.json").exists(), reason="checkpoints/toy is not built")
def test_the_tour_runs_as_written_without_warnings(tmp_path):
    # A user's fresh folder: the repository's code and checkpoint, nothing else.
    (tmp_path / "checkpoints").symlink_to(ROOT / "checkpoints")
    python_blocks = _blocks(_tour(), "python")
    assert len(python_blocks) == 4  # create, understand, interleave, write training data
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = tmp_path / "tour.py"
    script.write_text("\n".join(python_blocks))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert _notices(result.stderr) == [], "the tour printed warnings or notices"
    lines = result.stdout.splitlines()
    assert lines[0] == "(64, 64)"
    assert lines[1] in COLOURS  # the answer about the picture just created is a colour of the world
    assert any(line.startswith("[image (64, 64)]") for line in lines[2:-2])
    assert lines[-2] == "1 eos"  # a request for one picture: exactly one segment, then the end of the reply
    assert lines[-1] == "['instructions', 'pairs', 'qa', 'stories']"

    (bash,) = _blocks(_tour(), "bash")
    commands = [line.split("#")[0] for line in bash.replace("\\\n", " ").splitlines() if line.strip()]
    commands = [command.replace("python ", f"{sys.executable} ", 1).replace("generate.py", str(ROOT / "generate.py"))
                for command in commands]
    for command in commands:
        result = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (command, result.stderr[-3000:])
    assert (tmp_path / "runs" / "tour-sft" / "adapter_model.safetensors").exists()
    assert (tmp_path / "runs" / "tour-merged" / "config.json").exists()
    assert re.fullmatch(r"wrote .+/index\.html \(\d images?\)\n", result.stdout)
