"""BfclEnvironment on BFCL's own APIs and checker (bfcl-eval==2026.3.23, read from its wheel):
a task replayed with its ground-truth calls scores as correct, with one call changed as
wrong, and an episode cut short fails like BFCL's force-terminated entries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openai_server import FakeOpenAI

from assay.curate.pipeline import Pipeline
from assay.datasets.bfcl import function_docs, multi_turn_tasks, openai_tool
from assay.operators.tools.bfcl_calls import call_string, openai_call
from assay.operators.tools.bfcl_env import BfclEnvironment
from assay.operators.tools.rollouts import ToolRollouts


def replay(
    task_id: str, change: tuple[int, int, str] | None = None, **options: Any
) -> BfclEnvironment:
    """Play a task's ground truth; `change=(turn, call, replacement)` swaps one call."""
    env = BfclEnvironment(**options)
    env.reset({"id": task_id})
    for k, turn in enumerate(env.task["ground_truth"]):
        calls = list(turn)
        if change and change[0] == k:
            calls[change[1]] = change[2]
        if calls:
            env.step_calls([openai_call(c, env.docs, i) for i, c in enumerate(calls)])
        if env.end_turn("done") is None:
            break
    return env


@pytest.mark.parametrize(
    "task_id", ["multi_turn_base_0", "multi_turn_base_60", "multi_turn_base_150"]
)
def test_ground_truth_replay_scores_as_correct(task_id: str) -> None:
    env = replay(task_id)
    score = env.score()
    assert score.correct and score.reward == 1.0
    assert [c["passed"] for c in score.checks] == [True] * len(env.task["ground_truth"])


def test_one_changed_call_scores_as_wrong_at_its_turn() -> None:
    task = multi_turn_tasks("base", ids=["multi_turn_base_1"])[0]
    ground_truth = json.loads(task["ground_truth"])
    assert ground_truth[1][1] == "mv(source='log.txt',destination='archive')"
    env = replay(task["id"], change=(1, 1, "mv(source='log.txt',destination='backup')"))
    score = env.score()
    assert not score.correct
    assert [c["passed"] for c in score.checks] == [True, False, False, False]
    assert "instance_state_mismatch" in score.checks[1]["detail"]
    assert score.reward == 0.25


def test_stopping_at_the_failed_turn_gives_the_whole_episodes_score() -> None:
    change = (1, 1, "mv(source='log.txt',destination='backup')")
    whole = replay("multi_turn_base_1", change=change)
    stopped = replay("multi_turn_base_1", change=change, stop_at_failed_turn=True)
    assert stopped.done and stopped.failed_turn == 1 and len(stopped.decoded_turns()) == 2
    assert len(whole.decoded_turns()) == 4
    a, b = whole.score(), stopped.score()
    assert (a.reward, a.correct) == (b.reward, b.correct) == (0.25, False)
    assert [c["passed"] for c in b.checks] == [c["passed"] for c in a.checks]
    assert b.checks[1]["detail"] == a.checks[1]["detail"]
    # a task played right to its end scores as before
    good = replay("multi_turn_base_1", stop_at_failed_turn=True)
    assert good.failed_turn is None and good.score().correct


def test_tool_results_come_from_bfcl_state_and_the_episode_walks_the_turns() -> None:
    env = BfclEnvironment()
    first = env.reset({"id": "multi_turn_base_1"})
    assert first.startswith("I am alex.")
    (result,) = env.step_calls([openai_call("ls(a=True)", env.docs)])
    assert json.loads(result.content) == {"current_directory_content": ["workspace"]}
    env.step_calls([openai_call("cd(folder='workspace')", env.docs)])
    (result,) = env.step_calls([openai_call("ls(a=True)", env.docs)])
    assert ".hidden_file" in result.content and not result.error
    (bad,) = env.step_calls([{"function": {"name": "rm_rf", "arguments": "{}"}}])
    assert bad.error and "no tool named 'rm_rf'" in bad.content
    second = env.end_turn("listed")
    assert second is not None and "archive" in second and not env.done
    state = env.final_state()
    assert "GorillaFileSystem" in state
    # stopping after one of four turns fails every turn, as BFCL fails a force-terminated task
    score = env.score()
    assert not score.correct and score.reward == 0.0


def test_tool_schemas_are_bfcl_docs_in_openai_form() -> None:
    env = BfclEnvironment()
    env.reset({"id": "multi_turn_base_0"})
    names = {t["function"]["name"] for t in env.tool_schemas()}
    assert {"mv", "grep", "post_tweet"} <= names
    tool = openai_tool(
        {
            "name": "a.b",
            "description": "d",
            "parameters": {
                "type": "dict",
                "properties": {"x": {"type": "float", "description": "x."}},
                "required": ["x"],
            },
        }
    )
    assert tool["function"]["name"] == "a_b"
    assert tool["function"]["parameters"]["type"] == "object"
    assert tool["function"]["parameters"]["properties"]["x"]["type"] == "number"


def test_miss_func_tasks_add_the_held_out_functions_at_their_turn() -> None:
    task = multi_turn_tasks("miss_func", limit=1)[0]
    missed = json.loads(task["missed_function"])
    ((turn, names),) = missed.items()
    env = BfclEnvironment()
    env.reset(task)
    assert not set(names) & {t["function"]["name"] for t in env.tool_schemas()}
    for _ in range(int(turn)):
        message = env.end_turn("")
    assert set(names) <= {t["function"]["name"] for t in env.tool_schemas()}
    assert message  # BFCL's "I have updated some more functions" when the turn has no text


def test_calls_are_executed_only_as_literal_keyword_calls() -> None:
    assert call_string("cd", {"folder": "a'); import os; ('"}) == (
        "cd(folder=\"a'); import os; ('\")"
    )
    with pytest.raises(ValueError, match="not identifiers"):
        call_string("cd", {"folder=__import__('os'),x": 1})
    with pytest.raises(ValueError, match="not a function name"):
        call_string("__import__('os').system", {})


def scripted_rollout(
    workspace: Path, change: tuple[int, int, str] | None = None, **options: Any
) -> dict[str, Any]:
    """One ToolRollouts episode of multi_turn_base_1 through the fake server, whose model
    makes each user turn's ground-truth calls at once (`change=(turn, call, replacement)`
    swaps one), then answers "Done."."""
    task = multi_turn_tasks("base", ids=["multi_turn_base_1"])[0]
    ground_truth = json.loads(task["ground_truth"])
    docs = [d for c in task["involved_classes"] for d in function_docs(c)]

    def expert(body: dict[str, Any]) -> dict[str, Any] | str:
        messages = body["messages"]
        turn = sum(m["role"] == "user" for m in messages) - 1
        if messages[-1]["role"] == "tool":
            return "Done."
        calls = list(ground_truth[turn])
        if change is not None and change[0] == turn:
            calls[change[1]] = change[2]
        return {
            "content": None,
            "tool_calls": [openai_call(c, docs, i) for i, c in enumerate(calls)],
        }

    return rollout_with(workspace, expert, **{"max_turns": 10, **options})


def rollout_with(
    workspace: Path, responder: Any, bodies: list[dict[str, Any]] | None = None, **options: Any
) -> dict[str, Any]:
    """One ToolRollouts episode of multi_turn_base_1 answered by `responder` (the fake
    server's), as its output row; the request bodies the server got go to `bodies`."""
    with FakeOpenAI(responder=responder) as server:
        stage = ToolRollouts(
            model="openai/fake",
            api_base=server.base_url,
            api_key="sk-fake",
            environment="bfcl",
            max_attempts=1,
            **options,
        )
        result = Pipeline([stage]).run(
            [{"id": "multi_turn_base_1"}], workspace=workspace, progress="quiet"
        )
        if bodies is not None:
            bodies.extend(server.bodies)
    (row,) = result.to_arrow().to_pylist()
    return row


def test_rollouts_of_the_ground_truth_through_the_fake_server_score_as_correct(
    workspace: Path,
) -> None:
    row = scripted_rollout(workspace)
    assert (row["correct"], row["reward"], row["finish"], row["turns"]) == (True, 1.0, "answer", 8)
    ground_truth = json.loads(
        multi_turn_tasks("base", ids=["multi_turn_base_1"])[0]["ground_truth"]
    )
    roles = [m["role"] for m in row["messages"]]
    assert roles.count("user") == 4 and roles.count("tool") == sum(map(len, ground_truth))
    episode = json.loads(row["episode"])
    assert [c["passed"] for c in episode["checks"]] == [True, True, True, True]
    assert "GorillaFileSystem" in episode["final_state"]


def test_a_rollout_stopped_at_its_failed_turn_says_so(workspace: Path) -> None:
    change = (1, 1, "mv(source='log.txt',destination='backup')")
    row = scripted_rollout(
        workspace, change=change, environment_kwargs={"stop_at_failed_turn": True}
    )
    # two turns played (4 model calls), not four; the whole episode's score
    assert (row["correct"], row["reward"], row["finish"], row["turns"]) == (
        False,
        0.25,
        "failed_turn",
        4,
    )
    assert [m["role"] for m in row["messages"]].count("user") == 2
    checks = json.loads(row["episode"])["checks"]
    assert [c["passed"] for c in checks] == [True, False, False, False]


def test_first_turns_plays_and_scores_only_a_prefix_of_the_task() -> None:
    env = BfclEnvironment(first_turns=1)
    env.reset({"id": "multi_turn_base_1"})
    assert len(env.task["questions"]) == len(env.task["ground_truth"]) == 1
    (gt,) = env.task["ground_truth"]
    env.step_calls([openai_call(c, env.docs, i) for i, c in enumerate(gt)])
    assert env.end_turn("done") is None and env.done  # one turn: the episode is over
    score = env.score()
    assert (score.correct, score.reward, len(score.checks)) == (True, 1.0, 1)

    env.reset({"id": "multi_turn_base_1"})  # no call in the only turn: BFCL fails it
    env.end_turn("I cannot do that.")
    assert not env.score().correct
    with pytest.raises(ValueError, match="first_turns"):
        BfclEnvironment(first_turns=0)


def test_turn_retries_replay_a_failed_turn_until_it_passes(workspace: Path) -> None:
    """The fake model gets turn 1 wrong twice, then right: with turn_retries=2 the episode
    is correct, its messages hold only the passing attempt, and the dropped attempts keep
    the failed ones with BFCL's reason; with turn_retries=1 it still fails at turn 1."""
    task = multi_turn_tasks("base", ids=["multi_turn_base_1"])[0]
    ground_truth = json.loads(task["ground_truth"])
    docs = [d for c in task["involved_classes"] for d in function_docs(c)]
    wrong = "mv(source='log.txt',destination='backup')"

    def run(retries: int, ws: Path) -> dict[str, Any]:
        tries: dict[int, int] = {}

        def expert(body: dict[str, Any]) -> dict[str, Any] | str:
            messages = body["messages"]
            turn = sum(m["role"] == "user" for m in messages) - 1
            if messages[-1]["role"] == "tool":
                return "Done."
            tries[turn] = tries.get(turn, 0) + 1
            calls = list(ground_truth[turn])
            if turn == 1 and tries[turn] <= 2:
                calls[1] = wrong
            return {
                "content": None,
                "tool_calls": [openai_call(c, docs, i) for i, c in enumerate(calls)],
            }

        return rollout_with(
            ws,
            expert,
            environment_kwargs={"stop_at_failed_turn": True},
            turn_retries=retries,
            max_turns=20,
        )

    row = run(2, workspace)
    assert (row["correct"], row["reward"], row["finish"]) == (True, 1.0, "answer")
    # 4 turns x 2 calls, plus the two dropped attempts' 2 calls each
    assert row["turns"] == 12
    calls = [
        json.loads(c["function"]["arguments"])
        for m in row["messages"]
        for c in m["tool_calls"] or []
        if c["function"]["name"] == "mv"
    ]
    assert {"source": "log.txt", "destination": "backup"} not in calls
    assert [m["role"] for m in row["messages"]].count("user") == 4
    episode = json.loads(row["episode"])
    assert [c["passed"] for c in episode["checks"]] == [True] * 4
    dropped = episode["dropped_attempts"]
    assert [d["finish"] for d in dropped] == ["failed_turn", "failed_turn"]
    assert all("instance_state_mismatch" in d["detail"] for d in dropped)
    assert all(d["messages"][0]["role"] == "assistant" for d in dropped)
    assert "backup" in json.dumps(dropped[0]["messages"])
    assert [c["attempt"] for c in episode["calls"]] == [0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2]
    # one retry is not enough: it ends at turn 1 as without retries
    row = run(1, workspace.parent / "ws-one-retry")
    assert (row["correct"], row["finish"]) == (False, "failed_turn")
    assert len(json.loads(row["episode"])["dropped_attempts"]) == 1


def test_retry_turn_rebuilds_the_state_before_the_turn() -> None:
    change = (1, 1, "mv(source='log.txt',destination='backup')")
    env = replay("multi_turn_base_1", change=change, stop_at_failed_turn=True)
    assert env.failed_turn == 1 and env.done
    before = replay("multi_turn_base_1", stop_at_failed_turn=True, first_turns=1).final_state()
    detail = env.retry_turn()
    assert "instance_state_mismatch" in detail
    assert (env.turn, env.failed_turn, env.done) == (1, None, False)
    assert len(env.decoded_turns()) == 2 and env.decoded_turns()[1] == []
    assert env.final_state() == before  # turn 1's calls are undone
    ground_truth = env.task["ground_truth"]
    for k in range(1, len(ground_truth)):
        env.step_calls([openai_call(c, env.docs, i) for i, c in enumerate(ground_truth[k])])
        env.end_turn("done")
    assert env.done and env.score().correct


def _play(task_id: str, turns: list[list[str]], **options: Any) -> BfclEnvironment:
    env = BfclEnvironment(first_turns=len(turns), **options)
    env.reset({"id": task_id})
    for calls in turns:
        env.step_calls([openai_call(c, env.docs, i) for i, c in enumerate(calls)])
        if env.end_turn("done") is None:
            break
    return env


def test_requiring_the_ground_truths_calls_closes_the_checkers_loopholes() -> None:
    # multi_turn_base_142 (seen from the embedded model): ZETA is already on the watchlist, so
    # adding a symbol the market lacks leaves the state as the ground truth's add leaves it
    # and returns the watchlist, which also stands for turn 2's get_watchlist() result
    loophole = [
        ["add_to_watchlist(stock='ZetaCorp')"],
        ["notify_price_change(stocks=['ZetaCorp'], threshold=2.0)"],
    ]
    assert _play("multi_turn_base_142", loophole).score().correct  # BFCL's checker passes it
    strict = _play("multi_turn_base_142", loophole, require_ground_truth_calls=True).score()
    # turn 1 called the ground truth's function (with a symbol BFCL's checker accepts);
    # turn 2 never called get_watchlist
    assert not strict.correct and strict.reward == 0.5
    assert strict.checks[0]["passed"] and not strict.checks[1]["passed"]
    assert strict.checks[1]["detail"] == (
        "assay:ground_truth_call_missing: turn 1 did not call get_watchlist"
    )
    named = _play(
        "multi_turn_base_142",
        [["add_to_watchlist(stock='ZetaCorp')"], ["get_watchlist()"]],
        require_ground_truth_calls=True,
    ).score()
    assert named.correct and named.reward == 1.0
    stopped = _play(
        "multi_turn_base_142", loophole, require_ground_truth_calls=True, stop_at_failed_turn=True
    )
    assert stopped.failed_turn == 1
    assert "get_watchlist" in stopped.score().checks[1]["detail"]
    assert replay("multi_turn_base_0", require_ground_truth_calls=True).score().correct


def test_requiring_the_ground_truths_arguments_rejects_a_call_that_reaches_its_state() -> None:
    # 142/r5 from the embedded model: the right functions, the company name for the ticker.
    # BFCL's checker and the names check pass it; the arguments check does not
    by_name = [["add_to_watchlist(stock='Zeta Corp')"], ["get_watchlist()"]]
    assert _play("multi_turn_base_142", by_name, require_ground_truth_calls=True).score().correct
    strict = _play("multi_turn_base_142", by_name, require_ground_truth_calls="arguments")
    score = strict.score()
    assert not score.correct and score.reward == 0.0
    assert score.checks[0]["detail"] == (
        "assay:ground_truth_call_missing: turn 0: "
        "add_to_watchlist: stock='Zeta Corp' is not one of ['ZETA']"
    )
    exact = [["add_to_watchlist(stock='zeta')"], ["get_watchlist()"]]  # BFCL's string rules
    assert (
        _play("multi_turn_base_142", exact, require_ground_truth_calls="arguments").score().correct
    )
    # an extra call beside the ground truth's is allowed
    extra = [["get_watchlist()", "add_to_watchlist(stock='ZETA')"], ["get_watchlist()"]]
    assert (
        _play("multi_turn_base_142", extra, require_ground_truth_calls="arguments").score().correct
    )
    assert replay("multi_turn_base_0", require_ground_truth_calls="arguments").score().correct
    # multi_turn_base_33's first turn is `ls()`: `a` left out or at its documented default
    # (False) matches, `a=True` (which lists the same visible files here) does not
    for call, exact in [("ls()", True), ("ls(a=False)", True), ("ls(a=True)", False)]:
        env = _play("multi_turn_base_33", [[call]], require_ground_truth_calls="arguments")
        assert env.score().correct is exact, call
    assert _play("multi_turn_base_33", [["ls(a=True)"]]).score().correct  # BFCL's checker
    with pytest.raises(ValueError, match="require_ground_truth_calls"):
        BfclEnvironment(require_ground_truth_calls="exact")  # type: ignore[arg-type]


def test_rejecting_failed_calls_fails_a_turn_with_a_failed_call_until_it_is_retried() -> None:
    # beside the ground truth's call, a lookup of a symbol the market lacks (an API error)
    # or of a tool that does not exist: BFCL's checker and the arguments check pass both
    noisy = [["get_stock_info(symbol='ZetaCorp')", "add_to_watchlist(stock='ZETA')"]]
    noisy.append(["get_watchlist()"])
    options: dict[str, Any] = {"require_ground_truth_calls": "arguments"}
    assert _play("multi_turn_base_142", noisy, **options).score().correct
    env = _play("multi_turn_base_142", noisy, reject_failed_calls=True, **options)
    score = env.score()
    assert not score.correct and [c["passed"] for c in score.checks] == [False, False]
    assert score.checks[0]["detail"] == (
        "assay:failed_call: turn 0: 1 failed call(s): get_stock_info: "
        '{"error": "Stock with symbol \'ZetaCorp\' not found."}'
    )
    env = BfclEnvironment(first_turns=2, stop_at_failed_turn=True, reject_failed_calls=True)
    env.reset({"id": "multi_turn_base_142"})
    unknown = {"id": "c0", "type": "function", "function": {"name": "buy_all", "arguments": "{}"}}
    env.step_calls([unknown, openai_call("add_to_watchlist(stock='ZETA')", env.docs, 1)])
    assert env.end_turn("Added.") is None and env.failed_turn == 0
    assert env.retry_turn() == (
        "assay:failed_call: turn 0: 1 failed call(s): buy_all: Error: no tool named 'buy_all'"
    )
    # the retried turn's own calls are all that count: the dropped attempt's failure is gone
    for calls in (["add_to_watchlist(stock='ZETA')"], ["get_watchlist()"]):
        env.step_calls([openai_call(c, env.docs, i) for i, c in enumerate(calls)])
        env.end_turn("Done.")
    assert env.done and env.score().correct
    assert replay("multi_turn_base_0", reject_failed_calls=True).score().correct


def _stubborn_rollout(ws: Path, **options: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """multi_turn_base_1 (first turn's ground truth `ls(a=True)`) played by a fake model
    that calls its favourite allowed tool first in turn 0 (pwd, then du, then ls(a=True))
    and the ground truth's calls after it; returns the row and the request bodies."""
    task = multi_turn_tasks("base", ids=["multi_turn_base_1"])[0]
    ground_truth = json.loads(task["ground_truth"])
    docs = [d for c in task["involved_classes"] for d in function_docs(c)]
    favourites = {"pwd": "pwd()", "du": "du()", "ls": "ls(a=True)"}

    def stubborn(body: dict[str, Any]) -> dict[str, Any] | str:
        messages = body["messages"]
        turn = sum(m["role"] == "user" for m in messages) - 1
        if messages[-1]["role"] == "tool":
            return "Done."
        calls = list(ground_truth[turn])
        if turn == 0:
            choice = body.get("tool_choice")
            allowed = {t["function"]["name"] for t in body["tools"]}
            if isinstance(choice, dict) and choice["type"] == "allowed_tools":
                allowed = {t["function"]["name"] for t in choice["allowed_tools"]["tools"]}
            calls = [next(c for name, c in favourites.items() if name in allowed)]
        return {
            "content": None,
            "tool_calls": [openai_call(c, docs, i) for i, c in enumerate(calls)],
        }

    bodies: list[dict[str, Any]] = []
    row = rollout_with(
        ws,
        stubborn,
        bodies,
        environment_kwargs={"stop_at_failed_turn": True},
        turn_retries=2,
        force_tools=1,
        max_turns=20,
        **options,
    )
    return row, bodies


def _allowed(bodies: list[dict[str, Any]]) -> list[set[str]]:
    choices = [b.get("tool_choice") for b in bodies]
    return [
        {t["function"]["name"] for t in c["allowed_tools"]["tools"]}
        for c in choices
        if isinstance(c, dict)
    ]


def test_retry_other_tools_searches_the_first_call_without_replacement(workspace: Path) -> None:
    """The stubborn model passes the first turn on its third try only when each retry's
    forced call excludes the tools the dropped attempts called."""
    task = multi_turn_tasks("base", ids=["multi_turn_base_1"])[0]
    ground_truth = json.loads(task["ground_truth"])
    everything = {d["name"] for c in task["involved_classes"] for d in function_docs(c)}
    row, bodies = _stubborn_rollout(workspace, retry_other_tools=True)
    assert (row["correct"], row["finish"]) == (True, "answer")
    episode = json.loads(row["episode"])
    assert [
        d["messages"][0]["tool_calls"][0]["function"]["name"] for d in episode["dropped_attempts"]
    ] == ["pwd", "du"]
    firsts = [c.get("excluded") for c in episode["calls"] if c["attempt"] > 0][:1]
    assert firsts == [["pwd"]]
    assert _allowed(bodies) == [everything - {"pwd"}, everything - {"pwd", "du"}]
    assert all(len(b["tools"]) == len(everything) for b in bodies if b.get("tools"))
    assert episode["hinted_turns"] == []
    # later turns, and the first turn's first try, are forced as before ("required")
    choices = [b.get("tool_choice") for b in bodies]
    assert choices.count("required") == 1 + len(ground_truth) - 1
    # without the option, the same model redraws pwd on every retry and fails the turn
    row, _ = _stubborn_rollout(workspace.parent / "ws-plain")
    assert (row["correct"], row["finish"]) == (False, "failed_turn")
    dropped = json.loads(row["episode"])["dropped_attempts"]
    assert {d["messages"][0]["tool_calls"][0]["function"]["name"] for d in dropped} == {"pwd"}


def test_retry_reference_tools_offers_a_retry_only_the_ground_truths_tools(
    workspace: Path,
) -> None:
    """With retry_reference_tools, the first turn's retry may call only `ls` (its ground
    truth calls `ls(a=True)`): the stubborn model passes on its second try, the first try is
    unhinted, and the episode says which turn's kept attempt was hinted."""
    env = BfclEnvironment()
    env.reset({"id": "multi_turn_base_1"})
    assert env.reference_tools() == ["ls"]
    row, bodies = _stubborn_rollout(workspace, retry_reference_tools=True, retry_other_tools=True)
    assert (row["correct"], row["finish"]) == (True, "answer")
    episode = json.loads(row["episode"])
    assert len(episode["dropped_attempts"]) == 1
    assert _allowed(bodies) == [{"ls"}]
    hinted = [c for c in episode["calls"] if "hinted" in c]
    assert [(c["attempt"], c["hinted"]) for c in hinted] == [(1, ["ls"])]
    assert episode["hinted_turns"] == [0]
    assert bodies[0]["tool_choice"] == "required"  # the first try: any tool
    # the export's card counts the verified episodes kept from a hinted turn
    from assay.curate.store import RunStore
    from assay.datasets.export_run import export_run

    with RunStore(workspace, read_only=True) as store:
        (run,) = store.runs()
    card = export_run(run["run_id"], workspace / "sft", "messages", workspace=workspace).card
    assert "of the verified samples, 1 kept a turn played with a hint" in card.read_text()


def test_a_cut_call_counts_as_the_attempts_first_tool() -> None:
    from assay.operators.tools.episode import first_call_name

    def said(text: str) -> list[dict[str, Any]]:
        return [{"role": "assistant", "content": text, "tool_calls": None}]

    called = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "cd"}}]}
    assert first_call_name([called]) == "cd"
    # calls cut at max_tokens are text; the name was written, so the retry avoids it too
    assert first_call_name(said('[{"name": "delete_message", "arguments": {"rec')) == (
        "delete_message"
    )
    assert first_call_name(said('<tool_call>[{"name": "ls", "a')) == "ls"
    assert first_call_name(said('I would call [{"name": "ls"}]')) is None  # prose
    assert first_call_name(said('[{"name": "del')) is None  # the name itself was cut
    assert first_call_name([*said("thinking"), called]) == "cd"


def test_a_misspelt_environment_option_fails_when_the_stage_is_built() -> None:
    with pytest.raises(ValueError, match=r"environment 'bfcl' has no option 'reject_failed_call' "):
        ToolRollouts(
            model="local/smollm2-135m",
            environment="bfcl",
            environment_kwargs={"first_turns": 2, "reject_failed_call": True},
        )
    stage = ToolRollouts(
        model="local/smollm2-135m", environment="bfcl", environment_kwargs={"first_turns": 2}
    )
    assert stage.new_environment().first_turns == 2
