"""`bneck report` as a user runs it, and its page as a person sees it: opened in a real headless Chromium.

The browser is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages ending in NUL on file descriptors 3 and 4), so the test needs nothing but the
distribution's ``chromium`` package: no websocket library, no driver binary, no network.
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from PIL import Image

from tests.imagefolders import make_class_folder

EXTRACT = ["--backbone", "mobilenet", "--input-size", "32", "--layer", "conv_pw_1_relu", "--weights", "none",
           "--seed", "5", "--precision", "fp32", "--store-dtype", "float32", "--batch-size", "8", "--no-progress"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
NO_BROWSER = ("no chromium on PATH: install it with `apt-get install -y chromium` (.ci/run does so when it can); "
              "the page was still written and checked without a browser")


def bneck(*args, env=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True,
                          env=env)


def ok(*args):
    r = bneck(*args)
    assert r.returncode == 0, r.stderr
    return r.stdout


class Browser:
    """A headless Chromium driven over the DevTools protocol on a pipe."""

    def __init__(self, width=1200, height=900):
        self.profile = tempfile.mkdtemp(prefix="bneck-chromium-")
        to_child, self._w = os.pipe()
        self._r, from_child = os.pipe()

        def fds():  # the protocol's fixed descriptors: commands in on 3, replies out on 4
            a, b = os.dup(to_child), os.dup(from_child)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
             "--no-default-browser-check", f"--user-data-dir={self.profile}", "about:blank"],
            preexec_fn=fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._buf, self._id, self.events = b"", 0, []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=True)

    def _recv(self):
        while b"\0" not in self._buf:
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                raise EOFError("chromium closed the DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, params=None, session=False):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._recv()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def open(self, path):
        """Load a file and wait for its load event (every image fetched or failed)."""
        self.events.clear()
        self.call("Page.navigate", {"url": "file://" + os.path.abspath(path)}, session=True)
        while not any(ev.get("method") == "Page.loadEventFired" for ev in self.events):
            self.events.append(self._recv())

    def evaluate(self, expression):
        return self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                         session=True)["result"]["value"]

    def problems(self):
        """Console errors, uncaught exceptions and failed loads seen since :meth:`open`."""
        out = []
        for ev in self.events:
            m, p = ev.get("method"), ev.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(f"console: {p['args']}")
            elif m == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails']}")
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif m == "Network.loadingFailed":
                out.append(f"load failed: {p.get('errorText')}")
        return out

    def screenshot(self, path):
        shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=True)
        with open(path, "wb") as fh:
            fh.write(base64.b64decode(shot["data"]))

    def close(self):
        try:
            self.call("Browser.close")
        except (EOFError, OSError, RuntimeError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)
        shutil.rmtree(self.profile, ignore_errors=True)


IMAGES = ("JSON.stringify([...document.images].map(i => ({src: i.getAttribute('src'), complete: i.complete, "
          "w: i.naturalWidth, h: i.naturalHeight, aw: +i.getAttribute('width'), ah: +i.getAttribute('height')})))")


def look_at(page, screenshot):
    """Open ``page`` headless: its images as the browser loaded them and what went wrong, plus a screenshot."""
    b = Browser()
    try:
        b.open(page)
        images = json.loads(b.evaluate(IMAGES))
        height = b.evaluate("document.documentElement.scrollHeight")
        b.screenshot(screenshot)
        return images, b.problems(), height
    finally:
        b.close()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    make_class_folder(root / "train", classes=("a", "b", "c"), per_class=8, seed=1)
    make_class_folder(root / "test", classes=("a", "b", "c"), per_class=4, seed=2,
                      bad=[("b", "broken.png", b"not a png at all")])
    ok("extract", root / "train", "-o", root / "train.h5", *EXTRACT)
    ok("extract", root / "test", "-o", root / "test.h5", *EXTRACT, "--max-bad-fraction", "0.5")
    ok("train", root / "train.h5", "-o", root / "m_logreg", "--head", "logreg", "--pooling", "avg")
    ok("train", root / "train.h5", "-o", root / "m_dense", "--head", "dense", "--pooling", "avg", "--epochs", "4")
    return root


@pytest.mark.slow
def test_report_compares_models_and_the_browser_sees_every_image(work, tmp_path):
    out = work / "rep"
    printed = ok("report", work / "m_logreg", work / "m_dense", work / "test.h5", "-o", out, "--no-progress")
    assert printed.strip().endswith(str(out / "index.html"))
    doc = json.loads((out / "report.json").read_text())
    for m in doc["models"]:
        same = json.loads(ok("evaluate", work / m["name"], work / "test.h5", "--json"))
        assert {k: m[k] for k in same} == same  # the report's figures are evaluate's
    dense = (out / "m_dense" / "index.html").read_text()
    assert "learning_curves.png" in dense and "broken.png" in dense  # a bad row, with its reason
    if not CHROMIUM:
        pytest.skip(NO_BROWSER)
    for page in ("index.html", "m_dense/index.html", "m_logreg/index.html"):
        shot = tmp_path / (page.replace("/", "_") + ".png")
        images, problems, height = look_at(out / page, shot)
        assert not problems, f"{page}: {problems}"
        base = os.path.dirname(page)
        assert images and all(i["complete"] and i["w"] > 0 for i in images), images
        for i in images:
            want = doc["images"][os.path.join(base, i["src"]) if base else i["src"]]
            assert [i["w"], i["h"]] == [i["aw"], i["ah"]] == want
        with Image.open(shot) as s:
            # The window's width less a scrollbar; the page's whole height, not the 900 px viewport.
            assert 1150 <= s.width <= 1200 and s.height >= min(height, 16384) > 900


@pytest.mark.slow
def test_evaluate_report_writes_the_same_page(work):
    res = json.loads(ok("evaluate", work / "m_logreg", work / "test.h5", "--json", "--report", work / "one"))
    assert res == json.loads(ok("evaluate", work / "m_logreg", work / "test.h5", "--json"))
    doc = json.loads((work / "one" / "report.json").read_text())
    assert doc["models"][0]["accuracy"] == res["accuracy"] and (work / "one" / "confusion_matrix.png").is_file()


@pytest.fixture
def shapes(tmp_path):
    """A model directory and a feature file by their shape only: usage checks run before anything is read."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.json").write_text("{}")
    (tmp_path / "f.h5").write_bytes(b"")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    return tmp_path


def test_report_usage_errors_exit_2_before_any_work(shapes):
    m, f, r = shapes / "m", shapes / "f.h5", shapes / "r"
    for args, says in [((m, "-o", r), "feature file"), ((f, "-o", r), "model director"),
                       ((m, shapes / "nope.h5", "-o", r), "nope.h5"), ((shapes, f, "-o", r), "without model.json"),
                       ((m, f, "-o", shapes / "mine"), "not a bneck report")]:
        out = bneck("report", *args)
        assert out.returncode == 2 and says in out.stderr, (args, out.stderr)
    out = bneck("evaluate", m, f, "--report", shapes / "mine")
    assert out.returncode == 2 and "not a bneck report" in out.stderr
    assert not r.exists() and os.listdir(shapes / "mine") == ["notes.txt"]


def test_without_matplotlib_report_says_how_to_install_it(shapes):
    work = tmp_path = shapes
    (work / "m_logreg").mkdir()
    (work / "m_logreg" / "model.json").write_text("{}")
    (work / "test.h5").write_bytes(b"")
    fake = tmp_path / "no_mpl"
    (fake / "matplotlib").mkdir(parents=True)
    (fake / "matplotlib" / "__init__.py").write_text("raise ImportError('matplotlib is not installed')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    r = bneck("report", work / "m_logreg", work / "test.h5", "-o", tmp_path / "r", env=env)
    assert r.returncode == 1 and "pip install 'bneck[plots]'" in r.stderr
    r = bneck("evaluate", work / "m_logreg", work / "test.h5", "--report", tmp_path / "r", env=env)
    assert r.returncode == 1 and "pip install 'bneck[plots]'" in r.stderr and not r.stdout


@pytest.mark.slow
def test_keypoint_report_draws_faces_from_the_kaggle_csv(tmp_path):
    from pipeline.tools.demo import make_demo

    paths = make_demo(tmp_path / "demo", n_faces=40)
    faces = ["--input-size", "32"] + EXTRACT[EXTRACT.index("--layer"):]
    ok("extract", paths["keypoints_training"], "-o", tmp_path / "f.h5", "--backbone", "mobilenet", *faces)
    ok("train", tmp_path / "f.h5", "-o", tmp_path / "m_spec", "--head", "specialists", "--pooling", "avg")
    ok("report", tmp_path / "m_spec", tmp_path / "f.h5", "-o", tmp_path / "rep", "--no-progress")
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    faces = [k for k in doc["images"] if k.startswith("face_")]
    assert len(faces) == 24 and all(doc["images"][k] == [192, 192] for k in faces)  # read from the inline pixels
    if CHROMIUM:
        images, problems, _h = look_at(tmp_path / "rep" / "index.html", tmp_path / "shot.png")
        assert not problems and len(images) == len(doc["images"])


def test_every_flag_of_report_and_evaluate_has_help():
    import argparse

    from pipeline.cli.main import build_parser
    from pipeline.cli.report import DEFAULT_GALLERY
    from pipeline.tools.report_html import GALLERY

    assert DEFAULT_GALLERY == GALLERY
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("report", "evaluate"):
        for action in sub.choices[name]._actions:
            assert action.help and action.help.strip(), f"bneck {name} {action.option_strings or action.dest}"


def test_bad_inputs_exit_1_naming_the_file_before_any_page(tmp_path):
    from pipeline.train import train
    from tests.feature_files import write_feature_file

    write_feature_file(tmp_path / "f.h5", n=24, shape=(6,), store_dtype="float32")
    write_feature_file(tmp_path / "other.h5", n=24, shape=(6,), store_dtype="float32", layer="another_layer")
    train(tmp_path / "f.h5", tmp_path / "m", head="logreg", pooling="avg")
    r = bneck("report", tmp_path / "m", tmp_path / "gone", tmp_path / "f.h5", "-o", tmp_path / "r")
    assert r.returncode == 1 and "gone" in r.stderr and "not a bneck model directory" in r.stderr, r.stderr
    assert not (tmp_path / "r").exists()  # checked before the first model was scored
    for cmd in (["report", tmp_path / "m", tmp_path / "other.h5", "-o", tmp_path / "r2"],
                ["evaluate", tmp_path / "m", tmp_path / "other.h5", "--report", tmp_path / "r2"]):
        r = bneck(*cmd)
        assert r.returncode == 1 and "other.h5" in r.stderr and "layer" in r.stderr and not r.stdout, r.stderr
    assert not (tmp_path / "r2").exists()
