"""Real runs for the viewer tests, written to the traces and trajectories contracts.

- `trace_run`: Generate (2 samples per problem, against the fake OpenAI server) -> MinLength
  (rejects a short answer) -> `TraceSteps` (the ReasoningTraces columns) -> AnswerVerifier
  (`correct`, `correct_score`, `correct_reason`, misses kept) -> `PassRate`.
- `trajectory_run`: `ScriptedRollout` writes the ToolRollouts columns for two tasks.
- `recipe_run`: recipes/clean_text.yaml through the CLI.
- `training_run`: a training run in the trainers' tables (assay/train/store.py's shape).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from openai_server import FakeOpenAI

from assay.curate.pipeline import Pipeline
from assay.curate.stage import Map
from assay.curate.store import RunStore
from assay.judges.answer import AnswerVerifier
from assay.operators.generate import Generate
from assay.operators.text import MinLength

SECRET = "sk-test-VIEWER-SECRET-1234567890"
LEAKED = "sk-live-ABCDEFGHIJKLMNOPQRSTUVWX"  # a key a model repeated in its answer
XSS = '<script>document.title="pwned"</script>'
PROBLEMS = [(2, 3), (4, 5), (7, 1), (6, 6), (1, 1)]
REPO = Path(__file__).resolve().parents[1]

STEP = pa.struct([("step_id", pa.string()), ("text", pa.string())])
CALL = pa.struct(
    [
        ("id", pa.string()),
        ("type", pa.string()),
        ("function", pa.struct([("name", pa.string()), ("arguments", pa.string())])),
    ]
)
MESSAGE = pa.struct(
    [
        ("role", pa.string()),
        ("content", pa.string()),
        ("tool_calls", pa.list_(CALL)),
        ("tool_call_id", pa.string()),
        ("name", pa.string()),
    ]
)


def trace_responder(body: dict) -> str:
    """Sample 0 (seed 7) adds correctly, sample 1 is off by one; 1+1 gets a short non-answer;
    6+6's answer carries a script tag and a leaked key (untrusted model output)."""
    a, b = (int(x) for x in re.findall(r"\d+", body["messages"][-1]["content"])[:2])
    if (a, b) == (1, 1):
        return "no idea"
    s = a + b if body.get("seed") == 7 else a + b + 1
    extra = f" {XSS} my key is {LEAKED}" if (a, b) == (6, 6) else ""
    return (
        f"Step 1: Start from {a}.\nStep 2: Add {b} to get {s}.{extra}\n"
        f"Step 3: Check that {s} - {b} = {s - b}.\nAnswer: {s}"
    )


class TraceSteps(Map):
    """Fixture of the ReasoningTraces contract: `reasoning`, `final_answer`, `steps`.

    Input columns: `generation`. Output columns: `reasoning`, `final_answer`,
    `steps` (list<struct<step_id, text>>, step_id "<row id>#<k>").
    """

    def map(self, table: pa.Table) -> pa.Table:
        reasoning, answers, steps = [], [], []
        for row in table.select(["id", "generation"]).to_pylist():
            lines = row["generation"].split("\n")
            body = [x for x in lines if not x.startswith("Answer:")]
            answer = next((x[7:].strip() for x in lines if x.startswith("Answer:")), "")
            reasoning.append("\n".join(body))
            answers.append(answer)
            steps.append([{"step_id": f"{row['id']}#{k}", "text": t} for k, t in enumerate(body)])
        return (
            table.append_column("reasoning", pa.array(reasoning))
            .append_column("final_answer", pa.array(answers))
            .append_column("steps", pa.array(steps, pa.list_(STEP)))
        )


class PassRate(Map):
    """Fixture: `pass_rate`, the share of a problem's samples (same `parent_id`) verified."""

    def map(self, table: pa.Table) -> pa.Table:
        parents = table["parent_id"].to_pylist()
        correct = table["correct"].to_pylist()
        share = {
            p: sum(c for q, c in zip(parents, correct, strict=True) if q == p) for p in parents
        }
        total = {p: parents.count(p) for p in parents}
        return table.append_column(
            "pass_rate", pa.array([share[p] / total[p] for p in parents], pa.float64())
        )


def trace_run(workspace: Path) -> str:
    with FakeOpenAI(responder=trace_responder) as server:
        pipeline = Pipeline(
            [
                Generate(
                    model="openai/fake",
                    api_base=server.base_url,
                    api_key=SECRET,
                    prompt="Solve step by step: what is {{ a }}+{{ b }}?",
                    n=2,
                    seed=7,
                    max_attempts=2,
                    retry_initial_s=0.01,
                ),
                MinLength(column="generation", chars=20),
                TraceSteps(),
                AnswerVerifier(column="final_answer", gold_column="answer", drop_incorrect=False),
                PassRate(),
            ],
            name="arith-traces",
        )
        source = [
            {"id": f"p{i}", "a": a, "b": b, "answer": str(a + b), "question": f"What is {a}+{b}?"}
            for i, (a, b) in enumerate(PROBLEMS)
        ]
        return pipeline.run(source, workspace=workspace, progress="quiet").run_id


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "book_table",
            "description": "Book a restaurant table",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "people": {"type": "integer"}},
                "required": ["city", "people"],
            },
        },
    }
]


class ScriptedRollout(Map):
    """Fixture of the ToolRollouts contract: a two-turn booking episode per task.

    Input columns: `id`, `city`, `people`, `ok`. Output columns: `parent_id`, `messages`,
    `tools`, `episode`, `reward`, `correct`, `turns`, `finish`.
    """

    def map(self, table: pa.Table) -> pa.Table:
        out = {k: [] for k in ("messages", "tools", "episode", "reward", "correct", "turns")}
        out["finish"] = []
        for row in table.to_pylist():
            args = json.dumps({"city": row["city"], "people": row["people"]})
            result = '{"booking": "B-17"}' if row["ok"] else '{"error": "no tables left"}'
            out["messages"].append(
                [
                    {"role": "system", "content": "You book tables."},
                    {"role": "user", "content": f"A table for {row['people']} in {row['city']}"},
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "book_table", "arguments": args},
                            }
                        ],
                    },
                    {
                        "role": "tool",
                        "content": result,
                        "tool_call_id": "call_1",
                        "name": "book_table",
                    },
                    {"role": "assistant", "content": f"Booked {XSS}" if row["ok"] else "Sorry."},
                ]
            )
            out["tools"].append(json.dumps(TOOLS))
            out["episode"].append(
                json.dumps(
                    {
                        "turns": [{"turn": 1, "seconds": 0.25}, {"turn": 2, "seconds": 0.5}],
                        "state_checks": [
                            {
                                "turn": 1,
                                "passed": row["ok"],
                                "detail": "a booking exists"
                                if row["ok"]
                                else "no booking in the db",
                            },
                        ],
                    }
                )
            )
            out["reward"].append(1.0 if row["ok"] else 0.0)
            out["correct"].append(bool(row["ok"]))
            out["turns"].append(2)
            out["finish"].append("answer")
        types = {"messages": pa.list_(MESSAGE), "reward": pa.float64(), "turns": pa.int64()}
        table = table.append_column(
            "parent_id", pc.binary_join_element_wise(table["id"], pa.scalar("-task"), "")
        )
        for name, values in out.items():
            table = table.append_column(name, pa.array(values, types.get(name)))
        return table


def trajectory_run(workspace: Path) -> str:
    source = [
        {"id": "t0", "city": "Paris", "people": 2, "ok": True},
        {"id": "t1", "city": "Rome", "people": 9, "ok": False},
    ]
    pipeline = Pipeline([ScriptedRollout()], name="booking-rollouts")
    return pipeline.run(source, workspace=workspace, progress="quiet").run_id


def recipe_run(workspace: Path) -> str:
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "assay"),
            "run",
            str(REPO / "recipes/clean_text.yaml"),
            "--workspace",
            str(workspace),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    return re.search(r"run (\S+): output", out.stdout).group(1)


TRAIN_SCHEMA = """
create table if not exists train_runs (
    run_id varchar primary key, method varchar, model varchar, config json,
    output_dir varchar, adapter_dir varchar, model_name varchar, status varchar);
create table if not exists train_metrics (run_id varchar, step integer, name varchar, value double);
create table if not exists eval_results (
    eval_id varchar, model varchar, task varchar, prompt_style varchar, n integer,
    accuracy double, stderr double, prompt_tokens double, completion_tokens double,
    latency_s double, created_at timestamp default current_timestamp);
"""


def training_run(workspace: Path) -> str:
    """A finished SFT run: loss falling over 10 steps, eval_loss at 5 and 10, an eval table."""
    with RunStore(workspace) as store:
        run_id = store.new_run("train-sft", None, {"method": "sft", "api_key": SECRET})
        store.con.execute(TRAIN_SCHEMA)
        store.con.execute(
            "insert into train_runs values (?, 'sft', 'smollm2-135m', ?, '/tmp/o', '/tmp/o/a', "
            "'smollm2-135m+arith', 'done')",
            [run_id, json.dumps({"lr": 5e-4, "api_key": SECRET})],
        )
        points = [[run_id, s, "loss", 2.0 / s] for s in range(1, 11)]
        points += [[run_id, s, "eval_loss", 2.5 / s] for s in (5, 10)]
        store.con.executemany("insert into train_metrics values (?, ?, ?, ?)", points)
        store.con.executemany(
            "insert into eval_results (eval_id, model, task, prompt_style, n, accuracy, stderr, "
            "prompt_tokens, completion_tokens, latency_s) values (?, ?, 'arith', 'short', 64, "
            "?, 0.05, 20, 4, 0.1)",
            [
                ["e1", "smollm2-135m", 0.047],
                ["e1", "smollm2-135m+arith", 0.781],
                ["e2", "someone-else", 0.5],
            ],
        )
        store.set_status(run_id, "done")
    return run_id


def build_workspace(workspace: Path) -> dict[str, str]:
    return {
        "recipe": recipe_run(workspace),
        "traces": trace_run(workspace),
        "tools": trajectory_run(workspace),
        "training": training_run(workspace),
    }


# the fixtures honour the contracts the viewer reads -----------------------------------------


def test_fixture_runs_write_the_contract_columns(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    ws = tmp_path / "ws"
    traces = pq.read_table(next((ws / "runs" / trace_run(ws) / "output").glob("*.parquet")))
    assert traces.schema.field("steps").type == pa.list_(STEP)
    for col in ("id", "parent_id", "question", "reasoning", "final_answer", "pass_rate", "correct"):
        assert col in traces.column_names, col
    rows = {r["id"]: r for r in traces.to_pylist()}
    assert rows["p0/s0"]["correct"] and not rows["p0/s1"]["correct"]
    assert rows["p0/s0"]["pass_rate"] == 0.5
    assert rows["p0/s1"]["correct_reason"] == "wrong answer (got 6, gold 5)"
    assert "p4/s0" not in rows  # "no idea" went to the rejects
    tools = pq.read_table(next((ws / "runs" / trajectory_run(ws) / "output").glob("*.parquet")))
    assert tools.schema.field("messages").type == pa.list_(MESSAGE)
    assert json.loads(tools["episode"][0].as_py())["state_checks"][0]["passed"] is True
