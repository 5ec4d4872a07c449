"""The suite runner: stages run as subprocesses; a failing, hanging or missing stage is reported
and the suite goes on; suite.json and the report are written."""

from __future__ import annotations

import json
import textwrap

import pytest

from benchmarks import suite

OK = """
import argparse, json, pathlib
ap = argparse.ArgumentParser(); ap.add_argument("--quick", action="store_true")
ap.add_argument("--out", type=pathlib.Path); a = ap.parse_args()
a.out.mkdir(parents=True, exist_ok=True)
(a.out / "fake_2026.json").write_text(json.dumps(
    {"machine": {}, "versions": {}, "quick": a.quick, "ratios": {"fake_vs_peer": 3.5}}))
(a.out / "fake_2026.md").write_text("# Fake\\n\\n| a | b |\\n|---|---|\\n| 1 | 2 |\\n")
"""
FAIL = """
import sys
print("Traceback: something broke in the fake stage", file=sys.stderr)
sys.exit(3)
"""
HANG = """
import time
time.sleep(60)
"""
NO_JSON = """
print("I forgot to write my results")
"""


@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    pkg = tmp_path / "fakebench"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name, src in {"ok": OK, "fail": FAIL, "hang": HANG, "nojson": NO_JSON}.items():
        (pkg / f"{name}.py").write_text(textwrap.dedent(src))
    monkeypatch.setattr(suite, "REPO", tmp_path)
    # the machine description imports torch; not what this test is about
    monkeypatch.setattr(
        suite, "machine", lambda: {"cpu": "test", "cores": 1, "date": "d", "packages": {"x": "1"}}
    )
    return tmp_path


def _stage(name: str, module: str, timeout: int = 60) -> suite.Stage:
    return suite.Stage(name, f"fakebench.{module}", timeout_quick=timeout, peers="peer")


def test_failing_hanging_missing_stages_do_not_stop_the_suite(fake_repo, tmp_path):
    stages = [
        _stage("first", "ok"),
        _stage("broken", "fail"),
        _stage("stuck", "hang", 3),
        _stage("absent", "nosuchmodule"),
        _stage("silent", "nojson"),
        _stage("last", "ok"),
    ]
    out = tmp_path / "out"
    payload = suite.run_suite("quick", out, stages=stages, budget=600, stretch_for_load=False)
    st = payload["stages"]
    assert {k: v["status"] for k, v in st.items()} == {
        "first": "ok",
        "broken": "failed",
        "stuck": "timeout",
        "absent": "missing",
        "silent": "failed",
        "last": "ok",
    }
    assert st["first"]["result"]["quick"] is True  # the quick suite passed --quick
    assert st["first"]["result"]["ratios"] == {"fake_vs_peer": 3.5}
    assert "something broke" in st["broken"]["stderr_tail"]
    assert st["broken"]["returncode"] == 3
    assert st["stuck"]["wall_s"] < 30
    assert "no .json" in st["silent"]["error"]
    saved = json.loads((out / "suite.json").read_text())
    assert saved["stages"]["broken"]["status"] == "failed"
    report = (out / "report.md").read_text()
    assert "something broke" in report
    assert "fake vs peer" in report and "3.50x" in report
    assert (out / "ratios.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_budget_skips_stages_that_cannot_finish(fake_repo, tmp_path):
    stages = [_stage("first", "ok", timeout=30), _stage("second", "ok", timeout=3000)]
    payload = suite.run_suite(
        "quick", tmp_path / "out", stages=stages, budget=60, stretch_for_load=False
    )
    assert payload["stages"]["first"]["status"] == "ok"
    assert payload["stages"]["second"]["status"] == "skipped"
    assert "budget" in payload["stages"]["second"]["error"]


def test_cli_rejects_unknown_stage_and_bad_stage_args(capsys):
    assert suite.main(["--stages", "tokenize,nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert suite.main(["--stage-args", "nostage=--x"]) == 2
    assert "STAGE=ARGS" in capsys.readouterr().err


def test_select_keeps_suite_order():
    names = [s.name for s in suite.select("eval,tokenize,shard", "shard")]
    assert names == ["tokenize", "eval"]


def test_load_stretch():
    assert suite.load_stretch(None, 2) == 1.0
    assert suite.load_stretch(1.0, 2) == 1.0
    assert suite.load_stretch(5.0, 2) == 2.5
    assert suite.load_stretch(50.0, 2) == suite.MAX_LOAD_STRETCH
