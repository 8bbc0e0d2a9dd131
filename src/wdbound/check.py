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

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from . import defaults
from .checkpoints import checkpoint_paths
from .errors import WdboundError
from .progress import Observer

FORMAT = "wdbound-baseline/1"
METRICS = ("err_mean", "phi", "top_eigenvalue", "trace")
DEFAULT_TOLERANCE = {"stderr_factor": 4.0, "rel": 1e-6}


@dataclass(frozen=True)
class Comparison:
    """One metric of one checkpoint: the baseline value, the value now, and the tolerance that applies."""

    checkpoint: str
    metric: str
    baseline: float
    now: float
    tolerance: float
    reason: str  # which rule set the tolerance

    @property
    def difference(self) -> float:
        """now − baseline."""
        return self.now - self.baseline

    @property
    def passed(self) -> bool:
        """|difference| within the tolerance (two NaNs agree)."""
        if math.isnan(self.baseline) and math.isnan(self.now):
            return True
        return abs(self.difference) <= self.tolerance


def validate_baseline(data, source: str) -> dict:
    """Raise a one-line WdboundError unless ``data`` is a readable baseline of this format."""
    if not isinstance(data, dict):
        raise WdboundError(f"{source}: not a wdbound baseline (expected a JSON object)", "baseline")
    if data.get("format") != FORMAT:
        raise WdboundError(f"{source}: unknown baseline format {data.get('format')!r} (this wdbound reads {FORMAT})",
                           "baseline")
    entries = data.get("checkpoints")
    if not isinstance(entries, list) or not isinstance(data.get("settings"), dict):
        raise WdboundError(f"{source}: baseline lacks 'checkpoints' or 'settings'", "baseline")
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not isinstance(
                entry.get("metrics"), dict):
            raise WdboundError(f"{source}: malformed checkpoint entry {str(entry)[:80]}", "baseline")
        for name, metric in entry["metrics"].items():
            if not isinstance(metric, dict) or not isinstance(metric.get("value"), (int, float)):
                raise WdboundError(f"{source}: {entry['path']}: metric {name!r} has no numeric value", "baseline")
    return data


def tolerance_for(metric: str, base: dict, now_stderr: float, rules: dict, explicit: dict) -> tuple[float, str]:
    """The tolerance of one metric and the rule that set it: the largest of the stderr rule, the relative rule
    and an explicit per-metric one (see the module docstring)."""
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
    """Compare every recorded metric of a baseline ``entry`` with the figures ``now`` (a missing one fails)."""
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
    """The comparisons as JUnit XML: one testcase per checkpoint and metric."""
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


def metrics_of(row) -> dict:
    """The checked figures of one :class:`wdbound.tables.TableRow`, each with its stderr."""
    out = {"top_eigenvalue": {"value": row.top_eigenvalue, "stderr": row.top_residual},
           "trace": {"value": row.trace, "stderr": row.trace_stderr}}
    if row.figures is not None:  # optimizers outside Table I have no bound form
        out["err_mean"] = {"value": row.figures.err_mean, "stderr": row.figures.err_mean_stderr}
        out["phi"] = {"value": row.figures.phi, "stderr": _phi_stderr(row.figures.phi, row.inputs.n,
                                                                      row.figures.err_sum_stderr)}
    return out


def _phi_stderr(phi: float, n: int, err_sum_stderr: float) -> float:
    """Φ = sqrt(8/n)·sqrt(err + c0): dΦ/d err = 4/(n Φ)."""
    if not isinstance(phi, (int, float)) or not math.isfinite(phi) or phi == 0:
        return math.nan
    return 4.0 / (n * phi) * err_sum_stderr


@dataclass
class Baseline:
    """A baseline file: where it lives and its JSON (format ``wdbound-baseline/1``): settings, tolerance rules,
    and per checkpoint its path, SHA-256 and recorded metrics."""

    path: Path
    data: dict
    exists: bool = True  # False for a baseline created in memory by :meth:`new`, not yet written

    @classmethod
    def load(cls, path: Path) -> "Baseline":
        """Read and validate a baseline; a missing, unreadable or malformed file is a one-line error."""
        path = Path(path)
        if not path.exists():
            raise WdboundError(f"{path}: no such baseline (record one from checkpoints first)", "update")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            raise WdboundError(f"{path}: not readable JSON ({str(exc).splitlines()[0][:120]})", "baseline") from None
        return cls(path, validate_baseline(data, str(path)))

    @classmethod
    def new(cls, path: Path, checkpoints: list[Path], *, probes: int = defaults.CHECK_PROBES,
            steps: int = defaults.CHECK_STEPS, seed: int = 0, max_samples: int | None = None) -> "Baseline":
        """A baseline to be recorded: ``checkpoints`` (files or folders) with these SLQ settings, no metrics yet."""
        from .spectrum import SpectrumSettings

        if not checkpoints:
            raise WdboundError(f"{path} does not exist; name the checkpoints to record", "update")
        spectrum = asdict(SpectrumSettings(probes=probes, steps=steps, top_k=1, seed=seed, max_samples=max_samples))
        data = {"format": FORMAT, "settings": {"spectrum": spectrum, "rho": None, "tau": defaults.TAU,
                                               "sigma_floor": defaults.SIGMA_FLOOR},
                "tolerance": dict(DEFAULT_TOLERANCE), "tolerances": {},
                "checkpoints": [{"path": str(p), "metrics": {}} for p in checkpoint_paths(list(checkpoints))]}
        return cls(Path(path), data, exists=False)

    @classmethod
    def open(cls, path: Path, *, update: bool = False, checkpoints: list[Path] = (), **new_settings) -> "Baseline":
        """:meth:`load` an existing baseline; with ``update`` and no file yet, :meth:`new` one."""
        if Path(path).exists() or not update:
            return cls.load(path)
        return cls.new(path, list(checkpoints), **new_settings)

    @property
    def entries(self) -> list[dict]:
        """The checkpoint entries: ``{"path", "sha256", "metrics"}``."""
        return self.data["checkpoints"]

    def select(self, checkpoints: list[Path] = ()) -> list[dict]:
        """The entries to check: those of ``checkpoints`` (all when empty; every one must be in the
        baseline), each of whose file must exist."""
        entries = self.entries
        if checkpoints and self.exists:
            wanted = {str(p) for p in checkpoint_paths(list(checkpoints))}
            unknown = wanted - {e["path"] for e in entries}
            if unknown:
                raise WdboundError(f"not in the baseline: {', '.join(sorted(unknown))}", "baseline")
            entries = [e for e in entries if e["path"] in wanted]
        missing = [e["path"] for e in entries if not Path(e["path"]).is_file()]
        if missing:
            raise WdboundError(f"baseline checkpoint missing: {', '.join(missing)}", "baseline")
        return entries

    def settings(self, *, device: str = "auto", memory: str = "auto"):
        """The recorded SpectrumSettings (on ``device`` within ``memory``; never exact, no refinement) and the
        recorded ρ, τ and σ-floor."""
        from .spectrum import SpectrumSettings

        try:
            recorded = self.data["settings"]
            settings = SpectrumSettings(**{**recorded["spectrum"], "device": device, "exact": False,
                                           "diagonal": "hutchinson", "rtol": 0.0, "memory": memory})
            settings.validate()
            return settings, recorded.get("rho"), float(recorded["tau"]), float(recorded["sigma_floor"])
        except WdboundError as exc:  # a recorded value out of range: the baseline is at fault, not a flag
            raise WdboundError(f"{self.path}: unusable settings ({exc.reason})", "baseline") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise WdboundError(f"{self.path}: unusable settings ({exc})", "baseline") from None

    def tolerance_rules(self) -> tuple[dict, dict]:
        """(the general tolerance rules, the explicit per-metric tolerances)."""
        return {**DEFAULT_TOLERANCE, **(self.data.get("tolerance") or {})}, self.data.get("tolerances") or {}

    def updated(self, report: "CheckReport") -> "Baseline":
        """A copy whose checked entries carry the report's SHA-256 and metrics, stamped with the library
        versions."""
        from .provenance import library_versions

        data = json.loads(json.dumps(self.data))
        for entry in data["checkpoints"]:
            if entry["path"] in report.recorded:
                entry["sha256"], entry["metrics"] = report.recorded[entry["path"]]
        data["updated_with"] = library_versions()
        return replace(self, data=data)

    def write(self) -> Path:
        """Write the baseline atomically."""
        from .io_utils import write_json_atomic

        return write_json_atomic(self.path, self.data)


@dataclass(frozen=True)
class CheckReport:
    """The outcome of :func:`run_check`: every comparison, and what was computed for each checkpoint."""

    results: list[Comparison]
    recorded: dict[str, tuple[str, dict]]  # path -> (sha256 now, metrics now)
    changed_files: list[str]  # checkpoints whose SHA-256 differs from the baseline's
    seconds: float
    checkpoints: int = 0

    @property
    def failed(self) -> list[Comparison]:
        """The comparisons beyond their tolerance."""
        return [r for r in self.results if not r.passed]

    @property
    def worst_relative_drift(self) -> float:
        """The largest |now − baseline| / |baseline| (0 with no comparison)."""
        return max((abs(r.difference) / abs(r.baseline) for r in self.results if r.baseline), default=0.0)

    @property
    def changed(self) -> list[Comparison]:
        """The comparisons whose value moved at all (what ``--update`` changes)."""
        return [r for r in self.results if r.difference != 0]

    def to_pandas(self):
        """Every comparison as a ``pandas.DataFrame``: checkpoint, metric, baseline, now, difference, tolerance,
        its rule (``reason``) and whether it passed."""
        import pandas as pd

        return pd.DataFrame([{"checkpoint": r.checkpoint, "metric": r.metric, "baseline": r.baseline, "now": r.now,
                              "difference": r.difference, "tolerance": r.tolerance, "reason": r.reason,
                              "passed": r.passed} for r in self.results],
                            columns=["checkpoint", "metric", "baseline", "now", "difference", "tolerance", "reason",
                                     "passed"])

    def junit(self) -> str:
        """The comparisons as JUnit XML."""
        return junit_xml(self.results, self.seconds)

    def to_json(self, baseline: "Baseline") -> dict:
        """``wdbound check --json``: every comparison (baseline, now, difference, tolerance and its rule, verdict),
        the verdict, the checkpoints whose bytes changed, and the baseline's settings that produced the values."""
        return {"baseline": str(baseline.path), "settings": baseline.data.get("settings"),
                "passed": not self.failed, "checkpoints": self.checkpoints, "seconds": self.seconds,
                "worst_relative_drift": self.worst_relative_drift, "changed_files": self.changed_files,
                "results": [{**asdict(r), "difference": r.difference, "passed": r.passed} for r in self.results]}


def run_check(baseline: Baseline, *, checkpoints: list[Path] = (), device: str = "auto", memory: str = "auto",
              observer: Observer | None = None) -> CheckReport:
    """Recompute the figures of the baseline's checkpoints (all, or ``checkpoints``) with its settings and seeds,
    never from the cache (a code change must show), and compare them with the recorded ones."""
    from .cache import NoCache
    from .tables import evaluate_row

    observer = observer or Observer()
    entries = baseline.select(checkpoints)
    settings, rho, tau, floor = baseline.settings(device=device, memory=memory)
    rules, explicit = baseline.tolerance_rules()
    observer.items(len(entries))
    results, recorded = [], {}
    start = time.perf_counter()
    for entry in entries:
        row, _ = evaluate_row(Path(entry["path"]), settings, rho=rho, tau=tau, sigma_floor=floor, cache=NoCache(),
                              observer=observer)
        now = metrics_of(row)
        recorded[entry["path"]] = (row.sha256, now)
        if entry["metrics"]:
            results += compare(entry, now, rules, explicit)
        observer.item(Path(entry["path"]).name)
    changed = [e["path"] for e in entries if e.get("sha256") and e["sha256"] != recorded[e["path"]][0]]
    return CheckReport(results, recorded, changed, time.perf_counter() - start, len(entries))


# ---------------------------------------------------------------- a committed table1.json kept true

TABLE_CELL_RTOL = 1e-6  # exact cells: same code, same data, same checkpoint reproduce to ~1e-12


def table_cells_to_verify(cells: list[dict], count: int) -> list[dict]:
    """Up to ``count`` exact cells of a table, one per model first (the first checkpoint of each model by
    name), so that every architecture is exercised before any repeats.

    >>> cells = [{"checkpoint": n, "model": n[0], "method": "exact"} for n in ("a2", "a1", "b1", "c1")]
    >>> [c["checkpoint"] for c in table_cells_to_verify(cells, 2)]
    ['a1', 'b1']
    """
    exact = sorted((c for c in cells if c.get("method") == "exact"), key=lambda c: c["checkpoint"])
    models = set()
    firsts = [c for c in exact if not (c["model"] in models or models.add(c["model"]))]
    rest = [c for c in exact if all(c is not f for f in firsts)]
    return (firsts + rest)[:max(count, 0)]


def verify_table(path: Path, *, cells: int = 4, device: str = "auto", memory: str = "auto",
                 observer: Observer | None = None) -> CheckReport:
    """Check that a committed ``table1.json`` is what this code computes: the release that made it is this one,
    every cell's checkpoint is the file it was made from (SHA-256), and ``cells`` exact cells (one per model
    first) recomputed now, never from the cache, give the same err/d, top eigenvalue and test accuracy
    (relative TABLE_CELL_RTOL). Each comparison is a :class:`Comparison` (release and files as 0/1 metrics)."""
    from ._version import __version__
    from .cache import NoCache
    from .io_utils import sha256_file
    from .spectrum import SpectrumSettings
    from .tables import evaluate_row

    observer = observer or Observer()
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        recorded = data["settings"]
        cells_json = data["cells"]
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise WdboundError(f"{path}: not a wdbound table1.json ({str(exc).splitlines()[0][:100]})", "table") from None
    start = time.perf_counter()
    made = data.get("made_by") or {}
    results = [Comparison(str(path), f"made by wdbound {made.get('wdbound', '(unstamped)')}", 1.0,
                          float(made.get("wdbound") == __version__), 0.0, f"this is wdbound {__version__}")]
    for cell in cells_json:
        file = Path(cell.get("path") or "")
        same = file.is_file() and sha256_file(file) == cell.get("sha256")
        if not same:
            results.append(Comparison(str(file), "sha256", 1.0, 0.0, 0.0, "checkpoint missing or changed"))
    try:
        settings = SpectrumSettings(**{**recorded["spectrum"], "device": device, "memory": memory})
        settings.validate()
    except (TypeError, WdboundError) as exc:
        raise WdboundError(f"{path}: unusable settings ({exc})", "table") from None
    chosen = table_cells_to_verify(cells_json, cells)
    observer.items(len(chosen))
    for cell in chosen:
        rho = recorded.get("rho")
        row, _ = evaluate_row(Path(cell["path"]), settings, rho=rho if isinstance(rho, (int, float)) else None,
                              tau=float(recorded["tau"]), sigma_floor=float(recorded["sigma_floor"]),
                              exact_mode=recorded.get("exact", "auto"), cache=NoCache(), observer=observer)
        now = {"err_mean": row.err_mean, "top_eigenvalue": row.top_eigenvalue, "test_acc": row.test_acc}
        for metric, value in now.items():
            base = float(cell.get(metric) if cell.get(metric) is not None else math.nan)
            results.append(Comparison(cell["path"], metric, base, float(value if value is not None else math.nan),
                                      TABLE_CELL_RTOL * abs(base), "rel"))
        observer.item(Path(cell["path"]).name)
    return CheckReport(results, {}, [], time.perf_counter() - start, len(chosen))
