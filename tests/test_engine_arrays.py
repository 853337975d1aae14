"""Arrow arrays built from buffers (assay/curate/arrays.py): the same values as
`pyarrow.array` gives, and a CPU pipeline that never imports pandas."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assay.curate.arrays import bools, from_numpy, from_values, repeat, scalar


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint64, np.float64, np.bool_])
def test_from_numpy_equals_pyarrow(dtype: type) -> None:
    values = (np.arange(37) % 5).astype(dtype)
    mask = np.arange(37) % 3 == 0
    assert from_numpy(values).equals(pa.array(values))
    got = from_numpy(values, mask=mask)
    got.validate(full=True)
    assert got.equals(pa.array(values, mask=mask))


def test_repeat_scalar_and_values_equal_pyarrow() -> None:
    assert repeat("shorter than 20 chars", 3).equals(pa.array(["shorter than 20 chars"] * 3))
    assert repeat("", 2).equals(pa.array(["", ""]))
    assert repeat("x", 0).equals(pa.array([], pa.string()))
    assert repeat(7, 4, pa.int32()).equals(pa.array([7] * 4, pa.int32()))
    assert repeat(None, 2, pa.int64()).equals(pa.array([None, None], pa.int64()))
    assert scalar(20, pa.int32()).equals(pa.scalar(20, pa.int32()))
    assert scalar(False, pa.bool_()).equals(pa.scalar(False))
    for values, type_ in [
        ([1, None, 3], pa.int64()),
        ([0.5, None], pa.float64()),
        (["a", None, "", "héllo"], pa.string()),
        ([datetime(2026, 1, 2, 3, 4, 5, 6), None], pa.timestamp("us")),
        ([], pa.string()),
    ]:
        got = from_values(values, type_)
        got.validate(full=True)
        assert got.equals(pa.array(values, type_)), (values, type_)


def test_bools_reads_offsets_and_nulls_as_false() -> None:
    values = pa.array([True, False, None, True, True, None, False, True, True, False, True])
    expected = [bool(v) for v in values.to_pylist()]
    assert bools(values).tolist() == expected
    assert bools(values.slice(3)).tolist() == expected[3:]
    chunked = pa.chunked_array([values.slice(1, 4), values.slice(7)])
    assert bools(chunked).tolist() == expected[1:5] + expected[7:]


def test_a_cpu_pipeline_does_not_import_pandas(tmp_path: Path) -> None:
    # pyarrow imports pandas on its first pa.array / pa.scalar call (0.2-1.3 s of CPU);
    # the engine's own columns and these stages build theirs from buffers
    source = tmp_path / "in.parquet"
    texts = [f"a long enough sentence number {i % 40}" for i in range(500)] + ["short"] * 20
    pq.write_table(pa.table({"text": texts}), source)
    script = textwrap.dedent(
        f"""
        import sys
        from assay.curate.executors.local import LocalExecutor
        from assay.curate.pipeline import Pipeline
        from assay.operators.dedupe.exact import ExactDedupe
        from assay.operators.text import MinLength, Normalize

        assert "pandas" not in sys.modules
        result = Pipeline(
            [Normalize(lowercase=True), MinLength(chars=20), ExactDedupe()], batch_size=100
        ).run({str(source)!r}, workspace={str(tmp_path / "ws")!r}, progress="quiet",
              executor=LocalExecutor(batch_size=100, cpu_workers=2))
        print("pandas" in sys.modules)  # reading the result back may import it
        assert result.to_arrow().num_rows == 40, result.to_arrow().num_rows
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
