"""``osdsr schedule resshift``: the printed eta values are the official release's."""

from __future__ import annotations

import json

import pytest

from osdsr.cli import main

# sqrt(eta_t) of the official x4 real-SR release (see tests/diffusion/test_resshift_schedule.py for the source)
OFFICIAL_SQRT_ETA_FIRST_LAST = (0.02, 0.9899999999999998)


def test_json_lists_the_official_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schedule", "resshift", "--json", "--steps", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["t"] == list(range(15))
    assert report["sqrt_eta"][0] == pytest.approx(OFFICIAL_SQRT_ETA_FIRST_LAST[0], abs=1e-12)
    assert report["sqrt_eta"][-1] == pytest.approx(OFFICIAL_SQRT_ETA_FIRST_LAST[1], abs=1e-12)
    assert report["eta"][7] == pytest.approx(0.4758577309189876**2, abs=1e-12)
    assert report["sampled_t"] == [0, 3, 6, 9, 12]


def test_table_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schedule", "resshift", "--T", "4", "--min-noise-level", "0.2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-4].split()[:3] == ["0", "0.01000000", "0.10000000"]  # v3 release: sqrt(eta_1) = 0.1
    assert len(lines) == 3 + 4


def test_bad_values_fail_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schedule", "resshift", "--etas-end", "1.5"]) == 2
    assert main(["schedule", "resshift", "--steps", "20"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("osdsr schedule: error:") for line in errors)
