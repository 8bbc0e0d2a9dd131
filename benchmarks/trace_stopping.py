"""The deflated trace's stopping rule, simulated: how many samples it draws and how accurate it ends.

The deflated trace (``wdbound.estimators.krylov_trace``) adds probes until its standard error is at most
``rtol`` x |estimate|. This script runs that loop on simulated samples (no HVP) and compares two block rules:

- ``jump``: each block the count the standard error says is missing, 10 % more (the rule until 2026-12-07);
- ``wdbound``: the library's :func:`~wdbound.estimators.krylov_trace.next_block` (30 % more, at most
  tripling the samples in hand).

For each "need" (the samples a known standard deviation takes to reach the target exactly) it prints the
mean and spread of the count drawn, the blocks, the true relative standard error at the stop (RMS, and how
often it ends above 1.1 x the target). ``--samples FILE.npy`` adds a bootstrap from recorded per-probe
samples (e.g. ``Hessian.spectrum(trace_rtol=0.03).trace.samples`` of a real model).

    python benchmarks/trace_stopping.py [--runs 4000] [--samples FILE.npy]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from wdbound.defaults import SPECTRUM_TRACE_RTOL, TRACE_MAX_PROBES, TRACE_PROBES  # noqa: E402
from wdbound.estimators.krylov_trace import next_block  # noqa: E402


def jump(drawn: int, stderr: float, target: float) -> int:
    """The old rule: the missing count at once, 10 % more, at least 2."""
    return max(2, math.ceil(1.1 * drawn * (stderr / target) ** 2) - drawn)


def simulate(rule, draw, mean: float, sigma: float, runs: int, rtol: float = SPECTRUM_TRACE_RTOL,
             first: int = TRACE_PROBES, cap: int = TRACE_MAX_PROBES) -> dict:
    """``runs`` stopped runs of ``rule`` on samples from ``draw(k)``; their true mean and spread are ``mean``
    and ``sigma``."""
    counts, blocks, errors = [], [], []
    for _ in range(runs):
        samples = list(draw(first))
        rounds = 1
        while True:
            a = np.asarray(samples)
            stderr, target = a.std(ddof=1) / math.sqrt(len(a)), rtol * abs(a.mean())
            if len(a) >= cap or stderr <= target:
                break
            samples += list(draw(min(cap - len(a), rule(len(a), stderr, target))))
            rounds += 1
        counts.append(len(samples))
        blocks.append(rounds)
        errors.append(sigma / math.sqrt(len(samples)) / abs(mean))
    counts, errors = np.asarray(counts), np.asarray(errors)
    return {"mean": counts.mean(), "sd": counts.std(), "blocks": float(np.mean(blocks)),
            "rms": float(np.sqrt(np.mean(errors ** 2))), "above": float(np.mean(errors > 1.1 * rtol))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4000)
    parser.add_argument("--samples", type=Path, help="recorded per-probe trace samples (.npy) to bootstrap")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    cases = []
    for need in (4, 12, 25, 40, 80, 150):
        sigma = SPECTRUM_TRACE_RTOL * math.sqrt(need)  # mean 1: a standard error of rtol at exactly `need`
        cases.append((f"Gaussian, need {need}", lambda k, s=sigma: rng.normal(1.0, s, k), 1.0, sigma))
    if args.samples:
        recorded = np.load(args.samples)
        need = (recorded.std(ddof=1) / (SPECTRUM_TRACE_RTOL * abs(recorded.mean()))) ** 2
        cases.append((f"{args.samples.name} (bootstrap, need {need:.0f})", lambda k: rng.choice(recorded, k),
                      recorded.mean(), recorded.std(ddof=1)))
    print(f"target: stderr <= {SPECTRUM_TRACE_RTOL:g} x |trace|, first block {TRACE_PROBES}, cap {TRACE_MAX_PROBES}; "
          f"{args.runs} runs each")
    print(f"{'case':<44} {'rule':<8} {'samples':>8} {'sd':>6} {'blocks':>6} {'rms err':>8} {'> 1.1 x':>8}")
    for name, draw, mean, sigma in cases:
        results = {label: simulate(rule, draw, mean, sigma, args.runs)
                   for label, rule in (("jump", jump), ("wdbound", next_block))}
        for label, r in results.items():
            print(f"{name:<44} {label:<8} {r['mean']:8.1f} {r['sd']:6.1f} {r['blocks']:6.2f} {r['rms']:8.3f} "
                  f"{r['above']:8.3f}")
        print(f"{'':<44} {'ratio':<8} {results['wdbound']['mean'] / results['jump']['mean']:8.2f}")


if __name__ == "__main__":
    main()
