"""The chapters open in JupyterLab.

One `jupyter lab` server, headless, on loopback with a random token and a free port, serving a
copy of the chapters, with its own empty Jupyter configuration (the user's settings and kernels cannot
change the result). Through its REST API every chapter opens as a notebook; a kernel starts, runs
a chapter's setup cells and stops; and, where a browser is installed, JupyterLab's page renders a
chapter. The server is shut down at the end, whatever happened.
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from book_toc import chapter_paths, chapter_title

pytest.importorskip("jupyterlab", reason="JupyterLab is not installed (pip install -e '.[book]')")

CHAPTERS = chapter_paths()  # in the book's order
START_TIMEOUT = 120  # s: a loaded 2-core machine is slow to import JupyterLab's server extensions


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    def __init__(self, base: str, token: str, proc: subprocess.Popen, log: Path) -> None:
        self.base, self.token, self.proc, self.log = base, token, proc, log

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 30):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            kind = r.headers.get("Content-Type", "")
            return r.status, (json.loads(raw) if "json" in kind and raw else raw.decode("utf-8", "replace"))

    def get(self, path: str):
        return self.request("GET", path)

    def log_tail(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    home = tmp_path_factory.mktemp("jupyter-home")
    env = {**os.environ}
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                     ("JUPYTERLAB_SETTINGS_DIR", "lab-settings"), ("JUPYTERLAB_WORKSPACES_DIR", "lab-workspaces"),
                     ("IPYTHONDIR", "ipython")):
        env[var] = str(home / sub)
    # JupyterLab writes next to what it opens (.ipynb_checkpoints, autosaves): it serves a copy of
    # the chapters, byte for byte, so that the repository is never touched
    root = home / "course"
    (root / "chapters").mkdir(parents=True)
    for path in CHAPTERS:
        shutil.copy2(path, root / "chapters" / path.name)
    port, token = free_port(), secrets.token_hex(24)
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--ServerApp.terminals_enabled=False", "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")  # CI containers run as root
    log = home / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Lab(f"http://127.0.0.1:{port}", token, proc, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                status, body = server.get("/api/status")
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer within {START_TIMEOUT} s:\n{server.log_tail()}")
            time.sleep(0.5)
        yield server
    finally:
        try:
            if proc.poll() is None:
                server.request("POST", "/api/shutdown", timeout=10)  # stops its kernels too
                proc.wait(timeout=30)
        except Exception:
            pass
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


def test_the_server_needs_its_token(lab):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(lab.base + "/api/contents/chapters", timeout=10)
    assert err.value.code == 403


def test_lab_lists_every_chapter(lab):
    status, listing = lab.get("/api/contents/chapters?content=1")
    assert status == 200 and listing["type"] == "directory"
    names = {item["name"] for item in listing["content"] if item["type"] == "notebook"}
    assert {p.name for p in CHAPTERS} <= names


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_each_chapter_opens_as_a_notebook(lab, path):
    status, model = lab.get(f"/api/contents/chapters/{path.name}?content=1&type=notebook")
    assert status == 200
    assert model["type"] == "notebook" and model["format"] == "json"
    nb = model["content"]
    on_disk = json.loads(path.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4 and len(nb["cells"]) == len(on_disk["cells"]) > 5
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    first = nb["cells"][0]["source"]
    assert "colab-badge.svg" in first and f"chapters/{path.name}" in first
    # and JupyterLab's own page for it is served
    status, page = lab.get(f"/lab/tree/chapters/{path.name}")
    assert status == 200 and "jupyter-config-data" in page


def run_in_kernel(lab, kernel_id: str, code: str, timeout: float = 180) -> tuple[str, dict]:
    """Execute `code` over the kernel's websocket; return (stdout, execute_reply content)."""
    websocket = pytest.importorskip("websocket", reason="websocket-client is not installed (jupyter_server needs it)")
    ws = websocket.create_connection(
        f"ws://{lab.base.removeprefix('http://')}/api/kernels/{kernel_id}/channels",
        header=[f"Authorization: token {lab.token}"], timeout=timeout,
    )
    try:
        msg_id = secrets.token_hex(16)
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test", "session": secrets.token_hex(16),
                       "date": "", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))
        stdout, reply, idle = [], None, False
        deadline = time.monotonic() + timeout
        while not (reply and idle):
            assert time.monotonic() < deadline, "the kernel did not answer in time"
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "stream" and msg["content"]["name"] == "stdout":
                stdout.append(msg["content"]["text"])
            elif kind == "error":
                stdout.append("\n".join(msg["content"]["traceback"]))
            elif kind == "execute_reply":
                reply = msg["content"]
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        return "".join(stdout), reply
    finally:
        ws.close()


def test_a_kernel_runs_a_chapters_setup_cells_and_stops(lab):
    nb = json.loads(CHAPTERS[0].read_text(encoding="utf-8"))
    setup = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"][:2]
    status, kernel = lab.request("POST", "/api/kernels", {"name": nb["metadata"]["kernelspec"]["name"]})
    assert status == 201
    try:
        code = "\n\n".join(setup) + "\n\nimport sys, torch\nprint(mini_gpt.__name__, torch.get_num_threads(), sys.executable)"
        out, reply = run_in_kernel(lab, kernel["id"], code)
        assert reply["status"] == "ok", out
        name, threads, executable = out.strip().splitlines()[-1].split(" ", 2)
        assert (name, threads) == ("mini_gpt", "1")  # course.setup_notebook() pinned one thread
        assert Path(executable).resolve() == Path(sys.executable).resolve()  # the environment's own python
    finally:
        status, _ = lab.request("DELETE", f"/api/kernels/{kernel['id']}")
    assert status == 204
    _, running = lab.get("/api/kernels")
    assert kernel["id"] not in {k["id"] for k in running}


def test_jupyterlab_renders_a_chapter_in_a_browser(lab, browser, tmp_path_factory):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    path = next((p for p in CHAPTERS if p.stem == "the_full_gpt"), CHAPTERS[0])  # the one with the explorer
    title = chapter_title(path)
    browser.set_window_size(1280, 900)
    browser.get(f"{lab.base}/lab/tree/chapters/{path.name}?token={lab.token}")
    wait = WebDriverWait(browser, 120, poll_frequency=0.5)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell"))
    heading = wait.until(lambda d: next((h for h in d.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-MarkdownOutput h1")
                                         if h.text.strip()), None))
    assert heading.text.strip().rstrip("¶").strip() == title
    # cells keep appearing after the title is drawn (JupyterLab renders a notebook progressively)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell")) >= 5)
    folder = Path(os.environ.get("MINI_GPT_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(folder / f"jupyterlab_{path.stem}.png"))
