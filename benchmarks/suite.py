"""The benchmark suite: every stage against its peers, one entry point, one readable report.

``python -m benchmarks --suite quick|full [--out DIR]`` (also ``scforge bench ...``) runs each
stage script as a subprocess, so one stage's crash, hang or memory use cannot take the suite
down: ``python -m benchmarks.<script> [--quick] --out DIR/<stage>``. Each stage writes one JSON
(+ markdown) into its directory; the suite reads it, records the stage's wall time, peak RSS
and exit status (with the tail of its stderr when it fails or times out), then writes
``suite.json`` (every figure, machine, package versions, git revision, load average at start and
end), ``report.md`` (a table per stage, ratios to each peer) and PNG charts (see
:mod:`benchmarks.report`).

Stages (peers measured in the same run by each script):

========  ==================================  ==============================================
stage     script                              peers
========  ==================================  ==============================================
tokenize  bench_tokenize                      per-cell NumPy Geneformer; scGPT's ``binning``
shard     bench_shard                         I/O floor, per-cell NumPy; 10k/100k(/1M) corpora
loader    bench_loader                        AnnData backed + on-the-fly tokenization, scDataset
store     bench_store                         zarr-python vs tensorstore
train     bench_train                         Hugging Face ``BertForMaskedLM``, eager vs compiled
eval      bench_eval                          scib-metrics runtime, PCA baseline
========  ==================================  ==============================================

``quick`` is sized to finish in under 10 minutes on a 2-core machine (a time budget stops it
starting a stage it cannot finish, and says so); ``full`` adds the 1M-cell corpus and the
larger settings of every stage.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, PeakRSS, loadavg, machine

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Stage:
    """One stage: a script under benchmarks/ and its arguments per suite."""

    name: str
    module: str
    quick: tuple[str, ...] = ("--quick",)
    full: tuple[str, ...] = ()
    timeout_quick: int = 180
    timeout_full: int = 1800
    peers: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def args(self, suite: str) -> list[str]:
        return list(self.quick if suite == "quick" else self.full)

    def timeout(self, suite: str) -> int:
        return self.timeout_quick if suite == "quick" else self.timeout_full


STAGES: tuple[Stage, ...] = (
    Stage(
        "tokenize",
        "benchmarks.bench_tokenize",
        timeout_quick=90,
        timeout_full=600,
        peers="per-cell NumPy Geneformer; scGPT binning",
    ),
    Stage(
        "shard",
        "benchmarks.bench_shard",
        timeout_quick=200,
        timeout_full=2400,
        full=("--sizes", "10k,100k,1m", "--soma-sizes", "100k"),
        peers="I/O floor; per-cell NumPy Geneformer",
    ),
    Stage(
        "loader",
        "benchmarks.bench_loader",
        timeout_quick=120,
        timeout_full=1800,
        peers="AnnData backed + per-cell tokenization; scDataset; annbatch",
    ),
    Stage(
        "store",
        "benchmarks.bench_store",
        timeout_quick=90,
        timeout_full=900,
        peers="zarr-python vs tensorstore",
    ),
    Stage(
        "train",
        "benchmarks.bench_train",
        timeout_quick=150,
        timeout_full=2400,
        peers="Hugging Face BertForMaskedLM; eager vs compiled",
    ),
    Stage(
        "eval",
        "benchmarks.bench_eval",
        timeout_quick=300,
        timeout_full=1800,
        peers="scib-metrics runtime; PCA baseline",
    ),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
#: Whole-suite time budget (seconds): no stage starts with less than its own timeout left,
#: except that it may run in what remains when that is at least a third of its timeout.
BUDGET = {"quick": 570, "full": 4 * 3600}
#: On a machine busier than its core count (shared CI, other jobs), timeouts and the budget
#: stretch by load / cores, at most this much; the factor is recorded in suite.json.
MAX_LOAD_STRETCH = 3.0


def load_stretch(load: float | None, cores: int | None) -> float:
    """max(1, 1-min load average / cores), capped at :data:`MAX_LOAD_STRETCH`."""
    if not load or not cores:
        return 1.0
    return round(min(MAX_LOAD_STRETCH, max(1.0, load / cores)), 2)


def _tail(text: str, n: int = 2000) -> str:
    return text[-n:] if len(text) > n else text


def _stage_json(out: Path) -> tuple[Path | None, str]:
    """The single result JSON a stage wrote into ``out`` (None + why when not exactly one)."""
    found = sorted(p for p in out.glob("*.json") if p.name != "stage.json")
    if len(found) == 1:
        return found[0], ""
    if not found:
        return None, "the stage wrote no .json into its --out directory"
    return found[-1], f"the stage wrote {len(found)} .json files; read {found[-1].name}"


def run_stage(
    stage: Stage,
    suite: str,
    out: Path,
    *,
    timeout: float,
    python: str = sys.executable,
    extra: list[str] | None = None,
    gpu: bool = False,
) -> dict[str, Any]:
    """Runs one stage script in a subprocess; returns its record (never raises for the stage).

    Without a GPU, ``DS_ACCELERATOR=cpu`` is set (unless already set) so DeepSpeed does not
    probe for one; with a GPU the stage sees the environment as it is and uses the device.
    """
    out.mkdir(parents=True, exist_ok=True)
    cmd = [python, "-m", stage.module, *stage.args(suite), *(extra or []), "--out", str(out)]
    rec: dict[str, Any] = {
        "stage": stage.name,
        "module": stage.module,
        "cmd": cmd,
        "peers": stage.peers,
        "timeout_s": timeout,
        "load_start": loadavg(),
    }
    script = REPO / (stage.module.replace(".", "/") + ".py")
    if not script.is_file():
        rec.update(status="missing", error=f"{script.relative_to(REPO)} does not exist")
        return rec
    env = {
        **os.environ,
        **stage.env,
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    if not gpu:
        env.setdefault("DS_ACCELERATOR", "cpu")
    t0 = time.perf_counter()
    with open(out / "stdout.txt", "w") as so, open(out / "stderr.txt", "w") as se:
        try:
            proc = subprocess.Popen(
                cmd, stdout=so, stderr=se, cwd=REPO, env=env, start_new_session=True
            )
        except OSError as exc:
            rec.update(status="failed", returncode=None, error=f"could not start: {exc}")
            return rec
        with PeakRSS(proc.pid, interval=0.2) as rss:
            try:
                rc = proc.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
                rc = proc.wait()
    rec["wall_s"] = round(time.perf_counter() - t0, 2)
    rec["peak_rss_gib"] = round(rss.peak / 2**30, 3)
    rec["returncode"] = rc
    rec["load_end"] = loadavg()
    stderr = (out / "stderr.txt").read_text(errors="replace")
    if timed_out:
        rec.update(
            status="timeout", error=f"stopped after {timeout:.0f} s", stderr_tail=_tail(stderr)
        )
        return rec
    if rc != 0:
        rec.update(status="failed", error=f"exit status {rc}", stderr_tail=_tail(stderr))
        return rec
    path, why = _stage_json(out)
    if path is None:
        rec.update(status="failed", error=why, stderr_tail=_tail(stderr))
        return rec
    try:
        rec["result"] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        rec.update(status="failed", error=f"{path.name} is not JSON: {exc}")
        return rec
    rec.update(status="ok", json=str(path.relative_to(out.parent)))
    if why:
        rec["note"] = why
    md = path.with_suffix(".md")
    if md.is_file():
        rec["markdown"] = md.read_text()
    return rec


def _kill_group(proc: subprocess.Popen) -> None:
    """Stops a timed-out stage and the processes it started (its own session)."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def run_suite(
    suite: str,
    out: Path,
    *,
    stages: list[Stage] | None = None,
    budget: float | None = None,
    timeout_scale: float = 1.0,
    stage_args: dict[str, list[str]] | None = None,
    stretch_for_load: bool = True,
) -> dict[str, Any]:
    """Runs the stages in order and writes ``suite.json`` + the report into ``out``.

    Args:
        suite: ``quick`` or ``full``.
        out: output directory (created).
        stages: the stages to run (default: all, in order).
        budget: whole-suite seconds (default :data:`BUDGET`); stretched with the timeouts.
        timeout_scale: multiplies every stage timeout and the budget.
        stage_args: extra command-line arguments per stage name.
        stretch_for_load: also multiply them by :func:`load_stretch` of the load at start.
    """
    from benchmarks.report import write_report

    if suite not in BUDGET:
        raise ValueError(f"suite must be one of {sorted(BUDGET)}, got {suite!r}")
    stages = list(STAGES if stages is None else stages)
    load0 = loadavg()
    stretch = load_stretch(load0, os.cpu_count()) if stretch_for_load else 1.0
    timeout_scale *= stretch
    budget = (BUDGET[suite] if budget is None else budget) * timeout_scale
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    payload: dict[str, Any] = {
        "suite": suite,
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "load_start": load0,
        "load_stretch": stretch,
        "timeout_scale": round(timeout_scale, 3),
        "budget_s": round(budget, 1),
        "stages": {},
    }
    payload["machine"] = machine()
    payload["versions"] = payload["machine"].get("packages", {})
    for st in stages:
        left = budget - (time.perf_counter() - t_start)
        timeout = st.timeout(suite) * timeout_scale
        if left < timeout / 3:
            payload["stages"][st.name] = {
                "stage": st.name,
                "module": st.module,
                "peers": st.peers,
                "status": "skipped",
                "error": f"suite time budget: {max(left, 0):.0f} s left of {budget:.0f} s, "
                f"stage needs up to {timeout:.0f} s",
            }
            print(f"[suite] {st.name}: skipped (time budget)", file=sys.stderr, flush=True)
            continue
        print(f"[suite] {st.name} ({st.module}) ...", file=sys.stderr, flush=True)
        rec = run_stage(
            st,
            suite,
            out / st.name,
            timeout=min(timeout, left),
            extra=(stage_args or {}).get(st.name),
            gpu=bool(payload["machine"].get("gpu")),
        )
        payload["stages"][st.name] = rec
        print(
            f"[suite] {st.name}: {rec['status']} in {rec.get('wall_s', 0):.0f} s"
            + (f" ({rec['error']})" if rec.get("error") else ""),
            file=sys.stderr,
            flush=True,
        )
        _write_json(out / "suite.json", payload)  # partial results survive a crash of the suite
    payload["wall_s"] = round(time.perf_counter() - t_start, 1)
    payload["load_end"] = loadavg()
    _write_json(out / "suite.json", payload)
    # a full run in the results tree also gets results/<date>_<machine>.md (what the README cites)
    summary = RESULTS if suite == "full" and _inside(out, RESULTS) else None
    payload["report"] = write_report(payload, out, summary_dir=summary)
    _write_json(out / "suite.json", payload)
    return payload


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def default_out(suite: str) -> Path:
    return RESULTS / f"suite_{suite}_{dt.date.today().isoformat()}"


def build_parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    from scforge.errors import ArgumentParser

    ap = ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    ap.add_argument("--suite", choices=("quick", "full"), default="quick")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default benchmarks/results/suite_<suite>_<date>)",
    )
    ap.add_argument(
        "--stages",
        default=",".join(STAGE_NAMES),
        help=f"comma-separated subset of {','.join(STAGE_NAMES)}",
    )
    ap.add_argument("--skip", default="", help="comma-separated stages to leave out")
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="whole-suite time budget in seconds (default: quick 570, full 14400)",
    )
    ap.add_argument(
        "--timeout-scale",
        type=float,
        default=1.0,
        help="multiply every stage timeout and the budget (slow machines)",
    )
    ap.add_argument(
        "--no-load-stretch",
        action="store_true",
        help="do not stretch timeouts by load average / cores on a busy machine",
    )
    ap.add_argument(
        "--stage-args",
        action="append",
        default=[],
        metavar="STAGE=ARGS",
        help="extra arguments for one stage, e.g. eval='--checkpoint runs/x/export'",
    )
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild report.md and the charts from an existing suite.json in --out",
    )
    return ap


def select(names: str, skip: str) -> list[Stage]:
    """The stages named (in suite order); ValueError naming an unknown one."""
    want = [n.strip() for n in names.split(",") if n.strip()]
    drop = {n.strip() for n in skip.split(",") if n.strip()}
    unknown = sorted((set(want) | drop) - set(STAGE_NAMES))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {list(STAGE_NAMES)}")
    return [s for s in STAGES if s.name in want and s.name not in drop]


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks") -> int:
    """Command line of the suite; returns 0 when it ran (even with failed stages), 2 on misuse."""
    import shlex

    args = build_parser(prog).parse_args(argv)
    out = args.out or default_out(args.suite)
    try:
        stages = select(args.stages, args.skip)
        extra: dict[str, list[str]] = {}
        for item in args.stage_args:
            name, sep, rest = item.partition("=")
            if not sep or name not in STAGE_NAMES:
                raise ValueError(
                    f"--stage-args {item!r}: expected STAGE=ARGS with STAGE one of "
                    f"{list(STAGE_NAMES)}"
                )
            extra.setdefault(name, []).extend(shlex.split(rest))
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if args.report_only:
        from benchmarks.report import write_report

        path = out / "suite.json"
        if not path.is_file():
            print(f"{prog}: error: {path} not found (run the suite first)", file=sys.stderr)
            return 2
        payload = json.loads(path.read_text())
        full = payload.get("suite") == "full" and _inside(out, RESULTS)
        payload["report"] = write_report(payload, out, summary_dir=RESULTS if full else None)
        _write_json(path, payload)
        print(json.dumps(payload["report"]))
        return 0
    payload = run_suite(
        args.suite,
        out,
        stages=stages,
        budget=args.budget,
        timeout_scale=args.timeout_scale,
        stage_args=extra,
        stretch_for_load=not args.no_load_stretch,
    )
    status = {k: v["status"] for k, v in payload["stages"].items()}
    print(
        json.dumps(
            {"out": str(out), "wall_s": payload["wall_s"], "stages": status, **payload["report"]}
        )
    )
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    """What ``scforge bench`` calls (an unwritable ``--out`` ends in one line too)."""
    from scforge.errors import run_command

    return run_command("scforge bench", lambda: main(argv, prog="scforge bench"))
