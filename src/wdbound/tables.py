"""Table I of Zhou et al. (TPAMI 2024) on the user's checkpoints: layout, findings and every output format.

Each checkpoint is evaluated with the form of the optimizer that trained it
(docs/maths.md, "Table I"): err_AdamW on AdamW(-D) checkpoints, err_l2-Adam on
l2-Adam(-D) checkpoints, each with its own Hessian, η and λ. Checkpoints are
grouped by (model, epochs); each group is a column pair "AdamW / AdamW-D"
beside "l2-Adam / l2-Adam-D", each cell "constant / decaying", rows "err in
bound" (err/d, the paper's scale) and "test acc. (%)". A missing partner is "—".

:func:`run_table` evaluates the checkpoints (one :class:`TableRow` each) and
:func:`build_report` turns rows into a :class:`TableReport`: layout, findings,
every output format and the files (:meth:`TableReport.write`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import defaults
from .analysis import BoundFigures, Refinement, bound_inputs, evaluate
from .bounds import BoundInputs
from .checkpoints import load_checkpoint
from .curvature import resolve_dtype
from .errors import Interrupted, WdboundError, about
from .estimators.lanczos import Support
from .optim import bound_form
from .progress import Observer
from .provenance import made_by, stamp
from .runs import RunSpec
from .spectrum import EXACT_MODES, Spectrum, SpectrumSettings, resolve_exact

DASH = "—"
FAMILY_TITLES = {"adamw": "AdamW / AdamW-D", "l2-adam": "l2-Adam / l2-Adam-D"}
VARIANTS = ("constant", "decaying")

# The paper's Table I (ImageNet), as printed (docs/maths.md).
PAPER = [
    {"model": "ResNet18", "epochs": 90, "adamw": ((3.43, 3.40), (67.9, 70.1)), "l2-adam": ((3.85, 3.82), (67.2, 67.4))},
    {"model": "ResNet50", "epochs": 100, "adamw": ((3.42, 3.41), (77.0, 77.1)), "l2-adam": ((3.78, 3.77), (76.5, 76.4))},
    {"model": "ViT-small", "epochs": 100, "adamw": ((3.62, 3.63), (76.1, 75.9)), "l2-adam": ((3.75, 3.76), (75.3, 75.4))},
    {"model": "ViT-small", "epochs": 200, "adamw": ((3.58, 3.57), (79.2, 79.3)), "l2-adam": ((3.72, 3.71), (77.6, 77.7))},
    {"model": "ViT-small", "epochs": 300, "adamw": ((3.47, 3.45), (79.8, 80.0)), "l2-adam": ((3.70, 3.69), (78.5, 78.6))},
]

CSV_FIELDS = ["checkpoint", "model", "epochs", "optimizer", "family", "variant", "form", "d", "n", "b", "eta", "lam",
              "update_iqr_log2",
              "rho", "tau", "sigma_floor", "method", "err_mean", "err_mean_low", "err_mean_high", "err_mean_stderr",
              "err_mean_quadrature_change", "err_sum",
              "err_sum_stderr", "phi", "mass_below_floor", "zero_rows", "test_acc", "test_loss", "top_eigenvalue",
              "trace", "trace_stderr", "probes", "steps", "seed", "dtype", "split", "hvps", "cached", "sha256"]


def model_label(arch: str, arch_kwargs: dict | None) -> str:
    """``digits-mlp`` or ``digits-mlp(depth=8)``: the arch plus every kwarg but the class count."""
    extra = {k: v for k, v in (arch_kwargs or {}).items() if k != "num_classes"}
    return arch + (f"({', '.join(f'{k}={v}' for k, v in sorted(extra.items()))})" if extra else "")


def update_spread(meta: dict, path) -> float | None:
    """Interquartile range (log2 units) of the update-magnitude histogram from the saved optimizer state."""
    from .updates import checkpoint_histograms, stats, total_counts

    try:
        return stats(total_counts(checkpoint_histograms(meta, str(path)))).iqr_log2
    except WdboundError:
        return None


@dataclass(frozen=True)
class TableRow:
    """One checkpoint of the table: what it is, its spectrum's headline figures, and the bound figures of
    the form of the optimizer that trained it (``figures`` is None for an optimizer without a bound form).
    ``to_json`` is a cell of ``table1.json`` and a line of ``table1.csv``."""

    checkpoint: str  # file name
    model: str  # model_label(): architecture and its non-default arguments
    epochs: int
    optimizer: str
    family: str | None = None  # "adamw" / "l2-adam" for Table I's optimizers (family_variant)
    variant: str | None = None  # "constant" / "decaying"
    form: str | None = None  # bound form of the optimizer (optim.bound_form)
    test_acc: float | None = None
    test_loss: float | None = None
    update_iqr_log2: float | None = None
    path: str = ""
    sha256: str = ""
    top_eigenvalue: float = math.nan
    top_residual: float = math.nan  # Lanczos residual bound of the top eigenvalue
    trace: float = math.nan
    trace_stderr: float = math.nan
    probes: int = 0
    steps: int = 0
    seed: int = 0
    dtype: str = "float64"
    split: str = "test"
    hvps: int = 0  # spent in this process (0: from the cache)
    cached: bool = False
    inputs: BoundInputs | None = None
    spectrum_provenance: dict = field(default_factory=dict)
    figures: BoundFigures | None = None
    refinement: Refinement | None = None
    test_acc_source: str = "recorded"  # recorded in the checkpoint, runs file, measured on the test split, none
    top_steps: int = 0  # Lanczos steps (HVPs) of the top eigenvalue's run (0: from the dense Hessian)
    support: Support | None = None  # the spectrum's ends the err/d interval used, and the steps they took

    @property
    def err_mean(self) -> float | None:
        """err/d of the row's own form (None without a bound form)."""
        return self.figures.err_mean if self.figures is not None else None

    @property
    def method(self) -> str | None:
        """``exact`` or ``slq`` (None without a bound form)."""
        return self.figures.method if self.figures is not None else None

    @property
    def err_interval(self) -> tuple[float, float]:
        """The err/d interval (covers the exact value; a point when exact)."""
        return self.figures.interval

    def to_json(self) -> dict:
        """The flat cell of ``table1.json``: the row's facts, the bound inputs and every bound figure."""
        out = {"checkpoint": self.checkpoint, "path": self.path, "sha256": self.sha256, "model": self.model,
               "epochs": self.epochs, "optimizer": self.optimizer, "family": self.family, "variant": self.variant,
               "form": self.form, "test_acc": self.test_acc, "test_acc_source": self.test_acc_source,
               "test_loss": self.test_loss,
               "update_iqr_log2": self.update_iqr_log2, "top_eigenvalue": self.top_eigenvalue,
               "top_residual": self.top_residual, "trace": self.trace, "trace_stderr": self.trace_stderr,
               "probes": self.probes, "steps": self.steps, "seed": self.seed, "dtype": self.dtype,
               "split": self.split, "hvps": self.hvps, "cached": self.cached, "top_steps": self.top_steps,
               "support": self.support.to_json() if self.support is not None else None,
               **(self.inputs.to_json() if self.inputs is not None else {}),
               "spectrum_provenance": self.spectrum_provenance}
        if self.figures is not None:  # the refined run's probes / steps replace the settings' (SLQ)
            low, high = self.err_interval
            out.update(self.figures.to_json(), err_mean_low=low, err_mean_high=high,
                       refinement=self.refinement.to_json() if self.refinement else None)
        return out


def measured_accuracy(ckpt, settings: SpectrumSettings) -> tuple[float, float] | None:
    """(accuracy, mean cross-entropy) of ``ckpt``'s model on the test split of its evaluation data (what a
    plain state_dict does not record); None when the labels are not class indices."""
    import torch
    from torch.nn import functional as F

    from .curvature import resolve_device
    from .data import iterate_batches, load_dataset
    from .models import image_size
    from .spectrum import evaluation_data

    dataset = load_dataset(evaluation_data(ckpt, settings), "test",
                           image_size(ckpt.meta["arch"], ckpt.meta.get("arch_kwargs")))
    device = resolve_device(settings.device)
    model = ckpt.model.to(device)
    correct, loss, total = 0, 0.0, 0
    with torch.no_grad():
        for inputs, labels in iterate_batches(dataset, 256):
            if labels.is_floating_point():
                return None
            outputs = model(inputs.to(device, next(model.parameters()).dtype)).float()
            labels = labels.to(device)
            correct += int((outputs.argmax(1) == labels).sum())
            loss += float(F.cross_entropy(outputs, labels, reduction="sum"))
            total += labels.shape[0]
    return (correct / total, loss / total) if total else None


def evaluate_row(path: "Path | RunSpec", settings: SpectrumSettings, *, rho: float | None, tau: float,
                 sigma_floor: float, exact_mode: str | None = None, cache=None,
                 observer: Observer | None = None, fsdp: bool = False) -> tuple[TableRow, Spectrum | None]:
    """One checkpoint's Table I figures (Corollary 3 of its own form) and its spectrum. ``path`` is a checkpoint
    file or a :class:`wdbound.runs.RunSpec` (a file plus what a plain state_dict does not record: architecture,
    training rule, η, λ, b, n, epochs, label, accuracy). ``exact_mode`` (auto / on / off) decides per
    checkpoint whether the dense spectrum is used; None keeps ``settings.exact``. A checkpoint that records no
    test accuracy gets the one measured on the test split of its evaluation data. ``fsdp``: the model sharded
    over the torchrun processes (:func:`_sharded_row`; no spectrum is returned)."""
    run = path if isinstance(path, RunSpec) else RunSpec(Path(path))
    path = run.path
    ckpt = load_checkpoint(path, arch=run.resolved_arch(), arch_kwargs=run.arch_kwargs if run.arch_kwargs is not None
                           else ({} if run.model_factory else None), lr=run.lr, wd=run.wd,
                           batch_size=run.batch_size, n_train=run.n_train, dtype=resolve_dtype(settings.dtype),
                           optimizer=run.optimizer, epochs=run.epochs)
    name = ckpt.optimizer_name or "unknown"
    family, variant = family_variant(name)
    form = bound_form(name)
    inputs = bound_inputs(ckpt, rho=rho, tau=tau, sigma_floor=sigma_floor)
    train_meta, metrics = ckpt.meta.get("train") or {}, ckpt.meta.get("metrics") or {}
    acc, loss, source = metrics.get("test_acc"), metrics.get("test_loss"), "recorded"
    if run.test_acc is not None:
        acc, loss, source = run.test_acc, None, "runs file"
    elif acc is None:
        measured = measured_accuracy(ckpt, settings)
        acc, loss, source = (*measured, "measured on the test split") if measured else (None, None, "none")
    facts = (Path(path).name, run.label or model_label(ckpt.meta["arch"], ckpt.meta.get("arch_kwargs")),
             train_meta.get("epochs", 0), name, family, variant, form, acc, loss, update_spread(ckpt.meta, path),
             str(path), ckpt.sha256)
    if fsdp:
        return _sharded_row(ckpt, replace(settings, exact=False), inputs, facts, source, observer), None
    if exact_mode is not None:
        settings = replace(settings, exact=resolve_exact(exact_mode, inputs.d))
    evaluation = evaluate(ckpt, settings, inputs, [form] if form is not None else [], theorem=False, cache=cache,
                          observer=observer, label=Path(path).name)
    spectrum = evaluation.spectrum
    row = TableRow(*facts, float(spectrum.top.values[0]), float(spectrum.top.residuals[0]), spectrum.trace.estimate,
                   spectrum.trace.stderr, settings.probes, settings.for_dim(spectrum.d).steps, settings.seed,
                   settings.dtype,
                   settings.split, evaluation.analysis.hvps, spectrum.cached, inputs, spectrum.provenance,
                   evaluation.figures.get(form), evaluation.analysis.refinement if form is not None else None,
                   source, int(spectrum.top.steps), spectrum.support)
    return row, spectrum


def _sharded_row(ckpt, settings: SpectrumSettings, inputs: BoundInputs, facts: tuple, source: str,
                 observer: Observer | None) -> TableRow:
    """The row of a checkpoint sharded over the torchrun processes (``table --fsdp``): err/d of its own form from
    :func:`wdbound.fsdp.sharded_err` at the table's probes and steps, its interval widened for the
    finite-difference HVPs' error; the top eigenvalue and the trace are not computed (NaN), the support is the
    sharded density run's."""
    from .fsdp import expected_sharded_hvps, sharded_err

    observer = observer or Observer()
    name, form = facts[0], facts[6]  # TableRow's checkpoint and form
    observer.start(name, expected_sharded_hvps(settings, inputs.d, "err"))
    report = sharded_err(ckpt, settings, inputs, [form] if form is not None else [], observer.hvps)
    observer.done(report.run.hvps)
    resolved = settings.for_dim(inputs.d)  # the probes and steps sharded_err ran
    figures = report.errs[0].figures(inputs.d) if report.errs else None
    support = Support(*report.errs[0].support, resolved.steps, "sharded density run") if report.errs else None
    return TableRow(*facts, math.nan, math.nan, math.nan, math.nan, resolved.probes, resolved.steps, settings.seed,
                    settings.dtype, settings.split, report.run.hvps, False, inputs, report.run.to_json(), figures,
                    None, source, 0, support)


def all_optimizers_grid(rows: list[TableRow]) -> tuple[list[str], list[list[str]]]:
    """One line per checkpoint, grouped by (model, epochs): optimizer, bound form, err/d, accuracy, update spread."""
    header = ["model, epochs", "optimizer", "bound form", "err/d", "test acc. (%)", "update IQR (log2)"]
    body = []
    for row in sorted(rows, key=lambda r: (r.model, int(r.epochs), r.optimizer)):
        spread = row.update_iqr_log2
        body.append([f"{row.model}, {row.epochs} ep", row.optimizer, row.form or DASH, _err_cell(row),
                     DASH if row.test_acc is None else _acc(row.test_acc),
                     DASH if spread is None or _nan(spread) else f"{spread:.2f}"])
    return header, body


def _err_cell(row: TableRow) -> str:
    """err/d of a row: '—', 'v (exact)' or 'v [low, high]'."""
    if row.err_mean is None:
        return DASH
    if row.method == "exact":
        return f"{row.err_mean:.3f} (exact)"
    return _with_interval(row.err_mean, row.err_interval)


def family_variant(optimizer: str) -> tuple[str | None, str | None]:
    """adamw-d -> ("adamw", "decaying"); an optimizer outside Table I -> (None, None)."""
    base, decaying = (optimizer[:-2], True) if optimizer.endswith("-d") else (optimizer, False)
    if base not in FAMILY_TITLES:
        return None, None
    return base, "decaying" if decaying else "constant"


@dataclass
class Layout:
    """The rows placed in Table I's grid."""

    groups: list[tuple[str, int]]  # (model, epochs), sorted
    cells: dict[tuple[str, int, str, str], TableRow]  # (model, epochs, family, variant) -> row
    outside: list[TableRow]  # rows of optimizers Table I has no column for
    duplicates: list[TableRow]  # second checkpoints for an occupied cell (kept in the CSV, not in the table)


def layout(rows: list[TableRow]) -> Layout:
    """Place each row in its (model, epochs, family, variant) cell; the rest go to ``outside`` / ``duplicates``."""
    cells: dict = {}
    outside, duplicates = [], []
    for row in rows:
        family, variant = family_variant(row.optimizer)
        if family is None:
            outside.append(row)
            continue
        key = (row.model, int(row.epochs), family, variant)
        if key in cells:
            duplicates.append(row)
        else:
            cells[key] = row
    groups = sorted({(m, e) for m, e, _, _ in cells}, key=lambda g: (g[0], g[1]))
    return Layout(groups, cells, outside, duplicates)


def _pair(layout_: Layout, group, family: str, key: str, fmt) -> str:
    values = []
    for variant in VARIANTS:
        row = layout_.cells.get((*group, family, variant))
        value = None if row is None else getattr(row, key)
        values.append(DASH if value is None or _nan(value) else fmt(value))
    return " / ".join(values)


def _nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _err(v: float) -> str:
    return f"{v:.3f}"


def _acc(v: float) -> str:
    return f"{100 * v:.1f}"


def grid(layout_: Layout) -> tuple[list[str], list[list[str]]]:
    """Header and the two rows of Table I (the paper layout)."""
    header = [""]
    for model, epochs in layout_.groups:
        for family in FAMILY_TITLES:
            header.append(f"{model}, {epochs} ep: {FAMILY_TITLES[family]}")
    err_row, acc_row = ["err in bound (err/d)"], ["test acc. (%)"]
    for group in layout_.groups:
        for family in FAMILY_TITLES:
            err_row.append(_pair(layout_, group, family, "err_mean", _err))
            acc_row.append(_pair(layout_, group, family, "test_acc", _acc))
    return header, [err_row, acc_row]


def paper_grid() -> tuple[list[str], list[list[str]]]:
    """Header and rows of the paper's own Table I (ImageNet), as printed."""
    header = [""]
    err_row, acc_row = ["err in bound"], ["test acc. (%)"]
    for entry in PAPER:
        for family in FAMILY_TITLES:
            header.append(f"{entry['model']}, {entry['epochs']} ep: {FAMILY_TITLES[family]}")
            (e_c, e_d), (a_c, a_d) = entry[family]
            err_row.append(f"{e_c:.2f} / {e_d:.2f}")
            acc_row.append(f"{a_c:.1f} / {a_d:.1f}")
    return header, [err_row, acc_row]


@dataclass(frozen=True)
class Finding:
    """One comparison of Table I: in a (model, epochs) group and a weight-decay ``variant``, the AdamW-trained
    checkpoint's err/d (AdamW form) against the l2-Adam-trained one's (l2-Adam form), and their accuracies.
    ``adamw`` / ``l2`` is None when that checkpoint is missing; then nothing is compared (every verdict None).
    A verdict is resolved only when both cells are exact or their err/d intervals are disjoint (each interval
    covers its exact value: docs/intervals.md)."""

    model: str
    epochs: int
    variant: str  # "constant" / "decaying"
    adamw: TableRow | None = None
    l2: TableRow | None = None

    @property
    def paired(self) -> bool:
        """Both checkpoints are there (and both have a bound form)."""
        return self.adamw is not None and self.l2 is not None

    @property
    def err_gap(self) -> float | None:
        """err_l2-Adam − err_AdamW (err/d; positive: the paper's finding)."""
        return self.l2.err_mean - self.adamw.err_mean if self.paired else None

    @property
    def err_holds(self) -> bool | None:
        """err_AdamW < err_l2-Adam, on the estimates."""
        return bool(self.err_gap > 0) if self.paired else None

    @property
    def exact(self) -> bool:
        """Both cells come from dense Hessians (points, no interval)."""
        return self.paired and self.adamw.method == "exact" and self.l2.method == "exact"

    @property
    def err_resolved(self) -> bool | None:
        """The two err/d intervals are disjoint, so the sign of the gap is that of the exact values."""
        if not self.paired:
            return None
        (a_lo, a_hi), (l_lo, l_hi) = self.adamw.err_interval, self.l2.err_interval
        return bool(a_hi < l_lo or l_hi < a_lo)

    @property
    def acc_holds(self) -> bool | None:
        """AdamW's test accuracy reaches l2-Adam's (None when either accuracy is unknown)."""
        if not self.paired or self.adamw.test_acc is None or self.l2.test_acc is None:
            return None
        return bool(self.adamw.test_acc >= self.l2.test_acc)

    def to_json(self) -> dict:
        """An entry of ``table1.json``'s ``findings``."""
        entry = {"model": self.model, "epochs": self.epochs, "variant": self.variant}
        if not self.paired:
            return {**entry, "err_holds": None, "acc_holds": None}
        return {**entry, "err_adamw": self.adamw.err_mean, "err_l2": self.l2.err_mean, "err_gap": self.err_gap,
                "err_adamw_interval": list(self.adamw.err_interval), "err_l2_interval": list(self.l2.err_interval),
                "exact": self.exact, "err_holds": self.err_holds, "err_resolved": self.err_resolved,
                "acc_adamw": self.adamw.test_acc, "acc_l2": self.l2.test_acc, "acc_holds": self.acc_holds}


def findings(layout_: Layout) -> list[Finding]:
    """Every Table I comparison of the layout: per (model, epochs) group and variant, one :class:`Finding`."""
    return [Finding(model, epochs, variant, layout_.cells.get((model, epochs, "adamw", variant)),
                    layout_.cells.get((model, epochs, "l2-adam", variant)))
            for model, epochs in layout_.groups for variant in VARIANTS]


def finding_lines(found: list[Finding]) -> list[str]:
    """One sentence per finding: does err_AdamW < err_l2-Adam hold, is it resolved, and the accuracies."""
    lines = []
    for f in found:
        head = f"{f.model}, {f.epochs} ep, {f.variant}:"
        if not f.paired:
            lines.append(f"{head} partner missing, no comparison")
            continue
        verdict = "holds" if f.err_holds else "does NOT hold"
        if f.exact:
            how = "exact spectra"
        else:
            how = ("intervals disjoint: resolved" if f.err_resolved
                   else "intervals overlap: NOT resolved by these settings")
        if f.acc_holds is None:
            acc = "acc not known for both (labels are not class indices)"
        else:
            acc = (f"acc AdamW >= l2-Adam {'holds' if f.acc_holds else 'does NOT hold'} "
                   f"({_acc(f.adamw.test_acc)} vs {_acc(f.l2.test_acc)})")
        lines.append(f"{head} err_AdamW < err_l2-Adam {verdict} ({_with_interval(f.adamw.err_mean, f.adamw.err_interval)}"
                     f" vs {_with_interval(f.l2.err_mean, f.l2.err_interval)}, "
                     f"gap {f.err_gap:+.3f}; {how}); {acc}")
    return lines


def _with_interval(value: float, interval) -> str:
    if interval is None or interval[0] == interval[1]:
        return f"{value:.3f}"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def exactness_line(rows: list[TableRow]) -> str:
    """Which cells are exact (dense Hessian) and which are SLQ with intervals."""
    exact = [r.checkpoint for r in rows if r.method == "exact"]
    slq = [r.checkpoint for r in rows if r.method == "slq"]
    if exact and not slq:
        return f"Every err/d above is exact (dense Hessian eigenvalues; {len(exact)} checkpoints)."
    if slq and not exact:
        return f"Every err/d above is SLQ with an interval covering the exact value ({len(slq)} checkpoints)."
    return (f"Exact (dense Hessian): {', '.join(exact) or 'none'}. SLQ with intervals: {', '.join(slq) or 'none'}.")


def summary_counts(found: list[Finding]) -> str:
    """One sentence: how many comparisons hold, and how many of those are resolved (exact or disjoint)."""
    pairs = [f for f in found if f.paired]
    resolved = [f for f in pairs if f.exact or f.err_resolved]
    known = [f for f in pairs if f.acc_holds is not None]
    return (f"err_AdamW < err_l2-Adam holds in {sum(f.err_holds for f in pairs)} of {len(pairs)} cell pairs; "
            f"{len(resolved)} of {len(pairs)} are resolved ({sum(f.exact for f in pairs)} from exact spectra), "
            f"of which {sum(f.err_holds for f in resolved)} hold. "
            f"Accuracy AdamW >= l2-Adam holds in {sum(f.acc_holds for f in known)} of {len(known)}.")


LONG_COLUMNS = (("adamw", "constant", "AdamW"), ("adamw", "decaying", "AdamW-D"), ("l2-adam", "constant", "l2-Adam"),
                ("l2-adam", "decaying", "l2-Adam-D"))


def long_grid(layout_: Layout) -> tuple[list[str], list[list[str]]]:
    """One row per (model, epochs); per optimizer: err/d with its interval (or 'exact') and the test accuracy."""
    header = ["model, epochs"] + [title for _, _, title in LONG_COLUMNS]
    rows = []
    for group in layout_.groups:
        row = [f"{group[0]}, {group[1]} ep"]
        for family, variant, _ in LONG_COLUMNS:
            cell = layout_.cells.get((*group, family, variant))
            if cell is None or cell.err_mean is None:
                row.append(DASH)
                continue
            row.append(f"{_err_cell(cell)}; {DASH if cell.test_acc is None else _acc(cell.test_acc) + '%'}")
        rows.append(row)
    return header, rows


LAYOUTS = ("auto", "long", "paper")


def resolve_layout(name: str, layout_: Layout) -> str:
    """``auto``: long when there are more than three (model, epochs) groups, else the paper's."""
    if name not in LAYOUTS:
        from .errors import WdboundError

        raise WdboundError(f"unknown layout {name!r}; use auto, long or paper", "layout")
    if name == "auto":
        return "long" if len(layout_.groups) > 3 else "paper"
    return name


# ---------------------------------------------------------------- formats

def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(layout_: Layout, found: list[Finding], settings_line: str, failures: list[str], note: str = "",
             layout_name: str = "paper") -> str:
    """``table1.md``: the table in ``layout_name``, the settings, the findings, every optimizer (when some are
    outside Table I), failures and the paper's table for comparison."""
    header, rows = long_grid(layout_) if layout_name == "long" else grid(layout_)
    p_header, p_rows = paper_grid()
    intro = ("One row per (model, epochs); each cell is err/d [interval] (or exact) and the test accuracy."
             if layout_name == "long" else
             "Each cell is *constant / decaying* weight decay (AdamW / AdamW-D, l2-Adam / l2-Adam-D).")
    parts = ["# Table I on these checkpoints", "",
             intro + " err in bound = err/d of Corollary 3, evaluated with the form of the optimizer that trained "
             "the checkpoint (its own Hessian, eta and lambda). — = no checkpoint. '(exact)': from the dense "
             "Hessian's eigenvalues; otherwise SLQ with an interval that covers the exact value.", ""]
    parts += [_md_table(header, rows) if layout_.groups else "(no checkpoint of a Table I optimizer)", ""]
    parts += [settings_line, "", exactness_line(list(layout_.cells.values()) + layout_.outside), ""]
    if note:
        parts += [note, ""]
    parts += ["## Does the paper's finding hold here?", "",
              "A comparison is resolved when both cells are exact, or when the two err/d intervals are disjoint "
              "(each interval covers its exact value: docs/intervals.md).", "", summary_counts(found), ""]
    parts += [f"- {line}" for line in finding_lines(found)] + [""]
    rows = list(layout_.cells.values()) + layout_.outside + layout_.duplicates
    if layout_.outside:
        a_header, a_rows = all_optimizers_grid(rows)
        parts += ["## Every optimizer", "",
                  "Each checkpoint with the bound form of its optimizer (the AdamW form for decay outside the "
                  "adaptive step: AdamW, AdamProx, AdamS; the l2-Adam form for decay through the gradient: "
                  "l2-Adam, AdaL), its test accuracy and the spread of its update magnitudes.", "",
                  _md_table(a_header, a_rows), ""]
    if failures:
        parts += ["## Failed checkpoints", ""] + [f"- {line}" for line in failures] + [""]
    parts += ["## The paper's Table I (Zhou et al., TPAMI 2024; ImageNet) — for comparison, not computed here", "",
              _md_table(p_header, p_rows), ""]
    return "\n".join(parts)


def to_csv(rows: list[TableRow], made: dict | None = None) -> str:
    """``table1.csv``: one line per row, the columns of CSV_FIELDS (empty where a row has no value), the last
    two the release and commit that made it (:func:`wdbound.provenance.made_by`); written by pandas."""
    import pandas as pd

    made = made or {}
    commit = (made.get("commit") or "") + ("+dirty" if made.get("commit") and made.get("dirty") else "")
    fields = CSV_FIELDS + ["wdbound_version", "commit"]
    # Object columns keep each value as Python wrote it (an int stays 64, not 64.0, beside an empty cell); a
    # missing value is an empty cell, a NaN figure stays "nan".
    cells = [{**row.to_json(), "wdbound_version": made.get("wdbound"), "commit": commit} for row in rows]
    frame = pd.DataFrame([{k: ("" if cell.get(k) is None else cell.get(k)) for k in fields} for cell in cells],
                         columns=fields, dtype=object)
    return frame.to_csv(index=False, na_rep="nan", lineterminator="\n")


TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
               "{": r"\{", "}": r"\}", "—": "---", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex_escape(text: str) -> str:
    return "".join(TEX_ESCAPES.get(ch, ch) for ch in text)


def latex(layout_: Layout) -> str:
    """A booktabs table in Table I's layout (needs \\usepackage{booktabs})."""
    header, rows = grid(layout_)
    n = len(header) - 1
    lines = [r"\begin{tabular}{l" + "c" * n + "}", r"\toprule"]
    if layout_.groups:
        top = [""] + [rf"\multicolumn{{2}}{{c}}{{{_tex_escape(m)}, {e} ep}}" for m, e in layout_.groups]
        lines.append(" & ".join(top) + r" \\")
        rules = " ".join(rf"\cmidrule(lr){{{2 + 2 * i}-{3 + 2 * i}}}" for i in range(len(layout_.groups)))
        lines.append(rules)
        sub = [""] + [_tex_escape(FAMILY_TITLES[f]) for _ in layout_.groups for f in FAMILY_TITLES]
        lines.append(" & ".join(sub) + r" \\")
    lines.append(r"\midrule")
    for row in rows:
        lines.append(" & ".join(_tex_escape(cell) for cell in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- the whole table

TABLE_FORMATS = ("md", "csv", "tex")


@dataclass(frozen=True)
class TableSettings:
    """Every choice of ``wdbound table`` besides the checkpoints."""

    spectrum: SpectrumSettings
    rho: float | None = None  # None: 1/sqrt(input dimension)
    tau: float = defaults.TAU
    sigma_floor: float = defaults.SIGMA_FLOOR
    exact: str = "auto"  # per checkpoint: auto (d <= EXACT_AUTO_MAX_DIM), on, off
    layout: str = "auto"  # markdown layout: auto, long, paper
    formats: tuple[str, ...] = TABLE_FORMATS  # text formats besides the JSON
    plots: bool = True
    fsdp: bool = False  # under torchrun: each model sharded over the processes (finite-difference HVPs, SLQ only)

    def validate(self) -> None:
        """Raise a one-line error for an unknown format, exactness mode or layout, or ``fsdp`` outside torchrun
        or with ``exact`` on (before any work)."""
        bad = [f for f in self.formats if f not in TABLE_FORMATS]
        if bad:
            raise WdboundError(f"unknown table format {', '.join(bad)}; use a comma-separated subset of md, csv, tex",
                               "format")
        if self.exact not in EXACT_MODES:
            raise WdboundError(f"unknown exact mode {self.exact!r}; use auto, on or off", "exact")
        if self.layout not in LAYOUTS:
            raise WdboundError(f"unknown layout {self.layout!r}; use auto, long or paper", "layout")
        self.spectrum.validate()
        if self.fsdp:
            from .fsdp import require_torchrun

            if self.exact == "on":
                raise WdboundError("--fsdp gives err/d by SLQ on finite-difference HVPs: --exact on is not "
                                   "supported there", "fsdp")
            require_torchrun()

    def to_json(self) -> dict:
        """The ``settings`` of ``table1.json`` (``layout`` is the one used, filled in by the report)."""
        return {"spectrum": self.spectrum.__dict__, "rho": self.rho if self.rho is not None else "1/sqrt(input dim)",
                "tau": self.tau, "sigma_floor": self.sigma_floor, "exact": self.exact, "fsdp": self.fsdp}


TABLE_SPECTRUM = dict(top_k=1, diagonal="hutchinson", probes=defaults.TABLE_PROBES, steps=defaults.TABLE_STEPS)


def table_settings(*, rho: float | None = None, tau: float = defaults.TAU, sigma_floor: float = defaults.SIGMA_FLOOR,
                   exact: str = "auto", layout: str = "auto", formats=TABLE_FORMATS, plots: bool = True,
                   fsdp: bool = False, **spectrum) -> TableSettings:
    """The validated settings of a table: ``wdbound table``'s defaults (the one owner, read by the CLI and
    :func:`wdbound.tables`), with ``spectrum`` any :class:`~wdbound.spectrum.SpectrumSettings` field (``probes``,
    ``steps``, ``data``, ``max_samples``, ``dtype``, ...)."""
    settings = TableSettings(SpectrumSettings(**{**TABLE_SPECTRUM, **spectrum}), rho, tau, sigma_floor, exact,
                             layout, tuple(formats), plots, fsdp)
    settings.validate()
    return settings


def table_items(paths=(), runs=None, **shared) -> list[RunSpec]:
    """What a table evaluates: each checkpoint under ``paths`` (files or folders) and each row of the runs file
    ``runs``, with ``shared`` (arch, arch_kwargs, model_factory, optimizer, lr, wd, batch_size, n_train,
    epochs: :class:`~wdbound.runs.RunSpec` fields) filling what a file or row leaves empty."""
    from .checkpoints import checkpoint_paths
    from .runs import read_runs

    if shared.get("arch") is not None and shared.get("model_factory") is not None:
        raise WdboundError("give either arch or a model factory, not both", "model_factory")
    if not paths and runs is None:
        raise WdboundError("name checkpoints (or a folder of them) or a runs file", "paths")
    base = RunSpec(Path(), **shared)
    items = [RunSpec(p).with_defaults(base) for p in checkpoint_paths(list(paths))] if paths else []
    return items + [run.with_defaults(base) for run in (read_runs(runs) if runs is not None else [])]


@dataclass(frozen=True)
class TableReport:
    """A finished (or interrupted) table: its rows and spectra, what failed, and everything derived."""

    rows: list[TableRow]
    spectra: list[tuple[TableRow, Spectrum]]
    failures: list[str]  # "<file>: <one-line error>"
    interrupted: int  # 0, or the exit code of the signal that stopped it (130 / 143)
    checkpoints: int  # how many were asked for
    wall_seconds: float
    settings: TableSettings
    layout: Layout
    findings: list[Finding]
    layout_used: str
    made_by: dict = field(default_factory=dict)  # provenance.made_by(): release and commit of the code

    def grid(self) -> tuple[list[str], list[list[str]]]:
        """Header and rows of the table in the layout used."""
        return long_grid(self.layout) if self.layout_used == "long" else grid(self.layout)

    def settings_line(self) -> str:
        """The sentence under the table that says how every cell was computed."""
        s = self.settings.spectrum
        exact = [r for r in self.rows if r.method == "exact"]
        slq = [r for r in self.rows if r.method == "slq"]
        widest = (f"; widest SLQ err/d interval +/- "
                  f"{max((r.err_interval[1] - r.err_interval[0]) / 2 for r in slq):.3g}" if slq else "")
        rho = '1/sqrt(input dim)' if self.settings.rho is None else f'{self.settings.rho:g}'
        return (f"Settings: {s.split} split, --exact {self.settings.exact} ({len(exact)} of {len(self.rows)} "
                f"checkpoints exact: d <= {defaults.EXACT_AUTO_MAX_DIM:,} under auto), SLQ {s.probes} probes x "
                f"{s.steps or f'up to {defaults.STEPS}'} Lanczos steps (rtol {s.rtol:g}, cap {s.refine_cap()} HVPs), seed {s.seed}, {s.dtype}, "
                f"sigma floor {self.settings.sigma_floor:g}, tau {self.settings.tau:g}, rho {rho}{widest}."
                + (" Each model sharded over the torchrun processes (--fsdp): finite-difference HVPs, every "
                   "interval widened for their measured error; no top eigenvalue, trace or plot."
                   if self.settings.fsdp else ""))

    def note(self) -> str:
        """Empty, or the line that says the table was interrupted."""
        return (f"INTERRUPTED after {len(self.rows)} of {self.checkpoints} checkpoints." if self.interrupted
                else "")

    def to_json(self) -> dict:
        """``table1.json``."""
        return {"made_by": self.made_by, "cells": [r.to_json() for r in self.rows], "findings": [f.to_json() for f in self.findings],
                "failures": self.failures,
                "interrupted": bool(self.interrupted),
                "settings": {**self.settings.to_json(), "layout": self.layout_used},
                "exact_checkpoints": [r.checkpoint for r in self.rows if r.method == "exact"],
                "wall_seconds": self.wall_seconds, "paper": PAPER}

    def to_pandas(self):
        """Table I as a ``pandas.DataFrame``: one row per checkpoint, every number of ``table1.json``'s cells as
        a column (nested fields flattened with dots: ``support.low``, ``inputs`` as ``d``, ``eta``, ...).

        The markdown and LaTeX files are laid out by hand (Table I's paired columns, booktabs rules); the CSV
        is this frame's columns of CSV_FIELDS, written by pandas."""
        import pandas as pd

        cells = [{k: v for k, v in r.to_json().items() if k != "spectrum_provenance"} for r in self.rows]
        return pd.json_normalize(cells, sep=".") if cells else pd.DataFrame(columns=CSV_FIELDS)

    def findings_to_pandas(self):
        """The findings (one row per model and epochs: err/d and accuracy of both families and variants, the
        gap, whether the paper's ordering holds and is resolved) as a ``pandas.DataFrame``."""
        import pandas as pd

        return pd.json_normalize([f.to_json() for f in self.findings], sep=".")

    def text(self, fmt: str) -> str:
        """The table as ``md``, ``csv`` or ``tex``."""
        line = stamp(self.made_by)
        if fmt == "md":
            return markdown(self.layout, self.findings, self.settings_line(), self.failures, self.note(),
                            self.layout_used) + f"\n_{line}._\n"
        if fmt == "csv":
            return to_csv(self.rows, self.made_by)
        if fmt == "tex":
            return f"% {line}\n" + latex(self.layout)
        raise ValueError(f"unknown table format {fmt!r}")

    def write(self, out: Path) -> tuple[list[Path], list[Path]]:
        """Write ``table1.json``, ``table1.<format>`` for each asked format and (``settings.plots``) the plots
        under ``out``, each atomically. Returns (table files, plot files)."""
        from .io_utils import write_json_atomic, write_text_atomic
        from .plots import table_plots

        tables = [write_json_atomic(Path(out) / "table1.json", self.to_json())]
        tables += [write_text_atomic(Path(out) / f"table1.{fmt}", self.text(fmt)) for fmt in self.settings.formats]
        plots = (table_plots(self.spectra, out, stamp=stamp(self.made_by)) if self.settings.plots and self.spectra
                 else [])
        return tables, plots


def build_report(rows: list[TableRow], settings: TableSettings, *, spectra=(), failures=(), interrupted: int = 0,
                 checkpoints: int | None = None, wall_seconds: float = 0.0) -> TableReport:
    """Lay ``rows`` out as Table I and draw the findings (no HVPs)."""
    placed = layout(rows)
    return TableReport(list(rows), list(spectra), list(failures), interrupted,
                       len(rows) if checkpoints is None else checkpoints, wall_seconds, settings, placed,
                       findings(placed), resolve_layout(settings.layout, placed), made_by())


def run_table(paths: "list[Path | RunSpec]", settings: TableSettings, *, cache=None,
              observer: Observer | None = None) -> TableReport:
    """Evaluate every checkpoint (its own form, its own η and λ) and build the report. ``paths`` are checkpoint
    files or :class:`wdbound.runs.RunSpec` s (a runs file's rows). A checkpoint that fails is reported
    (``observer.failed``) and skipped; SIGINT / SIGTERM stop the loop and the report keeps the finished rows,
    marked interrupted."""
    settings.validate()
    observer = observer or Observer()
    observer.items(len(paths))
    rows, spectra, failures, interrupted = [], [], [], 0
    start = time.perf_counter()
    for item in paths:
        path = item.path if isinstance(item, RunSpec) else item
        try:  # a signal anywhere in the iteration, the progress line included, keeps the finished rows
            try:
                row, spectrum = evaluate_row(item, settings.spectrum, rho=settings.rho, tau=settings.tau,
                                             sigma_floor=settings.sigma_floor, exact_mode=settings.exact,
                                             cache=cache, observer=observer, fsdp=settings.fsdp)
                rows.append(row)
                # The plots need the measure and the exact eigenvalues only: the live operator, its kept graph
                # and the dense Hessian (up to 0.8 GB at d = 10,000) go with the checkpoint.
                if spectrum is not None:  # a sharded row has none (--fsdp: no plot)
                    spectra.append((row, replace(spectrum, extra={})))
            except WdboundError as exc:
                failures.append(str(about(Path(path).name, exc)))
                observer.failed(Path(path).name, exc)
            observer.item(Path(path).name)
        except (KeyboardInterrupt, Interrupted) as exc:
            interrupted = getattr(exc, "code", 130)
            break
    return build_report(rows, settings, spectra=spectra, failures=failures, interrupted=interrupted,
                        checkpoints=len(paths), wall_seconds=time.perf_counter() - start)
