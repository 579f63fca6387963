"""Coverage-guided fuzzing at scale: every harness in ``fuzz/`` for N inputs, with figures.

    python3 -m bench.fuzz [--inputs 1000000] [--jobs 2] [--only wire,kcp] [--max-minutes 40]

Needs the ``fuzz`` extra (``pip install -e '.[fuzz]'``: atheris, coverage); no root.  Each
harness runs in its own process (``python3 -m fuzz.fuzz_<name>``, libFuzzer via atheris,
ratbond instrumented) from a scratch copy of its seed corpus (``fuzz/corpus/<name>/``, which
is never written), ``--jobs`` at a time.  Figures per harness: inputs run, inputs/s (wall
clock), libFuzzer's edge coverage (``cov``) and features (``ft``) after the seeds and at the
end, the corpus it grew, and the line coverage of its target modules when the grown corpus
is replayed under coverage.py.  A crash, timeout or out-of-memory input is copied to
``bench/results/fuzz-artifacts/<name>/`` and fails the run (exit 1): each one becomes a
test in ``tests/unit/test_fuzz_regressions.py``.  Results: ``bench/results/fuzz.json`` and
a Markdown table on stdout (with ``--only``, the rows of the named harnesses replace
those of the earlier run in the same file).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, write_result

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
SRC = ROOT / "src" / "ratbond"

#: Harness -> the modules whose lines it is meant to cover (line coverage is over these).
TARGETS: dict[str, tuple[str, ...]] = {
    "wire": ("wire.py",),
    "handshake": ("crypto/server.py", "crypto/client.py", "crypto/handshake.py",
                  "crypto/messages.py"),
    "transport": ("crypto/transport.py", "crypto/replay.py", "connection/server.py",
                  "connection/client.py"),
    "bond": ("bond/messages.py", "bond/bond.py", "bond/reorder.py"),
    "kcp": ("kcp/core.py",),
    "kcp_c": ("kcp/fast.py",),
    "flow": ("bond/flow.py",),
    "config": ("config.py", "clients.py"),
}
_STATUS = re.compile(r"^#(\d+)\s+(INITED|NEW|REDUCE|pulse|DONE)\s+cov: (\d+) ft: (\d+)"
                     r"(?: corp: (\d+)/(\d+)(b|Kb|Mb))?")
_UNITS = {"b": 1, "Kb": 1024, "Mb": 1024 * 1024}


def parse_libfuzzer(log: str) -> dict[str, Any]:
    """The figures of a libFuzzer log: coverage after the seeds and at the end, corpus size,
    inputs run (``stat::number_of_executed_units``)."""
    out: dict[str, Any] = {}
    for line in log.splitlines():
        match = _STATUS.match(line)
        if match:
            runs, kind, cov, ft, units, size, unit = match.groups()
            if kind == "INITED":
                out["seed_cov"], out["seed_ft"] = int(cov), int(ft)
            out["cov"], out["ft"], out["last_run"] = int(cov), int(ft), int(runs)
            if units is not None:
                out["corpus_units"] = int(units)
                out["corpus_bytes"] = int(size) * _UNITS[unit]
        elif line.startswith("stat::number_of_executed_units:"):
            out["inputs"] = int(line.split(":")[-1])
        elif line.startswith("stat::peak_rss_mb:"):
            out["peak_rss_mb"] = int(line.split(":")[-1])
    out.setdefault("inputs", out.get("last_run", 0))
    return out


def line_coverage(harness: str, folders: list[Path], workdir: Path) -> dict[str, Any]:
    """Replay ``folders`` through the harness under coverage.py: % of its targets' lines."""
    data_file = workdir / ".coverage"
    includes = ",".join(str(SRC / target) for target in TARGETS[harness])
    run = subprocess.run([sys.executable, "-m", "coverage", "run", f"--data-file={data_file}",
                          f"--include={includes}", "-m", "fuzz.replay", harness,
                          *map(str, folders)], cwd=ROOT, capture_output=True, text=True,
                         check=False)
    if run.returncode != 0:
        return {"error": (run.stderr or run.stdout)[-2000:]}
    report_file = workdir / "coverage.json"
    subprocess.run([sys.executable, "-m", "coverage", "json", f"--data-file={data_file}",
                    "-o", str(report_file), "-q"], cwd=ROOT, check=True, capture_output=True)
    report = json.loads(report_file.read_text())
    files = {str((ROOT / name).resolve().relative_to(SRC)):
             round(entry["summary"]["percent_covered"], 1)
             for name, entry in report["files"].items()}
    return {"percent": round(report["totals"]["percent_covered"], 1), "files": files}


def run_one(harness: str, inputs: int, max_seconds: int) -> dict[str, Any]:
    """Fuzz one harness in its own process from a scratch copy of its seeds."""
    with tempfile.TemporaryDirectory(prefix=f"ratbond-fuzz-{harness}-") as scratch:
        work = Path(scratch)
        corpus = work / "corpus"
        seeds = CORPUS / harness
        shutil.copytree(seeds, corpus)
        seed_count = sum(1 for _ in seeds.iterdir())
        command = [sys.executable, "-m", f"fuzz.fuzz_{harness}", f"-runs={inputs}",
                   f"-max_total_time={max_seconds}", "-print_final_stats=1", "-timeout=20",
                   "-rss_limit_mb=2048", "-max_len=4096", f"-artifact_prefix={work}/",
                   str(corpus)]
        started = time.monotonic()
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, check=False)
        elapsed = time.monotonic() - started
        log = proc.stdout + proc.stderr
        result: dict[str, Any] = {"harness": harness, "seeds": seed_count,
                                  "seconds": round(elapsed, 1), "exit": proc.returncode,
                                  **parse_libfuzzer(log)}
        result["inputs_per_s"] = round(result["inputs"] / elapsed) if elapsed else 0
        artifacts = [p for p in work.iterdir()
                     if p.name.startswith(("crash-", "timeout-", "oom-", "leak-"))]
        if artifacts:
            keep = RESULTS_DIR / "fuzz-artifacts" / harness
            keep.mkdir(parents=True, exist_ok=True)
            for artifact in artifacts:
                shutil.copy(artifact, keep / artifact.name)
            result["artifacts"] = [str(keep / a.name) for a in artifacts]
            result["log_tail"] = log[-4000:]
        result["lines"] = line_coverage(harness, [corpus], work)
        return result


def merged(name: str, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``results`` in place of the same harnesses' rows of an earlier run (``--only``)."""
    path = RESULTS_DIR / f"{name}.json"
    try:
        earlier: list[dict[str, Any]] = json.loads(path.read_text())["results"]
    except (OSError, ValueError, KeyError):
        return results
    fresh = {r["harness"]: r for r in results}
    rows = [fresh.pop(r["harness"], r) for r in earlier]
    return rows + list(fresh.values())


#: libFuzzer's exit code when interrupted (SIGINT): a run stopped early by hand.
INTERRUPTED = 72


def describe_outcome(result: dict[str, Any]) -> str:
    if result.get("artifacts"):
        return f"{len(result['artifacts'])} input(s) broke an invariant (see artifacts)"
    if result["exit"] == 0:
        return "nothing"
    if result["exit"] == INTERRUPTED:
        return "nothing (stopped early)"
    return f"exit {result['exit']}"


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| harness | inputs | inputs/s | edges (seeds → end) | features | corpus (seeds → end) "
            "| lines of its modules | found |",
            "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        lines = r.get("lines", {})
        found = describe_outcome(r)
        rows.append(
            f"| {r['harness']} | {r['inputs']:,} | {r['inputs_per_s']:,} | "
            f"{r.get('seed_cov', '?')} → {r.get('cov', '?')} | {r.get('ft', '?')} | "
            f"{r['seeds']} → {r.get('corpus_units', '?')} | "
            f"{lines.get('percent', '?')} % | {found} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000,
                        help="inputs per harness (default 1000000)")
    parser.add_argument("--jobs", type=int, default=2, help="harnesses at a time (default 2)")
    parser.add_argument("--only", default="", help="comma-separated harness names")
    parser.add_argument("--max-minutes", type=float, default=40.0,
                        help="stop a harness after this long even if short of --inputs")
    parser.add_argument("--name", default="fuzz", help="result file bench/results/NAME.json")
    parser.add_argument("--table", action="store_true",
                        help="only print the table of bench/results/NAME.json")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads((RESULTS_DIR / f"{args.name}.json").read_text())["results"]))
        return 0
    harnesses = [h for h in args.only.split(",") if h] or list(TARGETS)
    unknown = sorted(set(harnesses) - set(TARGETS))
    if unknown:
        parser.error(f"--only: unknown harness {unknown[0]!r}; choose from {', '.join(TARGETS)}")
    if args.inputs < 1 or args.jobs < 1:
        parser.error("--inputs and --jobs must be at least 1")
    try:
        import atheris  # noqa: F401
    except ImportError:
        parser.error("atheris is not installed: pip install -e '.[fuzz]'")
    started = time.time()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, h, args.inputs, int(args.max_minutes * 60))
                   for h in harnesses]
        results = []
        for future in futures:
            result = future.result()
            results.append(result)
            print(f"{result['harness']}: {result['inputs']:,} inputs in {result['seconds']} s "
                  f"({result['inputs_per_s']:,}/s), cov {result.get('cov')}, "
                  f"lines {result['lines'].get('percent')} %, exit {result['exit']}",
                  file=sys.stderr, flush=True)
    summary = {"inputs_per_harness": args.inputs, "jobs": args.jobs,
               "started_unix": round(started), "python": sys.version.split()[0],
               "results": merged(args.name, results) if args.only else results}
    path = write_result(args.name, summary)
    print(table(summary["results"]))
    print(f"\nwritten: {path}")
    failed = [r["harness"] for r in results if r.get("artifacts") or r["exit"] != 0
              or r["inputs"] < args.inputs]
    if failed:
        print(f"not clean (crash, or short of --inputs): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
