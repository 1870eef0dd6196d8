"""The Gradio demo, served on 127.0.0.1 by `python app.py`: used through gradio_client (a story streams text and
images; bad inputs get errors and the server goes on) and, where Chromium is installed, through a real browser."""

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="gradio is not installed (docs/evaluation.md gives the install line)")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from tests.conftest import REPO_ROOT  # noqa: E402

STORY = "Tell a short story about a square that changes color, with pictures."
FAST = {"steps": 8, "guidance": 3.0, "seed": 0, "max_images": 2, "max_new_tokens": 40}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@pytest.fixture(scope="module")
def server():
    port = free_port()
    process = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def chat(client: Client, text: str, files=(), **settings):
    settings = {**FAST, **settings}
    return client.submit({"text": text, "files": list(files)}, [], settings["steps"], settings["guidance"],
                         settings["seed"], settings["max_images"], settings["max_new_tokens"], api_name="/chat")


def reply_parts(history) -> tuple[list[str], list[str]]:
    """The last assistant message's texts and image paths."""
    content = history[-1]["content"]
    assert history[-1]["role"] == "assistant"
    texts = [part["text"] for part in content if part.get("type") == "text"]
    images = [part["value"] for part in content if part.get("type") == "component" and part["component"] == "image"]
    return texts, images


def test_story_streams_text_and_images(server):
    client = Client(server, verbose=False)
    job = chat(client, STORY)
    history = job.result()[0]
    # Every streamed update (gradio_client may also list a dropped keep-alive connection among them).
    updates = [update for update in job.outputs() if isinstance(update, (list, tuple)) and isinstance(update[0], list)]
    texts, images = reply_parts(history)
    assert texts and images, history
    # The reply grew piece by piece (text as decoded, images as drawn): the assistant's content never shrank, and
    # each segment appeared in an update of its own.
    lengths = [len(update[0][-1]["content"]) for update in updates if update[0][-1]["role"] == "assistant"]
    assert lengths == sorted(lengths) and len(set(lengths)) >= len(texts) + len(images)
    assert len(lengths) > len(set(lengths))  # a sentence grew in place: text streamed before it was complete
    image_url = f"{server}gradio_api/file={images[0]}"
    with urllib.request.urlopen(image_url) as response:
        picture = np.asarray(Image.open(response).convert("RGB"))
    assert picture.shape[0] >= 256  # the 64-px picture, shown enlarged
    assert len(images) <= FAST["max_images"]


def test_uploaded_image_is_read(server, tmp_path):
    from train.toy.world import Scene, Shape, render

    path = tmp_path / "red-circle.png"
    render(Scene((Shape("red", "circle", "left"),))).save(path)
    history = chat(Client(server, verbose=False), "What color is the shape?", [handle_file(str(path))]).result()[0]
    texts, images = reply_parts(history)
    assert texts[0].strip(" .").split()[0] == "red" and not images


@pytest.mark.parametrize(
    "message, settings, error",
    [
        ("", {}, "write a message"),
        ("a" * 2001, {}, "at most 2000"),
        ("<image> What color is the shape?", {}, "reserved token"),  # images come only as uploads
        # gradio's sliders refuse out-of-range values themselves; the handler checks them again
        (STORY, {"steps": 0}, "less than minimum|steps must be between"),
        (STORY, {"max_images": 50}, "greater than maximum|maximum images must be between"),
        (STORY, {"guidance": 25.0}, "greater than maximum|guidance must be between"),
    ],
    ids=["empty", "too-long", "typed-image-token", "steps", "max-images", "guidance"],
)
def test_bad_requests_get_errors(server, message, settings, error):
    with pytest.raises(AppError, match=error):
        chat(Client(server, verbose=False), message, **settings).result()


def test_files_not_uploaded_or_not_images_are_refused_and_the_server_lives_on(server, tmp_path):
    client = Client(server, verbose=False)
    outside = {"path": str(REPO_ROOT / "README.md"), "meta": {"_type": "gradio.FileData"}}
    with pytest.raises(AppError):
        chat(client, "What color is the shape?", [outside]).result()
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    with pytest.raises(AppError, match="not a readable image"):
        chat(client, "What color is the shape?", [handle_file(str(not_an_image))]).result()
    history = chat(client, "Draw a red circle on the left.", max_images=1).result()[0]
    assert reply_parts(history)[1], "the server stopped answering after the bad requests"


def cdp(ws, method: str, **params):
    cdp.counter = getattr(cdp, "counter", 0) + 1
    ws.send(json.dumps({"id": cdp.counter, "method": method, "params": params}))
    while True:
        message = json.loads(ws.recv())
        if message.get("id") == cdp.counter:
            if "error" in message:
                raise RuntimeError(f"{method}: {message['error']}")
            return message["result"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium)")
def test_browser_shows_a_story_with_images(server, tmp_path):
    from websockets.sync.client import connect

    port = free_port()
    browser = subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--remote-debugging-port={port}", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1600",
         server],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/json/version", browser, timeout=60)
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = next(target for target in pages if target["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            def evaluate(expression):
                return cdp(ws, "Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

            deadline = time.time() + 60
            while not evaluate("!!document.querySelector('textarea')") and time.time() < deadline:
                time.sleep(0.5)
            assert "knows only these words" in evaluate("document.body.innerText")  # the toy's vocabulary
            evaluate("document.querySelector('textarea').focus()")
            cdp(ws, "Input.insertText", text=STORY)
            evaluate("document.querySelector('button.submit-button').click()")
            created = "[...document.querySelectorAll('.message img')].filter(i => i.complete && i.naturalWidth >= 64)"
            deadline = time.time() + 240
            while time.time() < deadline and not evaluate(f"{created}.length"):
                time.sleep(1)
            assert evaluate(f"{created}.length") >= 1, "no created image appeared in the conversation"
            reply, steady = None, 0  # then wait for the story to end: the reply unchanged for 3 s
            while time.time() < deadline and steady < 3:
                now = evaluate(f"document.querySelector('.message-wrap').innerText + {created}.length")
                steady, reply = (steady + 1 if now == reply else 0), now
                time.sleep(1)
            assert "square" in evaluate("document.querySelector('.message-wrap').innerText").lower()
            evaluate(f"{created}[0].scrollIntoView({{block: 'center'}})")
            time.sleep(0.5)
            box = evaluate(f"(r => [r.left, r.top, r.right, r.bottom])({created}[0].getBoundingClientRect())")
            shot = base64.b64decode(cdp(ws, "Page.captureScreenshot", format="png")["data"])
        path = tmp_path / "story.png"
        path.write_bytes(shot)
        if os.environ.get("DEMO_SCREENSHOT"):  # keep a copy where asked, e.g. for a report
            shutil.copy(path, Path(os.environ["DEMO_SCREENSHOT"]))
        screenshot = Image.open(path).convert("RGB")
        picture = np.asarray(screenshot.crop(tuple(round(v) for v in box))).reshape(-1, 3).astype(int)
        # Where the browser drew the created picture, the screenshot shows a shape: vivid pixels of a world colour.
        vivid = (picture.max(1) >= 160) & (picture.max(1) - picture.min(1) >= 120)
        assert picture.size and vivid.sum() >= 200, f"the screenshot ({path}) shows no shape where the image is"
    finally:
        browser.terminate()
        browser.wait(timeout=30)
