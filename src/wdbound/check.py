"""Regression check of the bounds against a committed baseline (``wdbound check``).

A baseline records, per checkpoint, the figures of the form that trained it
(err/d, Φ of Corollary 3, top eigenvalue, trace) with their standard errors,
plus the exact settings and seeds that produced them. The check recomputes
them with those settings (never from the cache: a code change must show) and
compares.

Tolerance of a metric (the largest of):

- ``stderr_factor`` × √2 × the recorded standard error: a change of code that
  draws different probes moves a figure by about √2 stderr (two independent
  estimates); 4 of them is a 1-in-15,000 false alarm for a Gaussian error;
- ``rel`` × |baseline|: same seeds on the same software reproduce to ~1e-12;
  1e-6 covers BLAS / thread-count / library differences in the last digits;
- an explicit per-metric ``{"rel": r}`` or ``{"abs": a}`` in ``tolerances``.

The top eigenvalue's "stderr" is its Lanczos residual bound (a guaranteed error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from .errors import WdboundError

FORMAT = "wdbound-baseline/1"
METRICS = ("err_mean", "phi", "top_eigenvalue", "trace")
DEFAULT_TOLERANCE = {"stderr_factor": 4.0, "rel": 1e-6}


@dataclass(frozen=True)
class Comparison:
    checkpoint: str
    metric: str
    baseline: float
    now: float
    tolerance: float
    reason: str  # which rule set the tolerance

    @property
    def difference(self) -> float:
        return self.now - self.baseline

    @property
    def passed(self) -> bool:
        if math.isnan(self.baseline) and math.isnan(self.now):
            return True
        return abs(self.difference) <= self.tolerance


def validate_baseline(data, source: str) -> dict:
    """Raise a one-line WdboundError unless ``data`` is a readable baseline of this format."""
    if not isinstance(data, dict):
        raise WdboundError(f"{source}: not a wdbound baseline (expected a JSON object)", "--baseline")
    if data.get("format") != FORMAT:
        raise WdboundError(f"{source}: unknown baseline format {data.get('format')!r} (this wdbound reads {FORMAT})",
                           "--baseline")
    entries = data.get("checkpoints")
    if not isinstance(entries, list) or not isinstance(data.get("settings"), dict):
        raise WdboundError(f"{source}: baseline lacks 'checkpoints' or 'settings'", "--baseline")
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not isinstance(
                entry.get("metrics"), dict):
            raise WdboundError(f"{source}: malformed checkpoint entry {str(entry)[:80]}", "--baseline")
        for name, metric in entry["metrics"].items():
            if not isinstance(metric, dict) or not isinstance(metric.get("value"), (int, float)):
                raise WdboundError(f"{source}: {entry['path']}: metric {name!r} has no numeric value", "--baseline")
    return data


def tolerance_for(metric: str, base: dict, now_stderr: float, rules: dict, explicit: dict) -> tuple[float, str]:
    value = float(base["value"])
    candidates = []
    base_se = base.get("stderr")
    if isinstance(base_se, (int, float)) and math.isfinite(base_se):
        se = max(float(base_se), now_stderr if math.isfinite(now_stderr) else 0.0)
        candidates.append((rules.get("stderr_factor", 4.0) * math.sqrt(2) * se, "stderr"))
    candidates.append((rules.get("rel", 1e-6) * abs(value), "rel"))
    own = explicit.get(metric) or {}
    if "abs" in own:
        candidates.append((float(own["abs"]), "explicit abs"))
    if "rel" in own:
        candidates.append((float(own["rel"]) * abs(value), "explicit rel"))
    return max(candidates)


def compare(entry: dict, now: dict, rules: dict, explicit: dict) -> list[Comparison]:
    out = []
    for metric, base in entry["metrics"].items():
        current = now.get(metric)
        if current is None:
            out.append(Comparison(entry["path"], metric, float(base["value"]), math.nan, 0.0, "missing"))
            continue
        tol, reason = tolerance_for(metric, base, float(current.get("stderr") or 0.0), rules, explicit)
        out.append(Comparison(entry["path"], metric, float(base["value"]), float(current["value"]), tol, reason))
    return out


def junit_xml(results: list[Comparison], seconds: float) -> str:
    failures = sum(not r.passed for r in results)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<testsuite name="wdbound check" tests="{len(results)}" failures="{failures}" errors="0" '
             f'time="{seconds:.3f}">']
    for r in results:
        name = quoteattr(f"{r.metric}")
        head = f'  <testcase classname={quoteattr(r.checkpoint)} name={name}>'
        if r.passed:
            lines.append(head[:-1] + "/>")
        else:
            message = (f"{r.metric}: baseline {r.baseline:.10g}, now {r.now:.10g}, difference {r.difference:.3g} "
                       f"exceeds tolerance {r.tolerance:.3g} ({r.reason})")
            lines += [head, f"    <failure message={quoteattr(message)}>{escape(message)}</failure>", "  </testcase>"]
    lines.append("</testsuite>")
    return "\n".join(lines) + "\n"


def metrics_of(row: dict) -> dict:
    """The checked figures of one table row (see ``wdbound.cli.table_row``), each with its stderr."""
    out = {"top_eigenvalue": {"value": row["top_eigenvalue"], "stderr": row["top_residual"]},
           "trace": {"value": row["trace"], "stderr": row["trace_stderr"]}}
    if row.get("err_mean") is not None:  # optimizers outside Table I have no bound form
        out["err_mean"] = {"value": row["err_mean"], "stderr": row["err_mean_stderr"]}
        out["phi"] = {"value": row["phi"], "stderr": _phi_stderr(row)}
    return out


def _phi_stderr(row: dict) -> float:
    """Φ = sqrt(8/n)·sqrt(err + c0): dΦ/d err = 4/(n Φ)."""
    phi = row.get("phi")
    if not isinstance(phi, (int, float)) or not math.isfinite(phi) or phi == 0:
        return math.nan
    return 4.0 / (row["n"] * phi) * row["err_sum_stderr"]
