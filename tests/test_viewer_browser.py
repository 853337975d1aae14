"""The viewer in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by
selenium): runs page, funnel, filtering a dataset, a row, a trajectory, marking a step wrong
with a correction, then the exported DPO pair through TRL's DPO data preparation.

Screenshots of the main pages go to $ASSAY_SCREENSHOTS (docs/screenshots for the README), or
to the test's temporary folder.
"""

from __future__ import annotations

import base64
import http.client
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
from local_tiny_model import build_tiny_model
from test_viewer_fixtures import LEAKED, REPO, build_workspace

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    ws = tmp_path_factory.mktemp("browser") / "ws"
    ids = build_workspace(ws)
    port = free_port()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "assay"),
            "view",
            "--workspace",
            str(ws),
            "--port",
            str(port),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
    yield ws, ids, f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--window-size=1280,900",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def shot(driver, name: str, tmp_path: Path) -> Path:
    """A full-page PNG (Chrome's DevTools capture beyond the viewport)."""
    folder = Path(os.environ.get("ASSAY_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    driver.execute_script("window.scrollTo(0, 0)")
    data = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
    )
    path = folder / f"{name}.png"
    path.write_bytes(base64.b64decode(data["data"]))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


def go(driver, element) -> None:
    """Click something that loads a page and wait until the new page replaced the old one
    (reading right after the click can hit the old page's elements)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(driver, 30).until(ec.staleness_of(old))


def test_browse_filter_open_row_and_trajectory_and_mark_a_step(served, browser, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    ws, ids, base = served
    d = browser
    d.get(base + "/")
    links = [a.text for a in d.find_elements(By.CSS_SELECTOR, "a.run-link")]
    assert set(ids.values()) <= set(links)
    shot(d, "runs", tmp_path)

    go(d, d.find_element(By.LINK_TEXT, ids["traces"]))
    funnel = d.find_elements(By.CSS_SELECTOR, "#funnel tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in funnel] == [
        "Generate",
        "MinLength",
        "TraceSteps",
        "AnswerVerifier",
        "PassRate",
    ]
    assert len(d.find_elements(By.CSS_SELECTOR, "#funnel-chart rect.kept")) == 5
    shot(d, "funnel", tmp_path)

    go(d, d.find_element(By.ID, "browse"))
    Select(d.find_element(By.CSS_SELECTOR, ".filter select.col")).select_by_value("correct")
    Select(d.find_element(By.CSS_SELECTOR, ".filter select.op")).select_by_value("is false")
    go(d, d.find_element(By.ID, "apply"))
    assert d.find_element(By.ID, "total").text == "4"  # sample 1 of each answered problem
    shown = sorted(a.text for a in d.find_elements(By.CSS_SELECTOR, "a.row-link"))
    assert shown == ["p0/s1", "p1/s1", "p2/s1", "p3/s1"]
    shot(d, "dataset", tmp_path)

    go(d, d.find_element(By.LINK_TEXT, "p0/s1"))
    assert d.find_element(By.ID, "row-id").text == "p0/s1"
    assert "wrong answer (got 6, gold 5)" in d.find_element(By.ID, "verdicts").text
    assert d.find_element(By.ID, "source-row").text == "p0"
    assert d.find_elements(By.ID, "need-author")  # no name yet: marking is disabled
    name = d.find_element(By.ID, "author-name")
    name.clear()
    name.send_keys("Grace Hopper")
    go(d, d.find_element(By.ID, "set-author"))
    step = d.find_element(By.CSS_SELECTOR, 'li[data-step-id="p0/s1#1"]')
    step.find_element(By.CSS_SELECTOR, "details.fix summary").click()
    step.find_element(By.CSS_SELECTOR, "textarea.correction-input").send_keys(
        "Step 2: Add 3 to get 5."
    )
    go(d, step.find_element(By.CSS_SELECTOR, "button.mark-wrong"))
    step = d.find_element(By.CSS_SELECTOR, 'li[data-step-id="p0/s1#1"]')
    assert "wrong" in step.get_attribute("class")
    assert step.find_element(By.CSS_SELECTOR, ".mark-label").text == "wrong"
    assert "Grace Hopper" in step.text and "Step 2: Add 3 to get 5." in step.text
    go(d, d.find_element(By.CSS_SELECTOR, 'li[data-step-id="p0/s1#0"] button.mark-correct'))
    assert "correct" in d.find_element(By.CSS_SELECTOR, 'li[data-step-id="p0/s1#0"]').get_attribute(
        "class"
    )
    shot(d, "row", tmp_path)

    # untrusted model output renders as text: the script neither runs nor vanishes
    d.get(base + f"/runs/{ids['traces']}/row?id=p3/s0")
    assert d.title != "pwned"
    assert '<script>document.title="pwned"</script>' in d.find_element(By.ID, "response").text
    assert LEAKED not in d.page_source

    d.get(base + f"/runs/{ids['tools']}/data")
    go(d, d.find_elements(By.CSS_SELECTOR, "a.trajectory-link")[0])
    turns = d.find_elements(By.CSS_SELECTOR, "li.turn")
    assert len(turns) == 2
    assert turns[0].find_element(By.CSS_SELECTOR, ".tool-name").text == "book_table"
    assert '"city": "Paris"' in turns[0].find_element(By.CSS_SELECTOR, "pre.args").text
    assert "state check passed: a booking exists" in turns[0].text
    assert d.title != "pwned"
    shot(d, "trajectory", tmp_path)

    d.get(base + f"/runs/{ids['training']}")
    assert len(d.find_elements(By.CSS_SELECTOR, "#curves polyline")) == 2
    shot(d, "training", tmp_path)


def test_live_server_refuses_path_traversal(served) -> None:
    _, ids, base = served
    host, port = base[len("http://") :].split(":")
    for path in (
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/runs/..%2f..%2f..%2fetc%2fpasswd/data",
        f"/runs/{ids['recipe']}/rejects/..%2f..%2f..%2f..%2fetc",
    ):
        con = http.client.HTTPConnection(host, int(port), timeout=10)
        con.request("GET", path)  # sent as written: no client-side normalisation
        response = con.getresponse()
        body = response.read().decode(errors="replace")
        assert response.status in (400, 404), path
        assert "root:" not in body


def test_marked_step_exports_a_dpo_pair_that_trl_prepares(served, browser, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    ws, _, _ = served
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "assay"),
            "feedback",
            "export",
            "--workspace",
            str(ws),
            "--out",
            str(tmp_path / "fb"),
            "--no-hf",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    files = [str(p) for p in (tmp_path / "fb" / "dpo" / "data").glob("*.parquet")]
    pairs = datasets.load_dataset("parquet", data_files=files, split="train")
    assert pairs["id"] == ["p0/s1#fix1"]
    assert pairs[0]["chosen"][0]["content"] == "Step 1: Start from 2.\nStep 2: Add 3 to get 5."
    assert "Add 3 to get 6." in pairs[0]["rejected"][0]["content"]
    tiny = build_tiny_model(tmp_path / "tiny")
    prepared = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny),
        args=DPOConfig(
            output_dir=str(tmp_path / "t"),
            use_cpu=True,
            bf16=False,
            report_to=[],
            gradient_checkpointing=False,
            max_length=512,
            dataset_num_proc=None,
        ),
        train_dataset=pairs,
        processing_class=AutoTokenizer.from_pretrained(tiny),
    ).train_dataset
    tok = AutoTokenizer.from_pretrained(tiny)
    assert "What is 2+3?" in tok.decode(prepared[0]["prompt_ids"])
    assert "get 5" in tok.decode(prepared[0]["chosen_ids"])
    assert "get 6" in tok.decode(prepared[0]["rejected_ids"])
