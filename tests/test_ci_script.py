"""The CI entry point's preamble must never fail the run.

A stop was once refused because `make --version | head -n 1` under `set -o pipefail` died of SIGPIPE
(exit 141) one second into CI: head closed the pipe before make had written its second line. The
race is timing-dependent, so the preamble is run many times here.
"""
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CI = ROOT / ".ci" / "run"


def _preamble() -> str:
    text = CI.read_text()
    marker = 'echo "== make test"'
    assert marker in text, f"{CI}: expected the line {marker!r} that starts the test run"
    return text.split(marker)[0]


def test_ci_calls_the_readme_test_command():
    assert "make test" in CI.read_text()
    assert "make test" in (ROOT / "README.md").read_text()


def test_no_pipe_into_head_under_pipefail():
    for n, line in enumerate(CI.read_text().splitlines(), 1):
        code = line.split("#")[0]
        assert "| head" not in code and "|head" not in code, (
            f"{CI}:{n}: a pipe into head can end in SIGPIPE (141) under pipefail: {line.strip()}")


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_preamble_survives_repeated_runs():
    script = _preamble()
    for _ in range(10):
        res = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True)
        assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)
        assert "GNU Make" in res.stdout
