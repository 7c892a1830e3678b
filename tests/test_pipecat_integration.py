"""The pipecat integration's own tests (``integrations/pipecat/tests``: real pipecat pipelines drive a twin in both
modes), run in the integration's environment against this suite's ``twincast serve``.

They run in ``.venv-pipecat`` (``make pipecat-venv``, which ``make test`` builds) because pipecat-ai and twincast
cannot share one environment: pipecat-ai needs protobuf >= 5, mediapipe 0.10.14 (enrollment's face models) < 5.
"""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from tests.helpers import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
INTEGRATION = ROOT / "integrations" / "pipecat"
PIPECAT_PYTHON = ROOT / ".venv-pipecat" / "bin" / "python"
EXPECTED_TESTS = 4


def test_pipecat_pipelines_drive_a_twin_in_both_modes(server: ServerProcess, tmp_path: Path) -> None:
    if not PIPECAT_PYTHON.exists():
        pytest.fail(f"{PIPECAT_PYTHON} is missing: `make pipecat-venv` builds the pipecat integration's environment "
                    "(`make test` does it first)")
    report = tmp_path / "pipecat-junit.xml"
    result = subprocess.run(
        [str(PIPECAT_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "junit_family=xunit1",
         f"--junitxml={report}", "tests"],
        cwd=INTEGRATION, capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "TWINCAST_URL": server.url, "TWINCAST_OPERATOR_TOKEN": server.token})
    assert result.returncode == 0, f"{result.stdout[-8000:]}\n--- stderr ---\n{result.stderr[-2000:]}"
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts = {name: int(suite.get(name, "0")) for name in ("tests", "failures", "errors", "skipped")}
    assert counts == {"tests": EXPECTED_TESTS, "failures": 0, "errors": 0, "skipped": 0}, counts
    for case in suite.iter("testcase"):  # what they measured, into this suite's log
        for measured in case.iter("property"):
            print(f"{case.get('name')}: {measured.get('name')} = {measured.get('value')}")
