"""The GPU validation plan (benchmarks/gpu_session.sh) in its dry run on this machine: every step
that does not need a GPU runs, the GPU-only ones are skipped, and what comes back is at most a
few files, rewritten after each step, so that a run cut short still returns what it did."""

import os
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ["versions", "build", "gpu-tests", "memcheck", "racecheck", "bench-ops", "bench-modules", "bench-ha"]


def _plan(out, **env):
    return subprocess.run(["bash", "benchmarks/gpu_session.sh", "--dry-run", str(out)], cwd=ROOT, text=True,
                          capture_output=True, timeout=900, env={**os.environ, "PYTHON": sys.executable, **env})


def _summary(out) -> dict[str, str]:
    lines = (out / "summary.txt").read_text().splitlines()
    return {line.split(None, 1)[0]: line.split(None, 1)[1] for line in lines}


@pytest.mark.slow
def test_dry_run_of_the_whole_plan(tmp_path):
    result = _plan(tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == ["gpu_session.log", "results.tar.gz", "summary.txt"]
    summary = _summary(tmp_path)
    assert list(summary) == STEPS
    for step, status in summary.items():
        expected = "skipped (GPU only)" if step in ("memcheck", "racecheck") else "ok, "
        assert status.startswith(expected), f"{step}: {status}"
    with tarfile.open(tmp_path / "results.tar.gz") as tar:
        names = {os.path.normpath(n) for n in tar.getnames()}
    assert {f"{s}.log" for s in STEPS if s not in ("memcheck", "racecheck")} | {"gpu-tests.xml", "summary.txt"} <= names
    log = (tmp_path / "gpu_session.log").read_text()
    assert "benchmarks.gpu_machine" in log and "pytest -m gpu" in log


def test_a_plan_cut_short_returns_what_it_did(tmp_path):
    """With a 12-second deadline the test step is killed at it and the rest is skipped; what came
    before is packed, and the plan says it did not succeed."""
    result = _plan(tmp_path, GPU_SESSION_DEADLINE_S="12")
    assert result.returncode != 0
    summary = _summary(tmp_path)
    assert summary["versions"].startswith("ok, ")
    assert summary["gpu-tests"].startswith("timed out") or summary["gpu-tests"].startswith("skipped (deadline)")
    assert summary["bench-ha"] == "skipped (deadline)"
    with tarfile.open(tmp_path / "results.tar.gz") as tar:
        assert "versions.log" in {os.path.normpath(n) for n in tar.getnames()}
