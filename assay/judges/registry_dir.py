"""Where trained (distilled) judges live, by name.

`judges_dir()` is `$ASSAY_JUDGES_DIR`, else `~/.cache/assay/judges`; a judge named `x` is the
folder `judges_dir()/x` holding the model, its tokenizer and `judge.json`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from assay.curate.errors import AssayError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def judges_dir() -> Path:
    default = Path.home() / ".cache" / "assay" / "judges"
    return Path(os.environ.get("ASSAY_JUDGES_DIR", default))


def judge_path(name: str) -> Path:
    if not _NAME.match(name):
        raise AssayError(f"judge name {name!r}: use letters, digits, '.', '_' or '-'")
    return judges_dir() / name


def find_judge(name_or_path: str) -> Path:
    """The folder of a trained judge given its name or a path; the error lists known names."""
    path = Path(name_or_path)
    if not (path.is_dir() and (path / "judge.json").exists()):
        path = judge_path(name_or_path)
    if not (path / "judge.json").exists():
        known = ", ".join(trained_judges()) or "none"
        raise AssayError(
            f"no trained judge {name_or_path!r} in {judges_dir()} (known: {known}); "
            "make one with `assay judge train`"
        )
    return path


def trained_judges() -> dict[str, dict[str, Any]]:
    """Every trained judge's `judge.json`, by name."""
    root = judges_dir()
    if not root.is_dir():
        return {}
    out = {}
    for meta in sorted(root.glob("*/judge.json")):
        out[meta.parent.name] = json.loads(meta.read_text())
    return out
