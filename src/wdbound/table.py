"""Table I of Zhou et al. (TPAMI 2024) on the user's checkpoints: layout, findings and every output format.

Each checkpoint is evaluated with the form of the optimizer that trained it
(shared/SPEC.md, "Table I"): err_AdamW on AdamW(-D) checkpoints, err_l2-Adam on
l2-Adam(-D) checkpoints, each with its own Hessian, η and λ. Checkpoints are
grouped by (model, epochs); each group is a column pair "AdamW / AdamW-D"
beside "l2-Adam / l2-Adam-D", each cell "constant / decaying", rows "err in
bound" (err/d, the paper's scale) and "test acc. (%)". A missing partner is "—".

Rows in, text (and the per-model comparison plot) out; the CLI computes the rows.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

DASH = "—"
FAMILY_TITLES = {"adamw": "AdamW / AdamW-D", "l2-adam": "l2-Adam / l2-Adam-D"}
VARIANTS = ("constant", "decaying")

# The paper's Table I (ImageNet), as printed; shared/SPEC.md.
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
    from .errors import WdboundError
    from .updates import checkpoint_histograms, stats, total_counts

    try:
        return stats(total_counts(checkpoint_histograms(meta, str(path)))).iqr_log2
    except WdboundError:
        return None


def all_optimizers_grid(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One line per checkpoint, grouped by (model, epochs): optimizer, bound form, err/d, accuracy, update spread."""
    header = ["model, epochs", "optimizer", "bound form", "err/d", "test acc. (%)", "update IQR (log2)"]
    body = []
    for row in sorted(rows, key=lambda r: (r["model"], int(r["epochs"]), r["optimizer"])):
        if row.get("err_mean") is None:
            err = DASH
        elif row.get("method") == "exact":
            err = f"{row['err_mean']:.3f} (exact)"
        else:
            err = _with_interval(row["err_mean"], err_interval(row))
        spread = row.get("update_iqr_log2")
        body.append([f"{row['model']}, {row['epochs']} ep", row["optimizer"], row.get("form") or DASH, err,
                     DASH if row.get("test_acc") is None else _acc(row["test_acc"]),
                     DASH if spread is None or _nan(spread) else f"{spread:.2f}"])
    return header, body


def family_variant(optimizer: str) -> tuple[str | None, str | None]:
    """adamw-d -> ("adamw", "decaying"); an optimizer outside Table I -> (None, None)."""
    base, decaying = (optimizer[:-2], True) if optimizer.endswith("-d") else (optimizer, False)
    if base not in FAMILY_TITLES:
        return None, None
    return base, "decaying" if decaying else "constant"


@dataclass
class Layout:
    groups: list[tuple[str, int]]  # (model, epochs), sorted
    cells: dict[tuple[str, int, str, str], dict]  # (model, epochs, family, variant) -> row
    outside: list[dict]  # rows of optimizers Table I has no column for
    duplicates: list[dict]  # second checkpoints for an occupied cell (kept in the CSV, not in the table)


def layout(rows: list[dict]) -> Layout:
    cells: dict = {}
    outside, duplicates = [], []
    for row in rows:
        family, variant = family_variant(row["optimizer"])
        if family is None:
            outside.append(row)
            continue
        key = (row["model"], int(row["epochs"]), family, variant)
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
        values.append(DASH if row is None or row.get(key) is None or _nan(row.get(key)) else fmt(row[key]))
    return " / ".join(values)


def _nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _err(v: float) -> str:
    return f"{v:.3f}"


def _acc(v: float) -> str:
    return f"{100 * v:.1f}"


def grid(layout_: Layout) -> tuple[list[str], list[list[str]]]:
    """Header and the two rows of Table I."""
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
    header = [""]
    err_row, acc_row = ["err in bound"], ["test acc. (%)"]
    for entry in PAPER:
        for family in FAMILY_TITLES:
            header.append(f"{entry['model']}, {entry['epochs']} ep: {FAMILY_TITLES[family]}")
            (e_c, e_d), (a_c, a_d) = entry[family]
            err_row.append(f"{e_c:.2f} / {e_d:.2f}")
            acc_row.append(f"{a_c:.1f} / {a_d:.1f}")
    return header, [err_row, acc_row]


def err_interval(row: dict) -> tuple[float, float]:
    """The row's err/d interval; rows without one (older JSON) get ± 4 standard errors."""
    if row.get("err_mean_interval"):
        low, high = row["err_mean_interval"]
        return float(low), float(high)
    se = row.get("err_mean_stderr") or 0.0
    return row["err_mean"] - 4 * se, row["err_mean"] + 4 * se


def findings(layout_: Layout) -> list[dict]:
    """Per (model, epochs) and variant: does err_AdamW < err_l2-Adam hold, and does AdamW's accuracy reach l2-Adam's?
    ``holds`` is None when a partner is missing. A finding is resolved only when the two err/d intervals are
    disjoint (each covers its exact value; exact cells are points)."""
    out = []
    for group in layout_.groups:
        for variant in VARIANTS:
            a = layout_.cells.get((*group, "adamw", variant))
            l2 = layout_.cells.get((*group, "l2-adam", variant))
            entry = {"model": group[0], "epochs": group[1], "variant": variant}
            if a is None or l2 is None:
                entry.update(err_holds=None, acc_holds=None)
            else:
                gap = l2["err_mean"] - a["err_mean"]
                (a_lo, a_hi), (l_lo, l_hi) = err_interval(a), err_interval(l2)
                entry.update(err_adamw=a["err_mean"], err_l2=l2["err_mean"], err_gap=gap,
                             err_adamw_interval=[a_lo, a_hi], err_l2_interval=[l_lo, l_hi],
                             exact=bool(a.get("method") == "exact" and l2.get("method") == "exact"),
                             err_holds=bool(gap > 0), err_resolved=bool(a_hi < l_lo or l_hi < a_lo),
                             acc_adamw=a["test_acc"], acc_l2=l2["test_acc"],
                             acc_holds=bool(a["test_acc"] >= l2["test_acc"]))
            out.append(entry)
    return out


def finding_lines(found: list[dict]) -> list[str]:
    lines = []
    for f in found:
        head = f"{f['model']}, {f['epochs']} ep, {f['variant']}:"
        if f["err_holds"] is None:
            lines.append(f"{head} partner missing, no comparison")
            continue
        verdict = "holds" if f["err_holds"] else "does NOT hold"
        if f["exact"]:
            how = "exact spectra"
        else:
            how = ("intervals disjoint: resolved" if f["err_resolved"]
                   else "intervals overlap: NOT resolved by these settings")
        acc = "holds" if f["acc_holds"] else "does NOT hold"
        lines.append(f"{head} err_AdamW < err_l2-Adam {verdict} ({_with_interval(f['err_adamw'], f['err_adamw_interval'])}"
                     f" vs {_with_interval(f['err_l2'], f['err_l2_interval'])}, gap {f['err_gap']:+.3f}; {how}); "
                     f"acc AdamW >= l2-Adam {acc} ({100 * f['acc_adamw']:.1f} vs {100 * f['acc_l2']:.1f})")
    return lines


def _with_interval(value: float, interval) -> str:
    if interval is None or interval[0] == interval[1]:
        return f"{value:.3f}"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def exactness_line(rows: list[dict]) -> str:
    """Which cells are exact (dense Hessian) and which are SLQ with intervals."""
    exact = [r["checkpoint"] for r in rows if r.get("method") == "exact"]
    slq = [r["checkpoint"] for r in rows if r.get("method") == "slq"]
    if exact and not slq:
        return f"Every err/d above is exact (dense Hessian eigenvalues; {len(exact)} checkpoints)."
    if slq and not exact:
        return f"Every err/d above is SLQ with an interval covering the exact value ({len(slq)} checkpoints)."
    return (f"Exact (dense Hessian): {', '.join(exact) or 'none'}. SLQ with intervals: {', '.join(slq) or 'none'}.")


def summary_counts(found: list[dict]) -> str:
    """One sentence: how many comparisons hold, and how many of those are resolved (exact or disjoint)."""
    pairs = [f for f in found if f["err_holds"] is not None]
    resolved = [f for f in pairs if f["exact"] or f["err_resolved"]]
    return (f"err_AdamW < err_l2-Adam holds in {sum(f['err_holds'] for f in pairs)} of {len(pairs)} cell pairs; "
            f"{len(resolved)} of {len(pairs)} are resolved ({sum(f['exact'] for f in pairs)} from exact spectra), "
            f"of which {sum(f['err_holds'] for f in resolved)} hold. "
            f"Accuracy AdamW >= l2-Adam holds in {sum(f['acc_holds'] for f in pairs)} of {len(pairs)}.")


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
            if cell is None or cell.get("err_mean") is None:
                row.append(DASH)
                continue
            err = (f"{cell['err_mean']:.3f} (exact)" if cell.get("method") == "exact"
                   else _with_interval(cell["err_mean"], err_interval(cell)))
            row.append(f"{err}; {_acc(cell['test_acc'])}%")
        rows.append(row)
    return header, rows


LAYOUTS = ("auto", "long", "paper")


def resolve_layout(name: str, layout_: Layout) -> str:
    """``auto``: long when there are more than three (model, epochs) groups, else the paper's."""
    if name not in LAYOUTS:
        from .errors import WdboundError

        raise WdboundError(f"unknown --layout {name!r}; use auto, long or paper", "--layout")
    if name == "auto":
        return "long" if len(layout_.groups) > 3 else "paper"
    return name


# ---------------------------------------------------------------- formats

def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(layout_: Layout, found: list[dict], settings_line: str, failures: list[str], note: str = "",
             layout_name: str = "paper") -> str:
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


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_FIELDS})
    return buffer.getvalue()


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


# ---------------------------------------------------------------- plots

def plot_model_comparison(model: str, entries: list, path) -> None:
    """One figure per model: the SLQ measure of log10|eigenvalue| per checkpoint (Gaussian-smoothed),
    AdamW family solid, l2-Adam family dashed, one panel per epoch budget. The bounds live in the small
    eigenvalues, which a linear axis hides; exactly-zero eigenvalues (deflated rows) are given in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib import pyplot as plt

    from .io_utils import atomic_path

    budgets = sorted({int(row["epochs"]) for row, _ in entries})
    fig, axes = plt.subplots(1, len(budgets), figsize=(5.5 * len(budgets), 4), squeeze=False)
    grid = np.linspace(-10, 3, 600)
    width = 0.15
    for ax, epochs in zip(axes[0], budgets):
        for row, spectrum in sorted(entries, key=lambda e: e[0]["optimizer"]):
            if int(row["epochs"]) != epochs:
                continue
            nodes, weights = spectrum.slq.measure()
            keep = np.abs(nodes) > 0
            logs = np.log10(np.abs(nodes[keep]))
            dens = (np.exp(-0.5 * ((grid[:, None] - logs[None, :]) / width) ** 2) * weights[keep]).sum(1)
            dens /= width * np.sqrt(2 * np.pi)
            style = "-" if (row.get("family") or "").startswith("adamw") else "--"
            zero = 100 * float(weights[~keep].sum())
            ax.plot(grid, dens, style, label=f"{row['optimizer']} (err/d {row.get('err_mean', float('nan')):.3f}; "
                                             f"{zero:.1f}% exact 0)")
        ax.set_title(f"{model}, {epochs} epochs")
        ax.set_xlabel("log10 |eigenvalue|")
        ax.set_ylabel("spectral density")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
