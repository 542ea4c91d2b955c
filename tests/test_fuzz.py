"""Property-based fuzz of what users and models hand to spo (scripts/fuzz_inputs.py holds
the strategies and checks; run it for more examples): config overrides and data rows are
accepted or rejected with exit code 2 and a message naming the key or file:line; graders
give 0 or 1, in bounded time, whatever the answer."""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")  # installed here; not (yet) in pyproject's `test` extra
from hypothesis import HealthCheck, given, settings  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import fuzz_inputs as fuzz  # noqa: E402  (scripts/fuzz_inputs.py)

FUZZ = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module", autouse=True)
def stand_in_training():
    with fuzz.stand_in_training(), contextlib.redirect_stdout(io.StringIO()):
        yield


@settings(FUZZ, max_examples=100)
@given(fuzz.overrides)
def test_config_overrides_run_or_are_rejected_naming_the_key(args):
    assert fuzz.check_overrides(args) in ("accepted", "rejected")


@settings(FUZZ, max_examples=60)
@given(fuzz.data_files)
def test_data_rows_load_or_are_rejected_naming_file_and_line(content):
    with tempfile.TemporaryDirectory() as folder:
        assert set(fuzz.check_data(content, Path(folder))) <= {"accepted", "rejected"}


@settings(FUZZ, max_examples=30)
@given(fuzz.answers)
def test_graders_score_any_answer_zero_or_one_in_bounded_time(answer):
    assert fuzz.check_answer(answer) == "accepted"
