"""BFCL v4 multi-turn tasks and BFCL's own executable environments, read from its wheel.

Source: the Berkeley Function-Calling Leaderboard, PyPI `bfcl-eval==2026.3.23` (Apache-2.0),
fetched once into `~/.cache/assay/wheels` by assay/datasets/wheels.py and never installed:
its declared dependencies pin an old numpy and pull model SDKs that assay does not need. What
the multi-turn environments need is pure Python plus `mpmath` (already a dependency of
torch's sympy): the package subtree `bfcl_eval/constants/` and
`bfcl_eval/eval_checker/multi_turn_eval/` (the stateful API classes, BFCL's executor and its
multi-turn checker). `bfcl_package()` extracts exactly that subtree into
`~/.cache/assay/bfcl_eval-<version>/` (atomically) and puts it first on `sys.path`, so
`import bfcl_eval...` gets the pinned code and nothing else of the package.

Tasks: `multi_turn_tasks("base")` gives the 200 tasks of `BFCL_v4_multi_turn_base.json`
joined with their ground-truth call sequences (`possible_answer/`), one dict per task with
JSON strings for the nested fields (Arrow-safe). Test data: evaluate on it, never train on it.
"""

from __future__ import annotations

import ast
import copy
import functools
import json
import os
import re
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from assay.curate.errors import AssayError
from assay.datasets.wheels import fetch_wheel, read_member

NAME = "bfcl-eval"
VERSION = "2026.3.23"
LICENSE = "Apache-2.0"
CATEGORIES = ("base", "miss_func", "miss_param", "long_context")
_SUBTREE = ("bfcl_eval/__init__.py", "bfcl_eval/constants/", "bfcl_eval/eval_checker/")
# constants modules that import the whole model zoo; never imported, so never extracted
_SKIP = ("bfcl_eval/constants/model_config.py", "bfcl_eval/constants/supported_models.py")


def _cache_root() -> Path:
    default = Path.home() / ".cache" / "assay"
    return Path(os.environ.get("ASSAY_BFCL_CACHE", default)) / f"bfcl_eval-{VERSION}"


@functools.lru_cache(maxsize=1)
def bfcl_package() -> Path:
    """Extract BFCL's executor and checker subtree once; make `bfcl_eval` importable from it."""
    root = _cache_root()
    if not (root / "bfcl_eval" / "eval_checker" / "multi_turn_eval").is_dir():
        root.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(fetch_wheel(NAME, VERSION)) as wheel:
            names = [
                n
                for n in wheel.namelist()
                if n.endswith(".py") and n.startswith(_SUBTREE) and n not in _SKIP
            ]
            with tempfile.TemporaryDirectory(dir=root.parent, prefix=".bfcl-") as tmp:
                for name in names:
                    wheel.extract(name, tmp)
                try:
                    os.replace(tmp, root)
                except OSError:  # another process extracted it first
                    if not root.is_dir():
                        raise
                os.makedirs(tmp, exist_ok=True)  # TemporaryDirectory cleans up a folder
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    loaded = sys.modules.get("bfcl_eval")
    if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(str(root)):
        raise AssayError(
            f"another bfcl_eval is already imported ({loaded.__file__}); assay needs "
            f"bfcl-eval=={VERSION}'s checker from {root}"
        )
    return root


def _json_lines(member: str) -> list[dict[str, Any]]:
    text = read_member(NAME, VERSION, member).decode("utf-8")
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise AssayError(f"{member}: line {number} is not JSON: {exc}") from None
    return rows


@functools.lru_cache(maxsize=8)
def _tasks(category: str) -> tuple[dict[str, Any], ...]:
    if category not in CATEGORIES:
        raise AssayError(f"unknown BFCL multi-turn category {category!r} (have {CATEGORIES})")
    questions = _json_lines(f"bfcl_eval/data/BFCL_v4_multi_turn_{category}.json")
    answers = {
        a["id"]: a["ground_truth"]
        for a in _json_lines(f"bfcl_eval/data/possible_answer/BFCL_v4_multi_turn_{category}.json")
    }
    rows = []
    for q in questions:
        if q["id"] not in answers:
            raise AssayError(f"BFCL task {q['id']!r} has no ground truth in possible_answer/")
        rows.append(
            {
                "id": q["id"],
                "category": category,
                "question": json.dumps(q["question"]),
                "initial_config": json.dumps(q.get("initial_config", {})),
                "involved_classes": list(q["involved_classes"]),
                "ground_truth": json.dumps(answers[q["id"]]),
                "missed_function": json.dumps(q.get("missed_function") or {}),
            }
        )
    return tuple(rows)


def multi_turn_tasks(
    category: str = "base", limit: int | None = None, ids: list[str] | None = None
) -> list[dict[str, Any]]:
    """BFCL multi-turn tasks with their ground truth (nested fields as JSON strings)."""
    rows = [dict(r) for r in _tasks(category)]
    if ids is not None:
        wanted = set(ids)
        rows = [r for r in rows if r["id"] in wanted]
        missing = wanted - {r["id"] for r in rows}
        if missing:
            raise AssayError(f"no BFCL {category} tasks with ids {sorted(missing)}")
    return rows[:limit] if limit is not None else rows


def task_by_id(task_id: str) -> dict[str, Any]:
    """One task by its BFCL id (`multi_turn_base_12`); the category comes from the id."""
    match = re.fullmatch(r"multi_turn_(.+)_\d+", task_id)
    category = match.group(1) if match else ""
    for row in _tasks(category) if category in CATEGORIES else ():
        if row["id"] == task_id:
            return dict(row)
    raise AssayError(f"no BFCL multi-turn task with id {task_id!r}")


@functools.lru_cache(maxsize=32)
def function_docs(class_name: str) -> tuple[dict[str, Any], ...]:
    """BFCL's function docs (`multi_turn_func_doc/`) of one API class."""
    bfcl_package()
    from bfcl_eval.constants.executable_backend_config import MULTI_TURN_FUNC_DOC_FILE_MAPPING

    if class_name not in MULTI_TURN_FUNC_DOC_FILE_MAPPING:
        raise AssayError(f"BFCL has no function docs for class {class_name!r}")
    member = f"bfcl_eval/data/multi_turn_func_doc/{MULTI_TURN_FUNC_DOC_FILE_MAPPING[class_name]}"
    return tuple(_json_lines(member))


@functools.lru_cache(maxsize=1)
def _cast_to_openai_type() -> Any:
    """BFCL's own `_cast_to_openai_type` (model_handler/utils.py), taken from the wheel's
    source without importing that module (it imports tree-sitter and every model SDK)."""
    bfcl_package()
    from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI

    source = read_member(NAME, VERSION, "bfcl_eval/model_handler/utils.py").decode()
    tree = ast.parse(source)
    node = next(
        n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_cast_to_openai_type"
    )
    namespace: dict[str, Any] = {"GORILLA_TO_OPENAPI": GORILLA_TO_OPENAPI}
    exec(compile(ast.Module(body=[node], type_ignores=[]), "bfcl_utils", "exec"), namespace)
    return functools.partial(namespace["_cast_to_openai_type"], mapping=GORILLA_TO_OPENAPI)


def openai_tool(doc: dict[str, Any]) -> dict[str, Any]:
    """A BFCL function doc as an OpenAI tool, converted the way BFCL's OpenAI handler does
    (`convert_to_tool`: object parameters, BFCL types cast to JSON-schema types); BFCL's
    non-standard `response` entry is left out."""
    item = copy.deepcopy(doc)
    item.pop("response", None)
    item["name"] = item["name"].replace(".", "_")
    item["parameters"]["type"] = "object"
    item["parameters"]["properties"] = _cast_to_openai_type()(item["parameters"]["properties"])
    return {"type": "function", "function": item}
