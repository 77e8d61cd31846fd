"""plait against the best peer of one harness run: the comparison table and the issue's targets.

Reads the JSON written by ``run_peers.py --out`` and prints, as Markdown, the medians of every
peer (the harness's own table, plus worker CPU per step and the spread of each figure) and the
ratio of plait (``ours``) to the best other peer for each target of issue 7::

    /tmp/pv/bin/python benchmarks/ratios.py benchmarks/results/peers.json
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OURS = "ours"
FLOOR = "raw"  # a hand-written queue with no bookkeeping: a floor, not a peer
STEPS = {"single": 1, "chain3": 3, "fanout10": 11}


@dataclass(frozen=True)
class Target:
    """One target: a figure, whether higher is better, and the bound on plait / best peer."""

    label: str
    scenario: str
    field: str
    higher_is_better: bool
    bound: float
    per_step: bool = False


TARGETS = (
    Target("chain3 workflows/s", "chain3", "units_s", True, 2.0),
    Target("fanout10 workflows/s", "fanout10", "units_s", True, 2.0),
    Target("single jobs/s", "single", "units_s", True, 2.0),
    Target("chain3 p50 latency ms", "chain3_lat", "p50_ms", False, 0.5),
)


def figure(summary: dict[str, Any], peer: str, scenario: str, field: str) -> float | None:
    value = summary.get(f"{peer}/{scenario}", {}).get(field)
    return float(value) if value is not None else None


def cpu_per_step(summary: dict[str, Any], peer: str, scenario: str) -> float | None:
    value = figure(summary, peer, scenario, "worker_cpu_ms_per_unit")
    return value / STEPS[scenario] if value is not None else None


def cell(value: float | None, fmt: str = "{:g}") -> str:
    return "-" if value is None else fmt.format(value)


def comparison(summary: dict[str, Any], peers: list[str]) -> list[str]:
    rows = [
        "| peer | single jobs/s | chain3 wf/s | chain3 p50 ms | chain3 p95 ms | fanout10 wf/s "
        "| worker CPU ms/step single / chain3 / fanout10 | peak RSS MB | redis CPU ms/job |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for peer in peers:
        rss = [figure(summary, peer, s, "worker_peak_rss_mb") for s in (*STEPS, "chain3_lat")]
        cpus = " / ".join(cell(cpu_per_step(summary, peer, s), "{:.2f}") for s in STEPS)
        rows.append(
            f"| {'plait' if peer == OURS else peer} "
            f"| {cell(figure(summary, peer, 'single', 'units_s'))} "
            f"| {cell(figure(summary, peer, 'chain3', 'units_s'))} "
            f"| {cell(figure(summary, peer, 'chain3_lat', 'p50_ms'))} "
            f"| {cell(figure(summary, peer, 'chain3_lat', 'p95_ms'))} "
            f"| {cell(figure(summary, peer, 'fanout10', 'units_s'))} "
            f"| {cpus} | {cell(max((r for r in rss if r is not None), default=None), '{:.0f}')} "
            f"| {cell(figure(summary, peer, 'single', 'redis_cpu_ms_per_unit'))} |"
        )
    return rows


def _target_figure(summary: dict[str, Any], target: Target, peer: str) -> float | None:
    return figure(summary, peer, target.scenario, target.field)


def _step_cpu(summary: dict[str, Any], scenario: str, peer: str) -> float | None:
    return cpu_per_step(summary, peer, scenario)


def best(
    peers: list[str], value: Callable[[str], float | None], high: bool
) -> tuple[str, float] | None:
    found = [(peer, v) for peer in peers if (v := value(peer)) is not None]
    if not found:
        return None
    return (max if high else min)(found, key=lambda item: item[1])


def ratio_rows(summary: dict[str, Any], peers: list[str]) -> list[str]:
    others = [p for p in peers if p not in (OURS, FLOOR)]
    rows = [
        "| target | plait | best peer | plait / best peer | bound | met |",
        "|---|---|---|---|---|---|",
    ]
    for target in TARGETS:
        ours = figure(summary, OURS, target.scenario, target.field)
        top = best(
            others,
            functools.partial(_target_figure, summary, target),
            target.higher_is_better,
        )
        if ours is None or top is None:
            continue
        ratio = ours / top[1]
        met = ratio >= target.bound if target.higher_is_better else ratio <= target.bound
        sign = ">=" if target.higher_is_better else "<="
        rows.append(
            f"| {target.label} | {ours:g} | {top[1]:g} ({top[0]}) | {ratio:.2f}x "
            f"| {sign} {target.bound:g}x | {'yes' if met else 'no'} |"
        )
    for scenario in STEPS:
        ours = cpu_per_step(summary, OURS, scenario)
        top = best(others, functools.partial(_step_cpu, summary, scenario), False)
        if ours is None or top is None:
            continue
        rows.append(
            f"| worker CPU ms/step, {scenario} | {ours:.2f} | {top[1]:.2f} ({top[0]}) "
            f"| {ours / top[1]:.2f}x | <= 0.4 ms | {'yes' if ours <= 0.4 else 'no'} |"
        )
    rss = [figure(summary, OURS, s, "worker_peak_rss_mb") for s in (*STEPS, "chain3_lat")]
    peak = max((r for r in rss if r is not None), default=None)
    if peak is not None:
        verdict = "yes" if peak <= 60 else "no"
        rows.append(f"| worker peak RSS MB | {peak:.0f} | - | - | <= 60 MB | {verdict} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="JSON written by run_peers.py --out")
    args = parser.parse_args(argv)
    data = json.loads(args.results.read_text())
    summary: dict[str, Any] = data["summary_median"]
    peers = list(dict.fromkeys(key.split("/")[0] for key in summary))
    meta = data["meta"]
    print(
        f"{meta['started_utc']} - {meta['finished_utc']}, {meta['repeats']} repeats, "
        f"{meta['cpus']} CPUs, Redis {meta['redis_server']}, Python {meta['python']}, "
        f"redis-py {meta['redis_py']}; redis-benchmark median {data['redis_benchmark_median']}\n"
    )
    print("\n".join(comparison(summary, peers)))
    print()
    print("\n".join(ratio_rows(summary, peers)))


if __name__ == "__main__":
    main()
