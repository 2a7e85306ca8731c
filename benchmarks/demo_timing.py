"""Where the time of a finished workflow run went, from Snakemake's per-output records.

Run it in the project directory after ``time make demo`` (or any run):

    .venv/bin/python benchmarks/demo_timing.py [--project DIR] [--cores 2]

Prints per rule the number of jobs, their summed and mean wall seconds, then the run's span (first job
start to last job end), the serial sum of all jobs and the ratio of the two against ``--cores``: how well
the jobs filled the machine. The serial sum is the baseline: what the same jobs cost one after another.
Snakemake keeps one record per output file under ``.snakemake/metadata/``; a job with several outputs is
counted once (its ``job_hash`` identifies it; the outputs' start times differ by microseconds).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def job_times(project: Path) -> dict[tuple[str, int], tuple[float, float]]:
    """(rule, job hash) -> (start, end) of every job recorded in the project's Snakemake metadata."""
    folder = project / ".snakemake" / "metadata"
    if not folder.is_dir():
        raise SystemExit(f"{folder}: no Snakemake metadata; run the workflow in {project} first")
    jobs: dict[tuple[str, int], tuple[float, float]] = {}
    for path in folder.iterdir():
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        rule, start, end = record.get("rule"), record.get("starttime"), record.get("endtime")
        if rule and start and end:
            key = (rule, int(record.get("job_hash", 0)) or hash(start))
            first = jobs.get(key, (float(start), float(end)))
            jobs[key] = (min(first[0], float(start)), max(first[1], float(end)))
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path.cwd())
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    jobs = job_times(args.project)
    by_rule: dict[str, list[float]] = defaultdict(list)
    for (rule, _), (start, end) in jobs.items():
        by_rule[rule].append(end - start)
    print(f"{'rule':22s} {'jobs':>5s} {'seconds':>9s} {'mean':>7s}")
    for rule, times in sorted(by_rule.items(), key=lambda item: -sum(item[1])):
        print(f"{rule:22s} {len(times):5d} {sum(times):9.1f} {sum(times) / len(times):7.1f}")
    serial = sum(end - start for start, end in jobs.values())
    span = max(end for _, end in jobs.values()) - min(start for start, _ in jobs.values())
    print(f"jobs: {len(jobs)}; serial sum {serial:.0f} s; span {span:.0f} s ({span / 60:.1f} min)")
    print(f"serial sum / span: {serial / span:.2f} (at most {args.cores} on {args.cores} cores)")


if __name__ == "__main__":
    main()
