"""wdbound against its 2026 peers, side by side in one process: hessian-eigenthings 1.0, PyHessian 0.1 and
curvlinops 3, on top-5, trace, diagonal and density, at each tool's defaults and along a ladder of budgets,
against the exact Hessian of zoo checkpoints and of a tiny Hugging Face GPT-2. curvlinops takes every budget
as a required argument (it has no defaults), so it appears on the ladders only: XTrace for the trace, XDiag for
the diagonal, SciPy's eigsh on its operator for top-5 (curvlinops' documented way), its Lanczos density.
PyHessian takes a classification criterion and a dataloader of images: it runs on the zoo models only.

    pip install -e '.[peers]'   # benchmark extras (hessian-eigenthings 1.0, PyHessian, curvlinops), not in CI
    python benchmarks/peers.py            # digits-mlp, digits-cnn, gpt2-tiny; float64, 5 seeds (the trace: 20)
    python benchmarks/peers.py --models digits-cnn --dtype float32 --seeds 2
    python benchmarks/resnet18_err.py --out DIR --stem imagenet --epochs 4     # a trained ResNet-18, once
    python benchmarks/peers.py --models resnet18 --resnet18 DIR/resnet18-imagenet-digits32-adamw.pt --dtype float32
        # 64 images of 32 px, d = 11.2 M: top-5 and trace at each tool's defaults against a long-run reference

gpt2-tiny: ``transformers``' GPT2LMHeadModel (1 layer, 2 heads, width 8, eager attention) on 8 sequences of 16
characters of tests/data/tiny.txt, random initialisation (seed 0); every tool sees the same wrapper, whose
output is the per-token logits ``[B*T, V]`` against the flattened next-character targets (the mean token
cross-entropy).

Per (model, task, tool, budget): the median wall time over ``--seeds`` runs with different seeds, the mean
HVPs (counted on each tool's own operator), and the root-mean-square over the seeds of the error against the
exact values: top-5 (largest relative error of the five), trace (relative error), diagonal (relative L2
error), density (Wasserstein-1 / lambda_max). One draw of a stochastic estimator says little: a Hutchinson
trace can land on the exact value by luck; the RMS over seeds is what a user can expect.
"At equal accuracy" takes the most accurate peer default per task and the cheapest wdbound ladder point that
is at least as accurate: the ratio of their times. Writes benchmarks/results/peers-<date>.json and
peers-<date>.png (error against seconds). Speed is measured here, never in the unit tests.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))

# wdbound before torch, as the CLI: its import puts large tensors on huge pages, for every tool in this process
# alike (docs/scale.md, "Huge pages")
import wdbound  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

warnings.filterwarnings("ignore")

from compare import pyhessian_defaults, top5_error  # noqa: E402
from wdbound.provenance import library_versions  # noqa: E402
from wdbound.stats import wasserstein1  # noqa: E402

MODELS = {"digits-mlp": "digits-mlp-adamw-e40.pt", "digits-cnn": "digits-cnn-adamw-e40.pt", "gpt2-tiny": None}
LARGE = ("resnet18",)  # --models resnet18 --resnet18 CKPT: against a long-run reference (Reference)
REFERENCES: dict[str, dict] = {}  # the reference each large model was measured against (written to the JSON)
TRACE_RTOLS = (0.01, 0.005, 0.003, 0.002, 0.001)
# wdbound's fixed budgets: Lanczos steps of the deflation space x deflated Hutchinson probes (rtol 0)
TRACE_SPANS = ((10, 16), (10, 32), (20, 16), (20, 32), (20, 64), (30, 32), (30, 64), (40, 16), (40, 32), (40, 64),
               (50, 24), (50, 32), (60, 16), (60, 24), (60, 32), (60, 64))
DENSITY_BUDGETS = ((2, 20), (5, 40), (10, 40), (10, 80), (20, 80))
DENSITY_ADAPTIVE = ((5, 1e-3), (10, 2e-3), (16, 2e-3), (16, 1e-3))  # wdbound: probes, the single pass's stop
TRACE_MATVECS = (30, 60, 100, 200)
DIAGONAL_PROBES = (16, 64, 256)
LARGE_LADDERS = {"diagonal": ("30 mv",)}  # the ladder points a large model runs beside the defaults


def over_seeds(fns, seeds: int) -> list[tuple[float, float, float]]:
    """Per ``fn(seed) -> (error, hvps)`` of ``fns``: (RMS error, median seconds, mean HVPs) over ``seeds`` seeds.
    The points run interleaved, seed by seed, so a slow spell of the machine falls on every tool alike and the
    ratios of the times hold (run one after the other, the same configuration was measured 1.0 s and 1.75 s)."""
    record = [([], [], []) for _ in fns]
    for seed in range(seeds):
        for fn, (seconds, errors, hvps) in zip(fns, record):
            start = time.perf_counter()
            error, count = fn(seed)
            seconds.append(time.perf_counter() - start)
            errors.append(error)
            hvps.append(count)
    return [(math.sqrt(statistics.fmean(e * e for e in errors)), statistics.median(seconds), statistics.fmean(hvps))
            for seconds, errors, hvps in record]


def density_error(nodes, weights, exact) -> float:
    """W1 between a quadrature measure and the exact spectrum (``exact.eigenvalues``, equal weights), or a large
    model's reference measure (``exact.measure``), over lambda_max."""
    weights = np.asarray(weights, dtype=float)
    nodes = np.asarray(nodes, dtype=float)
    if getattr(exact, "measure", None) is not None:
        ref_nodes, ref_weights = exact.measure
        return wasserstein1(nodes, weights / weights.sum(), ref_nodes, ref_weights / ref_weights.sum()) / float(
            np.abs(exact.eigenvalues).max())
    exact_ev = exact.eigenvalues
    return wasserstein1(nodes, weights / weights.sum(), exact_ev,
                        np.full(len(exact_ev), 1.0 / len(exact_ev))) / float(np.abs(exact_ev).max())


def diagonal_error(estimate, exact) -> float:
    """Relative L2 error of a diagonal estimate. Against a large model's reference (a long deflated estimate
    with per-entry standard errors s), the reference's own noise is taken out of both norms:
    ``E||e - r||^2 = ||e - diag H||^2 + sum s^2`` for an estimate e independent of the reference r, and
    ``E||r||^2 = ||diag H||^2 + sum s^2`` (floored at 0)."""
    estimate = np.asarray(estimate, dtype=float)
    noise = float(np.sum(np.square(exact.diagonal_stderr))) if getattr(exact, "diagonal_stderr", None) is not None \
        else 0.0
    distance = max(float(np.sum(np.square(estimate - exact.diagonal))) - noise, 0.0)
    return math.sqrt(distance / max(float(np.sum(np.square(exact.diagonal))) - noise, 1e-300))


class Ours:
    """wdbound through its Python API: the defaults a notebook user gets, and their ladder."""

    TASKS = ("top5", "trace", "diagonal", "density")
    LADDERS = {"trace": [(f"rtol {r}", r) for r in TRACE_RTOLS] + [(f"{s} st {m} pr", (s, m)) for s, m in TRACE_SPANS],
               "density": [("spectrum", "spectrum")] + [(f"{p}x{m}", (p, m)) for p, m in DENSITY_BUDGETS]
               + [(f"{p}p tol {t}", (p, None, t)) for p, t in DENSITY_ADAPTIVE],
               "diagonal": [(f"{p} probes", p) for p in DIAGONAL_PROBES]}

    def __init__(self, model, data, dtype, loss=None) -> None:
        self.H = wdbound.Hessian(model, data, dtype=dtype, loss=loss, progress=False)

    def counted(self, seed, fn):
        self.H.seed = seed
        before = self.H.operator.matvecs
        value = fn()
        return value, self.H.operator.matvecs - before

    def top5(self, exact, seed):
        return self.counted(seed, lambda: top5_error({"top": self.H.top_eigenvalues(5).values.tolist()},
                                                     exact.eigenvalues))

    def trace(self, exact, seed, budget=None):
        """The default (``Hessian.trace()``), a target ``rtol`` (float), or (steps, probes) at ``rtol`` 0."""
        kwargs = ({} if budget is None else {"rtol": budget} if isinstance(budget, float)
                  else {"steps": budget[0], "probes": budget[1], "rtol": 0.0})
        return self.counted(seed, lambda: abs(self.H.trace(**kwargs).estimate - exact.trace) / abs(exact.trace))

    def diagonal(self, exact, seed, probes=16):
        def run():
            estimate = self.H.diagonal(probes).estimate
            return diagonal_error(estimate, exact)
        return self.counted(seed, run)

    def density(self, exact, seed, budget=None):
        """The default: ``Hessian.density()`` (one probe of at most 1,280 steps, the spectrum's ends, converged
        Ritz pairs at their exact mass). The ladder: ``wdbound spectrum``'s single pass (``.spectrum()``) at its
        defaults ("spectrum"), at fixed probes x steps, and at probes with its stopping tolerance."""
        if budget is None:
            return self.counted(seed, lambda: density_error(*self.H.density().slq.measure(), exact))
        overrides = ({} if budget == "spectrum" else {"probes": budget[0], "steps": budget[1], "density_tol": 0.0}
                     if len(budget) == 2 else {"probes": budget[0], "density_tol": budget[2]})

        def run():
            nodes, weights = self.H.spectrum(**overrides).slq.measure()
            return density_error(nodes, weights, exact)
        return self.counted(seed, run)


class Eigenthings:
    """hessian-eigenthings 1.0 on the same model copy, data and loss (its HVPs counted on its operator)."""

    TASKS = ("top5", "trace", "density")
    LADDERS = {"trace": [(f"{m} mv", m) for m in TRACE_MATVECS],
               "density": [(f"{p}x{m}", (p, m)) for p, m in DENSITY_BUDGETS]}

    def __init__(self, model, x, y) -> None:
        import hessian_eigenthings as he

        self.he = he
        self.op = he.HessianOperator(model, [(x, y)], he.supervised_loss(F.cross_entropy))
        self.calls = 0
        original = self.op.matvec

        def counted(v):
            self.calls += 1 if v.ndim == 1 else v.shape[0]
            return original(v)
        self.op.matvec = counted

    def counted(self, fn):
        before = self.calls
        value = fn()
        return value, self.calls - before

    def top5(self, exact, seed):
        def run():
            result = self.he.lanczos(self.op, k=5, which="LA", seed=seed)
            return top5_error({"top": result.eigenvalues.double().tolist()}, exact.eigenvalues)
        return self.counted(run)

    def trace(self, exact, seed, matvecs=100):
        return self.counted(lambda: abs(self.he.trace(self.op, num_matvecs=matvecs, seed=seed).estimate
                                        - exact.trace) / abs(exact.trace))

    def density(self, exact, seed, budget=(10, 80)):
        def run():
            found = self.he.spectral_density(self.op, num_runs=budget[0], lanczos_steps=budget[1], seed=seed)
            return density_error(found.raw_eigenvalues.double().reshape(-1).numpy(),
                                 found.raw_weights.double().reshape(-1).numpy(), exact)
        return self.counted(run)


class Curvlinops:
    """curvlinops 3 on the same model copy, data and loss: budgets only (it has no defaults)."""

    TASKS = ()
    LADDERS = {"trace": [(f"{m} mv", m) for m in TRACE_MATVECS],
               "diagonal": [(f"{m} mv", m) for m in (30, 120, 480)],
               "top5": [("eigsh", None)],
               "density": [(f"ncv {m}", m) for m in (40, 80)]}

    def __init__(self, model, x, y) -> None:
        import curvlinops

        self.cl = curvlinops
        self.op = curvlinops.HessianLinearOperator(model, torch.nn.CrossEntropyLoss(),
                                                   [p for p in model.parameters() if p.requires_grad], [(x, y)],
                                                   check_deterministic=False)
        self.calls = 0
        original = self.op._matmat

        def counted(matrix):
            self.calls += matrix[0].shape[-1]  # a list of [*shape, K] tensors: K columns
            return original(matrix)
        self.op._matmat = counted

    def counted(self, seed, fn):
        torch.manual_seed(seed)
        np.random.seed(seed)
        before = self.calls
        value = fn()
        return value, self.calls - before

    def trace(self, exact, seed, matvecs):
        return self.counted(seed, lambda: abs(float(self.cl.xtrace(self.op, matvecs)) - exact.trace)
                            / abs(exact.trace))

    def diagonal(self, exact, seed, matvecs):
        def run():
            estimate = self.cl.xdiag(self.op, matvecs).double().numpy()
            return diagonal_error(estimate, exact)
        return self.counted(seed, run)

    def top5(self, exact, seed, _=None):
        from scipy.sparse.linalg import eigsh

        def run():
            values = eigsh(self.op.to_scipy(), k=5, which="LA", return_eigenvectors=False)
            return top5_error({"top": np.asarray(values, dtype=float).tolist()}, exact.eigenvalues)
        return self.counted(seed, run)

    def density(self, exact, seed, ncv):
        def run():
            grid, density = self.cl.lanczos_approximate_spectrum(self.op, ncv, num_points=2048, num_repeats=10)
            grid, density = np.asarray(grid, dtype=float), np.asarray(density, dtype=float)
            return density_error(grid, np.clip(density, 0, None), exact)
        return self.counted(seed, run)


def tiny_gpt2():
    """(model, inputs, targets) of gpt2-tiny: a wrapper mapping ``input_ids`` [B, T] to logits [B*T, V], and
    the flattened next-character targets."""
    import transformers

    text = (ROOT.parent / "tests" / "data" / "tiny.txt").read_text()
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text])
    chunks = ids[: (len(ids) // 17) * 17].view(-1, 17)[:8]
    config = transformers.GPT2Config(vocab_size=len(vocab), n_positions=16, n_embd=8, n_layer=1, n_head=2,
                                     attn_implementation="eager", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = transformers.GPT2LMHeadModel(config)

        def forward(self, input_ids):
            logits = self.lm(input_ids=input_ids).logits
            return logits.reshape(-1, logits.shape[-1])

    return Flat().eval(), chunks[:, :-1], chunks[:, 1:].reshape(-1)


class Reference:
    """What a model too large for its dense Hessian is measured against: wdbound's own long runs from another
    seed, in the run's dtype, for the tasks asked: the top-5 by Lanczos with residual bounds (their largest
    relative bound says how exact they are), the deflated trace to ``rtol`` (its standard error says how exact
    it is) and the deflated diagonal with ``diagonal_probes`` probes (3x as many HVPs; its per-entry standard
    errors are taken out of every diagonal error, :func:`diagonal_error`) and the density of
    ``Hessian.density()`` (one probe of 1,280 steps, by the memory plan's low-memory recurrence at this size;
    at d = 11.2 M one probe's spectral weights are within about range/sqrt(2d) = 2e-4 of the range in W1)."""

    TASKS = ("top5", "trace", "diagonal", "density")

    def __init__(self, model, data, dtype: str, rtol: float, tasks=("top5", "trace"), diagonal_probes: int = 32,
                 seed: int = 1000) -> None:
        H = wdbound.Hessian(model, data, dtype=dtype, seed=seed, progress=False)
        start = time.perf_counter()
        top = H.top_eigenvalues(5)
        self.eigenvalues = np.sort(np.asarray(top.values, dtype=float))
        self.top_rel_bound = float(np.max(np.asarray(top.bounds) / np.abs(top.values)))
        trace = H.trace(rtol=rtol)  # also goal 3's `spectrum` row's
        self.trace, self.trace_rel_stderr = float(trace.estimate), float(trace.stderr / abs(trace.estimate))
        self.diagonal = self.diagonal_stderr = self.measure = None
        self.diagonal_probes = diagonal_probes if "diagonal" in tasks else 0
        if self.diagonal_probes:
            found = H.diagonal(diagonal_probes)
            self.diagonal, self.diagonal_stderr = np.asarray(found.estimate, float), np.asarray(found.stderr, float)
        if "density" in tasks:
            nodes, weights = H.density().slq.measure()
            self.measure = (np.asarray(nodes, dtype=float), np.asarray(weights, dtype=float))
        self.hvps, self.seconds = int(H.operator.matvecs), time.perf_counter() - start
        noise = (f", diagonal ({diagonal_probes} probes) relative noise "
                 f"{self.diagonal_noise:.1e}" if self.diagonal is not None else "")
        print(f"reference ({dtype}, seed {seed}): top-5 {self.eigenvalues[::-1].round(6).tolist()} (largest "
              f"relative bound {self.top_rel_bound:.1e}), trace {self.trace:.6g} ± {self.trace_rel_stderr:.1%}"
              f"{noise}{', density' if self.measure is not None else ''}, {self.hvps} HVPs in {self.seconds:.0f} s",
              flush=True)

    @property
    def diagonal_noise(self) -> float:
        """The reference diagonal's own relative noise: sqrt(sum s^2) / ||r||."""
        return float(np.linalg.norm(self.diagonal_stderr) / np.linalg.norm(self.diagonal))

    def to_json(self) -> dict:
        return {"top5": self.eigenvalues[::-1].tolist(), "top5_largest_relative_bound": self.top_rel_bound,
                "trace": self.trace, "trace_relative_stderr": self.trace_rel_stderr,
                "diagonal_probes": self.diagonal_probes,
                "diagonal_relative_noise": self.diagonal_noise if self.diagonal is not None else None,
                "density": "Hessian.density() (1 probe, 1,280 steps)" if self.measure is not None else None,
                "hvps": self.hvps, "seconds": self.seconds}


def resnet18_model_and_data(args):
    """The ResNet-18 checkpoint ``benchmarks/resnet18_err.py --out DIR --stem imagenet`` trained (d = 11.2 M),
    on the first ``--resnet-n`` test images of the 32 px digits it wrote beside it (``DIR/digits32``)."""
    from wdbound.data import ArrayDataset

    ckpt = wdbound.load_checkpoint(args.resnet18)
    data = wdbound.load_dataset(f"cifar10:{Path(args.resnet18).parent / 'digits32'}", "test")
    n = min(args.resnet_n, len(data))
    x = torch.stack([data[i][0] for i in range(n)])
    y = torch.tensor([int(data[i][1]) for i in range(n)])
    return ckpt.model, ArrayDataset(x, y), x, y, None


def model_and_data(name: str, args=None):
    """(model, data for wdbound, inputs, targets, wdbound's loss) of one benchmark model."""
    if name == "resnet18":
        return resnet18_model_and_data(args)
    if name == "gpt2-tiny":
        model, x, y = tiny_gpt2()
        rows = y.view(x.shape[0], -1)  # wdbound batches examples (sequences): targets per sequence

        def loss(logits, targets):
            return F.cross_entropy(logits, targets.reshape(-1))
        return model, (x, rows), x, y, loss
    ckpt = wdbound.load_checkpoint(ROOT.parent / "checkpoints" / MODELS[name])
    data = wdbound.load_dataset("digits", "test")
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([data[i][1] for i in range(len(data))])
    return ckpt.model, data, x, y, None


def rows_for(name: str, args) -> list[dict]:
    """Every (task, tool, budget) measured on one model."""
    model, data, x, y, loss = model_and_data(name, args)
    dtype = getattr(torch, args.dtype)
    if x.is_floating_point():
        x = x.to(dtype)
    ours = Ours(model, data, args.dtype, loss)
    large = name in LARGE  # no dense Hessian: a long-run reference, top-5 and trace, defaults only
    exact = (Reference(model, data, args.dtype, args.reference_rtol, args.tasks, args.reference_diagonal_probes)
             if large else wdbound.Hessian(model, data, loss=loss, progress=False).exact())  # float64
    dim, tasks = ours.H.dim, [t for t in args.tasks if not large or t in Reference.TASKS]
    seeds = args.resnet_seeds if large else args.seeds
    trace_seeds = args.resnet_seeds if large else args.trace_seeds
    model = model.to(dtype).eval()
    rows = []
    if large:
        REFERENCES[name] = exact.to_json()

    runners = [("wdbound", ours)]
    for tool, runner in (("eigenthings", Eigenthings), ("curvlinops", Curvlinops)):
        try:
            runners.append((tool, runner(model, x, y)))
        except ImportError:
            pass
    points = []  # (task, tool, budget, fn(seed) -> (error, hvps), default)
    for tool, runner in runners:
        for task in (t for t in runner.TASKS if t in tasks):
            points.append((task, tool, "default", lambda s, r=runner, t=task: getattr(r, t)(exact, s), True))
        ladders = {t: [p for p in runner.LADDERS.get(t, []) if p[0] in LARGE_LADDERS.get(t, ())] for t in tasks} \
            if large else runner.LADDERS
        for task, ladder in ((t, p) for t, p in ladders.items() if t in tasks):
            for label, value in ladder:
                points.append((task, tool, label, lambda s, r=runner, t=task, v=value: getattr(r, t)(exact, s, v),
                               False))
    for task in dict.fromkeys(point[0] for point in points):
        mine = [point for point in points if point[0] == task]
        measured = over_seeds([point[3] for point in mine], trace_seeds if task == "trace" else seeds)
        for (_, tool, budget, _, default), (error, seconds, hvps) in zip(mine, measured):
            rows.append({"model": name, "d": dim, "task": task, "tool": tool, "budget": budget,
                         "default": default, "error": float(error), "seconds": seconds, "hvps": float(hvps)})
            print(f"{name:11s} {task:8s} {tool:12s} {str(budget):10s} error {error:9.2e}  {seconds:7.3f} s  "
                  f"{hvps:7.1f} HVPs{'  (default)' if default else ''}", flush=True)
    def whole(tool, top, trace, stderr, seconds, hvps, measure, budget="default"):
        """Goal 3's row: a tool's defaults for top-5, trace and density in one go, against the reference (the
        density when the reference has one)."""
        density = density_error(*measure, exact) if exact.measure is not None else math.nan
        rows.append({"model": name, "d": dim, "task": "spectrum", "tool": tool, "budget": budget,
                     "default": budget == "default",
                     "error": top5_error({"top": list(top)}, exact.eigenvalues),
                     "trace_error": abs(trace - exact.trace) / abs(exact.trace), "trace_rel_stderr": stderr / abs(trace),
                     "density_error": density, "seconds": seconds, "hvps": float(hvps)})
        print(f"{name:11s} spectrum {tool:12s} {budget:10s} top-5 error {rows[-1]['error']:.2e}, trace error "
              f"{rows[-1]['trace_error']:.2e} (± {rows[-1]['trace_rel_stderr']:.1e}), density W1/λmax "
              f"{density:.1e}  {seconds:7.1f} s  {hvps:.0f} HVPs", flush=True)
        if tool == "wdbound" and budget == "default" and "density" in tasks and math.isfinite(density):
            # the density ladder's "spectrum" point, which a large model does not run on its own: the single
            # pass's density, charged the whole command's time (top-5 and trace too)
            rows.append({"model": name, "d": dim, "task": "density", "tool": tool, "budget": "spectrum",
                         "default": False, "error": density, "seconds": seconds, "hvps": float(hvps)})

    if large:  # goal 3: `wdbound spectrum` as a whole (its defaults: top-5, trace, density) against PyHessian's
        H = wdbound.Hessian(model, data, dtype="float32", progress=False)  # the command's dtype
        start = time.perf_counter()
        found = H.spectrum()
        took = time.perf_counter() - start
        whole("wdbound", found.top.values.tolist(), found.trace.estimate, found.trace.stderr, took,
              H.operator.matvecs, found.slq.measure())
    found = (pyhessian_defaults(model.float(), data, torch.device("cpu"))
             if args.pyhessian and name != "gpt2-tiny" else None)
    if found is not None:
        values, seconds, hvps = found
        parts = values["hvps_by_part"]
        if large:
            whole("pyhessian", values["top"], values["trace"], values["trace_implied_stderr"] or math.nan, seconds,
                  hvps, (values["nodes"], values["weights"]))
            if values["trace_implied_stderr"]:  # wdbound spectrum with its trace target at PyHessian's accuracy
                target = round(values["trace_implied_stderr"] / abs(values["trace"]), 2)
                H = wdbound.Hessian(model, data, dtype="float32", progress=False)
                start = time.perf_counter()
                equal = H.spectrum(trace_rtol=target)
                took = time.perf_counter() - start
                whole("wdbound", equal.top.values.tolist(), equal.trace.estimate, equal.trace.stderr, took,
                      H.operator.matvecs, equal.slq.measure(), f"rtol {target}")
        for task, error in (("top5", lambda: top5_error(values, exact.eigenvalues)),
                            ("trace", lambda: abs(values["trace"] - exact.trace) / abs(exact.trace)),
                            ("density", lambda: density_error(values["nodes"], values["weights"], exact))):
            if task not in tasks:
                continue
            error = error()
            rows.append({"model": name, "d": dim, "task": task, "tool": "pyhessian",
                         "budget": "default", "default": True, "error": float(error),
                         "seconds": seconds * parts[task] / max(hvps, 1), "hvps": int(parts[task])})
    return rows


def equal_accuracy(rows: list[dict]) -> list[dict]:
    """Per (model, task): the most accurate peer default, the cheapest wdbound point at least as accurate, and
    the ratio of their times (and wdbound's default beside it)."""
    out = []
    for (model, task) in sorted({(r["model"], r["task"]) for r in rows}):
        here = [r for r in rows if r["model"] == model and r["task"] == task]
        peers = [r for r in here if r["tool"] != "wdbound" and r["default"]]
        ours = [r for r in here if r["tool"] == "wdbound"]
        default = next(r for r in ours if r["default"])
        if not peers:
            out.append({"model": model, "task": task, "peer": None, "ours_default": default})
            continue
        best = min(peers, key=lambda r: r["error"])
        good = [r for r in ours if r["error"] <= best["error"]]
        cheapest = min(good, key=lambda r: r["seconds"]) if good else None
        out.append({"model": model, "task": task, "peer": best, "ours_default": default, "ours_equal": cheapest,
                    "speedup_at_equal_accuracy": best["seconds"] / cheapest["seconds"] if cheapest else None,
                    "default_as_accurate": default["error"] <= best["error"]})
    return out


def figure(rows: list[dict], path: Path) -> None:
    """Error against seconds per (model, task), one line per tool, defaults circled."""
    from matplotlib import pyplot as plt

    keys = sorted({(r["model"], r["task"]) for r in rows})
    models, tasks = sorted({k[0] for k in keys}), sorted({k[1] for k in keys})
    fig, axes = plt.subplots(len(models), len(tasks), figsize=(4 * len(tasks), 3.6 * len(models)), squeeze=False)
    axes = {(m, t): axes[i, j] for i, m in enumerate(models) for j, t in enumerate(tasks)}
    for (model, task) in keys:
        ax = axes[model, task]
        for tool in sorted({r["tool"] for r in rows}):
            pts = sorted((r["seconds"], r["error"], r["default"]) for r in rows
                         if (r["model"], r["task"], r["tool"]) == (model, task, tool))
            if pts:
                ax.loglog([p[0] for p in pts], [max(p[1], 1e-16) for p in pts], "o-", label=tool, ms=3)
                ax.loglog([p[0] for p in pts if p[2]], [max(p[1], 1e-16) for p in pts if p[2]], "o", mfc="none",
                          mec="k", ms=9)
        ax.set_title(f"{model}: {task}", fontsize=9)
        ax.set_xlabel("seconds")
        ax.set_ylabel("error")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trace-seeds", type=int, default=20,
                        help="seeds of the trace rows (one draw of a trace estimator says little: 5 flatter Hutch++)")
    parser.add_argument("--no-pyhessian", dest="pyhessian", action="store_false")
    parser.add_argument("--tasks", default="top5,trace,diagonal,density",
                        help="comma-separated subset of top5, trace, diagonal, density")
    parser.add_argument("--tag", default="", help="appended to the output files' names (a partial run)")
    parser.add_argument("--resnet18", type=Path, default=None,
                        help="checkpoint of benchmarks/resnet18_err.py --stem imagenet (for --models resnet18)")
    parser.add_argument("--resnet-n", type=int, default=64, help="ResNet-18: the first N test images (32 px)")
    parser.add_argument("--resnet-seeds", type=int, default=1, help="ResNet-18: seeds per (task, tool)")
    parser.add_argument("--reference-rtol", type=float, default=0.002,
                        help="ResNet-18: the reference trace's relative standard error target (at most 128 probes)")
    parser.add_argument("--reference-diagonal-probes", type=int, default=32,
                        help="ResNet-18: probes of the reference diagonal (deflated: 3x as many HVPs)")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args(argv)
    args.tasks = tuple(t.strip() for t in args.tasks.split(","))
    if "resnet18" in args.models and args.resnet18 is None:
        parser.error("--models resnet18 needs --resnet18 CKPT (made by benchmarks/resnet18_err.py --stem imagenet)")
    torch.set_num_threads(torch.get_num_threads())
    rows = [row for name in args.models.split(",") for row in rows_for(name.strip(), args)]
    summary = equal_accuracy(rows)
    for s in summary:
        if s["peer"] is None:
            continue
        eq = s["ours_equal"]
        print(f"{s['model']:11s} {s['task']:8s} best peer default {s['peer']['tool']} error {s['peer']['error']:.2e} "
              f"in {s['peer']['seconds']:.3f} s; wdbound default error {s['ours_default']['error']:.2e} in "
              f"{s['ours_default']['seconds']:.3f} s; at equal accuracy "
              + (f"{eq['budget']} {eq['seconds']:.3f} s: x{s['speedup_at_equal_accuracy']:.1f}" if eq else "not reached"))
    stem = f"peers-{args.dtype}-{date.today().strftime('%Y%m%d')}" + (f"-{args.tag}" if args.tag else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps({"rows": rows, "equal_accuracy": summary, "references": REFERENCES,
                                                       "settings": vars(args) | {"out": str(args.out)},
                                                       "versions": library_versions()},
                                                      indent=1, default=str))
    figure(rows, args.out / f"{stem}.png")
    print(f"wrote {args.out / stem}.json and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
