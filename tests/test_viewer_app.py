"""The viewer's pages over real runs (through the ASGI app, no browser): runs, funnel,
dataset filters and pages, row, lineage and paid requests, trajectory, rejects, training,
step feedback, escaping, redaction, path refusals and access rules."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from fastapi.testclient import TestClient
from test_viewer_fixtures import LEAKED, REPO, SECRET, build_workspace

from assay.curate.store import RunStore
from assay.viewer.app import create_app
from assay.viewer.feedback import feedback_for_row, latest_marks
from assay.viewer.workspace import Workspace


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    ws = tmp_path_factory.mktemp("viewer") / "ws"
    return ws, build_workspace(ws)


@pytest.fixture
def client(built: tuple[Path, dict[str, str]]) -> TestClient:
    return TestClient(create_app(built[0]), base_url="http://127.0.0.1")


def cells(html: str, table_id: str) -> list[list[str]]:
    body = html.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", body, re.S)
    found = [
        [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)]
        for r in rows
    ]
    return [r for r in found if r]


def test_runs_page_lists_every_run_with_status_and_rows(client, built) -> None:
    ws, ids = built
    html = client.get("/").text
    listed = {row[0]: row for row in cells(html, "runs")}
    assert set(ids.values()) <= set(listed)
    with RunStore(ws, read_only=True) as store:
        for run in store.runs():
            assert listed[run["run_id"]][2] == run["status"]
            assert listed[run["run_id"]][5] == f"{run['rows_out']:,}"


def test_funnel_page_matches_the_store_and_draws_one_bar_per_stage(client, built) -> None:
    ws, ids = built
    html = client.get(f"/runs/{ids['traces']}").text
    with RunStore(ws, read_only=True) as store:
        funnel = store.funnel(ids["traces"])
    table = cells(html, "funnel")
    assert [r[1] for r in table] == [f["name"] for f in funnel]
    assert [r[3] for r in table] == [f"{f['rows_out']:,}" for f in funnel]
    assert "2 × shorter than 20 chars" in table[1][5]  # MinLength's reject reason
    assert int(table[0][7]) == funnel[0]["requests"] == 10  # 5 problems x 2 samples
    chart = html.split('id="funnel-chart"')[1].split("</svg>")[0]
    assert chart.count('class="kept"') == len(funnel)


def test_dataset_filters_count_in_duckdb_and_match_the_shards(client, built) -> None:
    ws, ids = built
    run = ids["traces"]
    table = pads.dataset(str(ws / "runs" / run / "output")).to_table().to_pylist()
    wrong = sorted(r["id"] for r in table if not r["correct"])
    html = client.get(
        f"/runs/{run}/data", params={"col": "correct", "op": "is false", "val": ""}
    ).text
    assert re.search(r'id="total">(\d+)<', html).group(1) == str(len(wrong))
    assert sorted(re.findall(r'class="row-link"[^>]*>([^<]+)<', html)) == wrong
    # two filters and a search combine; a number filter on pass_rate
    html = client.get(
        f"/runs/{run}/data",
        params=[
            ("col", "pass_rate"),
            ("op", ">="),
            ("val", "0.5"),
            ("col", "correct"),
            ("op", "is true"),
            ("val", ""),
            ("q", "from 7"),
        ],
    ).text
    assert re.findall(r'class="row-link"[^>]*>([^<]+)<', html) == ["p2/s0"]
    bad = client.get(f"/runs/{run}/data", params={"col": "nope", "op": "=", "val": "1"})
    assert bad.status_code == 400 and "unknown column &#39;nope&#39;" in bad.text
    bad = client.get(f"/runs/{run}/data", params={"col": "pass_rate", "op": ">", "val": "x"})
    assert bad.status_code == 400 and "not a number" in bad.text


def test_pages_follow_file_order_and_sorting(client, built) -> None:
    ws, ids = built
    run = ids["recipe"]
    order = [
        r["id"] for r in pads.dataset(str(ws / "runs" / run / "output")).to_table().to_pylist()
    ]
    got = []
    for page in (1, 2, 3):
        html = client.get(f"/runs/{run}/data", params={"size": 20, "page": page}).text
        got += re.findall(r'class="row-link"[^>]*>([^<]+)<', html)
    assert got == order[:60]
    html = client.get(f"/runs/{run}/data", params={"sort": "id", "desc": "1", "size": 20}).text
    assert re.findall(r'class="row-link"[^>]*>([^<]+)<', html) == sorted(order, reverse=True)[:20]


def test_row_page_shows_prompt_response_steps_verdict_lineage_and_paid_request(
    client, built
) -> None:
    _, ids = built
    html = client.get(f"/runs/{ids['traces']}/row", params={"id": "p0/s1"}).text
    assert "Solve step by step: what is 2+3?" in html  # the prompt as sent
    assert "Step 2: Add 3 to get 6." in html  # raw response and steps
    assert html.count('step-text"') == 3
    assert "wrong answer (got 6, gold 5)" in html  # the verifier's rationale
    assert re.search(r'id="source-row">p0<', html)  # lineage back to the source row
    paid = cells(html, "requests")
    assert len(paid) == 1 and paid[0][1] == "openai/fake" and paid[0][2] == "no"


def test_model_output_is_escaped_and_secrets_are_redacted_everywhere(client, built) -> None:
    _, ids = built
    pages = [
        client.get(f"/runs/{ids['traces']}/row", params={"id": "p3/s0"}).text,
        client.get(f"/runs/{ids['traces']}/data", params={"q": "script"}).text,
        client.get(f"/runs/{ids['tools']}/trajectory", params={"id": "t0"}).text,
        client.get(f"/runs/{ids['training']}").text,
        client.get(f"/runs/{ids['traces']}").text,
    ]
    for html in pages[:3]:
        assert "&lt;script&gt;document.title" in html
        assert "<script>document.title" not in html
    for html in pages:
        assert SECRET not in html and LEAKED not in html
    assert "[redacted]" in pages[0] and "[redacted]" in pages[3]
    csp = client.get("/").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp


def test_trajectory_page_shows_turns_calls_results_and_state_checks(client, built) -> None:
    _, ids = built
    ok = client.get(f"/runs/{ids['tools']}/trajectory", params={"id": "t0"}).text
    assert ok.count('class="turn"') == 2
    assert 'class="tool-name">book_table<' in ok
    assert "&#34;city&#34;: &#34;Paris&#34;" in ok  # arguments parsed from their JSON string
    assert "B-17" in ok and "state check passed: a booking exists" in ok
    bad = client.get(f"/runs/{ids['tools']}/trajectory", params={"id": "t1"}).text
    assert "state check FAILED: no booking in the db" in bad
    assert (
        client.get(f"/runs/{ids['traces']}/trajectory", params={"id": "p0/s0"}).status_code == 400
    )


def test_rejects_browse_with_reasons(client, built) -> None:
    _, ids = built
    html = client.get(f"/runs/{ids['recipe']}/rejects").text
    folders = re.findall(r'/rejects/([^"]+)">browse rows', html)
    assert folders == ["01-MinLength", "02-ExactDedupe"]
    page = client.get(f"/runs/{ids['recipe']}/rejects/02-ExactDedupe").text
    assert "duplicate of" in page
    row_id = re.findall(r'class="row-link"[^>]*>([^<]+)<', page)[0]
    row = client.get(f"/runs/{ids['recipe']}/row", params={"id": row_id, "src": "02-ExactDedupe"})
    assert row.status_code == 200 and "rejected by 02-ExactDedupe: exact duplicate of" in row.text


def test_training_run_shows_curves_and_its_eval_table(client, built) -> None:
    _, ids = built
    html = client.get(f"/runs/{ids['training']}").text
    curves = html.split('id="curves"')[1].split('id="evals"')[0]
    assert curves.count("<figcaption>") == 1  # loss, with train and eval series
    assert curves.count("<polyline") == 2 and "last 0.2" in curves and "last 0.25" in curves
    evals = cells(html, "evals")
    assert sorted((r[2], r[4]) for r in evals) == [
        ("smollm2-135m", "0.047"),
        ("smollm2-135m+arith", "0.781"),
    ]


def test_requests_never_open_files_outside_the_workspace(client, built) -> None:
    ws, ids = built
    run = ids["traces"]
    (ws / "runs" / run / "output" / "zz-evil.parquet").symlink_to("/etc/passwd")
    try:
        for url in [
            "/static/../../../../etc/passwd",
            "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
            "/runs/..%2F..%2F..%2Fetc/data",
            "/runs/../../etc/passwd/data",
            f"/runs/{run}/rejects/..%2F..%2F..%2Fetc",
            f"/runs/{run}/rejects/%2E%2E",
            f"/runs/{run}/row?id=p0/s0&src=../../../../etc/passwd",
        ]:
            r = client.get(url)
            assert r.status_code in (400, 404), url
            assert "root:" not in r.text, url
        assert client.get(f"/runs/{run}/data").status_code == 200  # the link is skipped
    finally:
        (ws / "runs" / run / "output" / "zz-evil.parquet").unlink()


def test_feedback_is_appended_with_author_and_never_overwritten(built) -> None:
    ws, ids = built
    run = ids["traces"]
    client = TestClient(create_app(ws), base_url="http://127.0.0.1")
    form = {
        "row_id": "p1/s1",
        "step_id": "p1/s1#1",
        "label": "wrong",
        "correction": "Add 5 to get 9.",
    }
    assert client.post(f"/runs/{run}/feedback", data=form).status_code == 400  # no name yet
    client.post("/author", data={"author": "Ada Lovelace", "back": "/"})
    r = client.post(f"/runs/{run}/feedback", data=form, follow_redirects=False)
    assert r.status_code == 303
    client.post(f"/runs/{run}/feedback", data={**form, "label": "correct", "correction": ""})
    marks = feedback_for_row(Workspace(ws), run, "p1/s1")
    assert [(m["label"], m["author"]) for m in marks] == [
        ("wrong", "Ada Lovelace"),
        ("correct", "Ada Lovelace"),
    ]
    assert (
        marks[0]["correction"] == "Add 5 to get 9."
        and marks[0]["created_at"] <= marks[1]["created_at"]
    )
    latest = [m for m in latest_marks(Workspace(ws), run) if m["row_id"] == "p1/s1"]
    assert latest[0]["label"] == "correct" and latest[0]["marks"] == 2
    bad = client.post(f"/runs/{run}/feedback", data={**form, "step_id": "p0/s0#1"})
    assert bad.status_code == 400 and "has no step" in bad.text
    page = client.get(f"/runs/{run}/row", params={"id": "p1/s1"}).text
    assert page.count("<td>Ada Lovelace</td>") == 2  # both marks in the history


def test_access_rules_token_host_and_origin(built) -> None:
    ws, _ = built
    app = create_app(ws, token="tok-123456", loopback_only=False)
    anon = TestClient(app, base_url="http://203.0.113.5")
    assert anon.get("/").status_code == 401
    assert "tok-123456" not in anon.get("/").text
    r = anon.get("/?token=tok-123456", follow_redirects=False)
    assert r.status_code == 303 and "token" not in r.headers["location"]
    assert anon.get("/").status_code == 200  # the cookie now carries it
    bearer = TestClient(
        app, base_url="http://203.0.113.5", headers={"Authorization": "Bearer tok-123456"}
    )
    assert bearer.get("/").status_code == 200
    local = TestClient(create_app(ws), base_url="http://evil.example")
    assert local.get("/").status_code == 403  # DNS rebinding onto loopback
    same = TestClient(create_app(ws), base_url="http://127.0.0.1")
    r = same.post("/author", data={"author": "x"}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403


def test_cli_refuses_a_public_bind_without_a_token(built) -> None:
    ws, _ = built
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "assay"),
            "view",
            "--workspace",
            str(ws),
            "--host",
            "0.0.0.0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert out.returncode == 2 and "--token" in out.stderr


def test_a_run_writing_the_store_makes_pages_say_busy_not_fail(built) -> None:
    ws, ids = built
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from assay.curate.store import RunStore; "
            f"s = RunStore({str(ws)!r}); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        client = TestClient(create_app(ws), base_url="http://127.0.0.1")
        r = client.get("/")
        assert r.status_code == 503 and "busy" in r.text
        # pages that only read Parquet shards still work while the run writes
        assert client.get(f"/runs/{ids['traces']}/data").status_code == 200
    finally:
        holder.kill()
        holder.wait()
    assert TestClient(create_app(ws), base_url="http://127.0.0.1").get("/").status_code == 200


def test_dataset_shows_the_columns_asked_for(client, built) -> None:
    _, ids = built
    html = client.get(
        f"/runs/{ids['traces']}/data", params=[("show", "id"), ("show", "correct_reason")]
    ).text
    head = html.split('id="rows"')[1].split("</thead>")[0]
    assert re.findall(r"<th>([^<]+)</th>", head) == ["id", "correct_reason"]
    assert "wrong answer (got 6, gold 5)" in html
