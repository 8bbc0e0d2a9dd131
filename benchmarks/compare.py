"""wdbound vs PyHessian (and curvlinops when installed), side by side in one process and one run.

    python benchmarks/compare.py                     # digits-mlp, digits-cnn, cifar-cnn; ResNet-18 HVP costs
    python benchmarks/compare.py --full-resnet       # ResNet-18 full analysis too (slow on a CPU)
    python benchmarks/compare.py --device cuda --dtype float32
    python benchmarks/compare.py --section defaults  # each tool as it comes: `wdbound spectrum` vs PyHessian
    python benchmarks/compare.py --section defaults --models resnet18-trained --resnet-n 256 --pyhessian-hvps 185
        # a trained ResNet-18 on 256 images; PyHessian's time extrapolated from its HVP (hours to run whole here)
    python benchmarks/compare.py --section equal-accuracy   # each tool's cheapest settings, same errors
    python benchmarks/compare.py --section equal-accuracy --models resnet18-trained --resnet-n 32 --exact-cache DIR
        # no exact spectrum: against a long-Lanczos reference, trace held to a 10 % standard error
        # (--trace-stderr-target); --equal-reference lanczos runs the same on the zoo, against the exact values too

For each model: wall time and HVP count of density (k probes x m steps), top-5 eigenvalues, trace,
diagonal, and the full analysis (all four); accuracy against the exact Hessian where it fits
(top-1 relative error, density Wasserstein-1 / lambda_max, trace relative error); ratios
wdbound / PyHessian; one HVP / one gradient for both of wdbound's HVP modes and PyHessian's; peak
memory per method (CUDA: max_memory_allocated; CPU: resident-set growth sampled every 5 ms).
Writes benchmarks/results/<run>.json and benchmarks/results/summary.md.

Speed is measured here and printed as ratios; the unit tests never time anything.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

from wdbound import load_checkpoint, load_dataset  # noqa: E402
from wdbound.curvature import HessianOperator, dense_matrix, stock_layers  # noqa: E402
from wdbound.data import ArrayDataset  # noqa: E402
from wdbound.estimators import hutchinson, lanczos, rademacher, top_eigenvalues  # noqa: E402
from wdbound.estimators.lanczos import lanczos_blocks, slq_from_run  # noqa: E402
from wdbound.models import build_model  # noqa: E402
from wdbound.stats import mean_stderr, wasserstein1  # noqa: E402


# ---------------------------------------------------------------- measurement helpers

class PeakMemory:
    """Peak memory growth during a block: CUDA allocator peak, or sampled RSS on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = self._rss()
            self.stop = threading.Event()
            self.max_rss = self.base

            def sample() -> None:
                while not self.stop.is_set():
                    self.max_rss = max(self.max_rss, self._rss())
                    time.sleep(0.005)

            self.thread = threading.Thread(target=sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.stop.set()
            self.thread.join()
            self.peak = max(self.max_rss, self._rss()) - self.base


def timed(device: torch.device, fn):
    """(result, seconds, peak bytes) of fn()."""
    with PeakMemory(device) as mem:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    return result, seconds, mem.peak


# ---------------------------------------------------------------- models

class CifarCNN(nn.Module):
    """A small CIFAR-sized CNN (3x32x32 -> 10): two conv blocks with BatchNorm, as in many Hessian studies."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Tanh(), nn.MaxPool2d(2),
                                 nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.Tanh(), nn.MaxPool2d(2),
                                 nn.Flatten(), nn.Linear(32 * 8 * 8, 10))

    def forward(self, x):
        return self.net(x)


def random_images(n: int, seed: int = 0) -> ArrayDataset:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    return ArrayDataset(images, labels)


def digits32(split: str) -> ArrayDataset:
    """The digits split upsampled to 3x32x32 (bilinear, the grey channel repeated): CIFAR-shaped real images."""
    data = load_dataset("digits", split)
    images = nn.functional.interpolate(data.images, size=32, mode="bilinear", align_corners=False)
    return ArrayDataset(images.repeat(1, 3, 1, 1).contiguous(), data.labels)


def fit_adamw(model: nn.Module, train: ArrayDataset, epochs: int, lr: float = 1e-3, wd: float = 5e-4,
              batch: int = 64) -> nn.Module:
    """Train ``model`` in place with torch's AdamW on shuffled minibatches (shuffle seeded 0); returns it in
    eval mode."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(train.images[rows]), train.labels[rows]).backward()
            optimizer.step()
    return model.eval()


def trained_resnet18(cache: Path | None, epochs: int = 4) -> nn.Module:
    """ResNet-18 (CIFAR stem) trained with AdamW (lr 1e-3, wd 5e-4, batch 64, seed 0) on digits32's train split:
    a trained checkpoint of the architecture researchers bring, built here since no weights can be downloaded.
    About 30 s per epoch on 2 cores; kept as ``<cache>/resnet18-digits32-e<epochs>.pt`` between runs."""
    path = cache / f"resnet18-digits32-e{epochs}.pt" if cache is not None else None
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10)
    if path is not None and path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    fit_adamw(model, digits32("train"), epochs)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval()


def cases(args):
    zoo = ROOT.parent / "checkpoints"
    digits = load_dataset("digits", "test")
    out = [("digits-mlp", load_checkpoint(zoo / "digits-mlp-adamw-e40.pt").model, digits, True, True),
           ("digits-cnn", load_checkpoint(zoo / "digits-cnn-adamw-e40.pt").model, digits, True, True)]
    torch.manual_seed(0)
    out.append(("cifar-cnn", CifarCNN().eval(), random_images(args.cifar_n), False, True))
    torch.manual_seed(0)
    out.append(("resnet18", build_model("resnet18", num_classes=10).eval(), random_images(args.resnet_n, 1), False,
                args.full_resnet))
    if "resnet18-trained" in args.models:  # trained on digits32 (4 epochs); the first --resnet-n test images
        test = digits32("test")
        n = min(args.resnet_n, len(test))
        out.append(("resnet18-trained", trained_resnet18(args.exact_cache),
                    ArrayDataset(test.images[:n], test.labels[:n]), False, args.full_resnet))
    return [c for c in out if c[0] in args.models]


# ---------------------------------------------------------------- the two tools

def run_wdbound(op, args, device):
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    k, m = args.probes, args.steps
    res = {}

    def measure(name, fn):
        before = op.matvecs
        value, seconds, peak = timed(device, fn)
        res[name] = {"seconds": seconds, "hvps": op.matvecs - before, "peak_bytes": peak}
        return value

    density = measure("density", lambda: slq_from_run(lanczos(op, rademacher(k, op.dim, gen(), op.dtype, op.device),
                                                               m), op.dim))
    top = measure("top5", lambda: top_eigenvalues(op, 5, gen()))
    trace, _ = measure("trace", lambda: hutchinson(op, k, gen()))
    measure("diagonal", lambda: hutchinson(op, k, gen()))

    def full():  # one Krylov run serves density, trace and diagonal; top-5 by its own Lanczos
        t = top_eigenvalues(op, 5, gen())
        run = lanczos(op, rademacher(k, op.dim, gen(), op.dtype, op.device), m)
        from wdbound.estimators.hutchinson import estimate_from_products

        return t, slq_from_run(run, op.dim), estimate_from_products(run.starts, run.first_products)

    measure("full", full)
    nodes, weights = density.measure()
    return res, {"top": top.values.tolist(), "trace": trace.estimate, "nodes": nodes, "weights": weights}


def run_pyhessian(op, args, device):
    try:
        from pyhessian import hessian
    except ImportError:
        return None, None
    from wdbound.backends.pyhessian_backend import CountingCriterion
    from wdbound.backends.pyhessian_compat import torch_eig_shim

    batches = list(op.chunks())
    criterion = CountingCriterion()
    torch.manual_seed(0)
    engine = hessian(stock_layers(op.model), criterion, dataloader=batches, cuda=device.type == "cuda")
    k, m = args.probes, args.steps
    res = {}

    def measure(name, fn):
        before = criterion.calls
        value, seconds, peak = timed(device, fn)
        res[name] = {"seconds": seconds, "hvps": (criterion.calls - before) // len(batches), "peak_bytes": peak}
        return value

    def density():
        with torch_eig_shim():
            return engine.density(iter=m, n_v=k)

    nodes, weights = measure("density", density)
    values, _ = measure("top5", lambda: engine.eigenvalues(top_n=5))
    samples = measure("trace", lambda: engine.trace(maxIter=k, tol=0.0))  # tol 0: all k probes, like ours
    res["diagonal"] = None  # PyHessian 0.1 has no diagonal estimator
    res["full"] = {key: sum(res[name][key] for name in ("density", "top5", "trace"))
                   for key in ("seconds", "hvps")}
    res["full"]["peak_bytes"] = max(res[name]["peak_bytes"] for name in ("density", "top5", "trace"))
    res["full"]["note"] = "separate calls: density + eigenvalues(top_n=5) + trace (no diagonal available)"
    all_nodes = np.concatenate([np.asarray(n, dtype=float) for n in nodes])
    all_weights = np.concatenate([np.asarray(w, dtype=float) for w in weights])
    return res, {"top": sorted(values, reverse=True), "trace": float(np.mean(samples)), "nodes": all_nodes,
                 "weights": all_weights}


def run_curvlinops(op, args, device):
    """curvlinops' Hutchinson trace/diagonal and eigsh top-5 on the same model and data, when installed."""
    try:
        from curvlinops import HessianLinearOperator
    except ImportError:
        return None, None
    model = stock_layers(op.model)
    params = [p for p in model.parameters() if p.requires_grad]
    data = [(x, y) for x, y in op.chunks()]
    linop = HessianLinearOperator(model, nn.CrossEntropyLoss(), params, data)
    from scipy.sparse.linalg import eigsh

    res = {}
    (values, _), seconds, peak = timed(device, lambda: eigsh(linop, k=5, which="LA"))
    res["top5"] = {"seconds": seconds, "hvps": None, "peak_bytes": peak}
    return res, {"top": sorted(values.tolist(), reverse=True)}


def hvp_costs(op_factory, reps: int, device):
    """Seconds of one gradient, one HVP (each wdbound mode) and PyHessian's HVP; ratios to the gradient."""
    out = {}
    op = op_factory("forward-over-reverse")
    params = [p for p in op.model.parameters() if p.requires_grad]

    def gradient():  # the reference: one plain autograd gradient of the mean loss over the evaluation set
        total = [torch.zeros_like(p) for p in params]
        for inputs, labels in op.chunks():
            loss = nn.functional.cross_entropy(op.model(inputs), labels) * (labels.shape[0] / op.n_eval)
            for acc, g in zip(total, torch.autograd.grad(loss, params)):
                acc += g
        return total

    gradient()
    _, grad_s, _ = timed(device, lambda: [gradient() for _ in range(reps)])
    out["gradient_seconds"] = grad_s / reps
    for mode in ("forward-over-reverse", "double-backward"):
        op = op_factory(mode)
        v = torch.randn(1, op.dim, dtype=op.dtype, generator=torch.Generator().manual_seed(0)).to(op.device)
        op.matmat(v)
        _, s, _ = timed(device, lambda: [op.matmat(v) for _ in range(reps)])
        out[f"hvp_{mode}_seconds"] = s / reps
        out[f"hvp_{mode}_over_grad"] = s / reps / out["gradient_seconds"]
    try:
        from pyhessian import hessian

        from wdbound.backends.pyhessian_backend import CountingCriterion

        engine = hessian(stock_layers(op.model), CountingCriterion(), dataloader=list(op.chunks()),
                         cuda=device.type == "cuda")
        vec = [torch.randn_like(p) for p in engine.params]
        engine.dataloader_hv_product(vec)
        _, s, _ = timed(device, lambda: [engine.dataloader_hv_product(vec) for _ in range(reps)])
        out["hvp_pyhessian_seconds"] = s / reps
        out["hvp_pyhessian_over_grad"] = s / reps / out["gradient_seconds"]
    except ImportError:
        pass
    return out


# ---------------------------------------------------------------- main

def accuracy(found, exact_ev, exact_trace):
    lam_max = float(np.max(np.abs(exact_ev)))
    out = {"top1_rel_error": abs(found["top"][0] - exact_ev[-1]) / abs(exact_ev[-1]),
           "trace_rel_error": abs(found["trace"] - exact_trace) / abs(exact_trace)}
    if "nodes" in found:
        out["density_w1_over_lambda_max"] = wasserstein1(found["nodes"], found["weights"], exact_ev,
                                                         np.ones_like(exact_ev)) / lam_max
    return out


def defaults_vs_defaults(args, device) -> dict:
    """Each tool at its defaults, as a user who tries both meets them, in one process: `wdbound spectrum
    --no-cache` (memory_plan + estimate_spectrum with the command's default settings: the CLI's pipeline
    without the file and cache steps) vs PyHessian 0.1's eigenvalues(top_n=5) + trace() + density() (float32,
    its double-backward HVP, the evaluation set as a dataloader of 512-example chunks). Loading the model and
    data is outside both timings. Against the exact spectrum where the dense Hessian can be built; else
    (ResNet-18) against wdbound's certified values: its top-5 residual bounds and its trace's stderr."""
    from wdbound.curvature import auto_hvp_mode
    from wdbound.spectrum import estimate_spectrum, memory_plan, spectrum_command_settings

    out = {}
    for name, model, dataset, exact_ok, _ in cases(args):
        settings = spectrum_command_settings(device=device.type)  # `wdbound spectrum`'s defaults
        mode = auto_hvp_mode(model)
        exact_ev = None
        if exact_ok:
            op = HessianOperator(model, dataset, device=device, dtype=torch.float64, mode=mode, batch_size=512)
            exact_ev = exact_eigenvalues(name, op, args.exact_cache)
        op = HessianOperator(model, dataset, device=device, dtype=getattr(torch, settings.dtype), mode="auto",
                             batch_size=512)
        ours, seconds, peak = timed(device, lambda: estimate_spectrum(op, settings, memory_plan(op, settings)))
        nodes, weights = ours.slq.measure()
        found = {"top": ours.top.values.tolist(), "trace": ours.trace.estimate, "nodes": nodes, "weights": weights}
        rows = {"wdbound": {"seconds": seconds, "hvps": ours.hvps, "peak_bytes": peak,
                            "trace_stderr": ours.trace.stderr, "trace_method": ours.trace.method,
                            "top_steps": ours.top.steps, "top_residuals": ours.top.residuals.tolist(),
                            "top_bounds": ours.top.bounds.tolist(), "probes": ours.provenance["settings"]["probes"],
                            "trace_probes": int(len(ours.trace.samples)), "top_from": ours.provenance["top_from"],
                            "single_pass": ours.provenance.get("single_pass"),
                            "kept_graph": ours.provenance.get("kept_graph")}}
        if exact_ev is not None:
            rows["wdbound"].update(accuracy(found, exact_ev, exact_ev.sum()),
                                   top5_max_rel_error=top5_error(found, exact_ev))
        if args.pyhessian_hvps:  # too slow to run whole here: its HVP timed on the same data, times a count
            per_hvp = pyhessian_hvp_seconds(model, dataset, device, reps=2)
            if per_hvp is not None:
                rows["pyhessian"] = {"seconds": per_hvp * args.pyhessian_hvps, "hvps": args.pyhessian_hvps,
                                     "extrapolated": True, "hvp_seconds": per_hvp}
                rows["speed_up"] = rows["pyhessian"]["seconds"] / seconds
                rows["wdbound"].update(bounded_figures(ours))
            out[name] = rows
            _print_defaults(name, op.dim, exact_ev, rows)
            continue
        theirs = pyhessian_defaults(model, dataset, device)
        if theirs is not None:
            their_found, their_seconds, hvps = theirs
            rows["pyhessian"] = {"seconds": their_seconds, "hvps": hvps, "trace_stderr": None,
                                 "trace_implied_stderr": their_found["trace_implied_stderr"],
                                 "hvps_by_part": their_found["hvps_by_part"]}
            if exact_ev is not None:
                rows["pyhessian"].update(accuracy(their_found, exact_ev, exact_ev.sum()),
                                         top5_max_rel_error=top5_error(their_found, exact_ev))
            else:  # no exact spectrum: distances to wdbound's certified values
                certified = np.asarray(ours.top.values)
                theirs_top = np.asarray(sorted(their_found["top"], reverse=True)[:len(certified)])
                rows["pyhessian"].update(
                    top5_rel_distance_to_certified=float(np.max(np.abs(theirs_top - certified) / np.abs(certified))),
                    trace_rel_distance=abs(their_found["trace"] - ours.trace.estimate) / abs(ours.trace.estimate),
                    trace_rel_implied_stderr=(their_found["trace_implied_stderr"] or math.nan) / abs(their_found["trace"]),
                    density_w1_between_tools_over_lambda_max=wasserstein1(
                        their_found["nodes"], their_found["weights"], nodes, weights) / abs(certified[0]))
                rows["wdbound"].update(bounded_figures(ours))
            rows["speed_up"] = their_seconds / seconds
        out[name] = rows
        _print_defaults(name, op.dim, exact_ev, rows)
    return out


def bounded_figures(ours) -> dict:
    """wdbound's own accuracy where no exact spectrum exists: its top-k residuals and error bounds and its
    trace's standard error, each relative to the value."""
    scale = np.abs(ours.top.values)
    return {"top5_max_rel_residual": float(np.max(ours.top.residuals / scale)),
            "top5_max_rel_bound": float(np.max(ours.top.bounds / scale)),
            "trace_rel_stderr": ours.trace.stderr / abs(ours.trace.estimate)}


def _print_defaults(name: str, dim: int, exact_ev, rows: dict) -> None:
    if exact_ev is not None:
        print(f"\n== defaults vs defaults, {name} (d = {dim}): exact top-1 {exact_ev[-1]:.6g}, "
              f"trace {exact_ev.sum():.6g}", flush=True)
        for tool in ("wdbound", "pyhessian"):
            if tool in rows:
                r = rows[tool]
                print(f"   {tool:9s} {r['seconds']:7.2f} s {r['hvps']:5d} HVPs | top-5 max rel. err "
                      f"{r['top5_max_rel_error']:.1e} | trace rel. err {r['trace_rel_error']:.1e}"
                      + (f" (+/- {r['trace_stderr'] / abs(exact_ev.sum()):.1e})" if r["trace_stderr"]
                         else " (no error bar)") + f" | W1/lambda_max {r['density_w1_over_lambda_max']:.1e}",
                      flush=True)
    else:
        print(f"\n== defaults vs defaults, {name} (d = {dim}; no exact spectrum: wdbound's certified values)",
              flush=True)
        r = rows["wdbound"]
        print(f"   wdbound   {r['seconds']:7.2f} s {r['hvps']:5d} HVPs | top-5 within rel. error bound "
              f"{r['top5_max_rel_bound']:.1e} (rel. residual {r['top5_max_rel_residual']:.1e}) | trace rel. stderr "
              f"{r['trace_rel_stderr']:.1e}", flush=True)
        if "pyhessian" in rows and rows["pyhessian"].get("extrapolated"):
            p = rows["pyhessian"]
            print(f"   pyhessian {p['seconds']:7.2f} s {p['hvps']:5d} HVPs, extrapolated: its HVP measured here "
                  f"({p['hvp_seconds']:.2f} s) x {p['hvps']} HVPs (--pyhessian-hvps)", flush=True)
        elif "pyhessian" in rows:
            p = rows["pyhessian"]
            print(f"   pyhessian {p['seconds']:7.2f} s {p['hvps']:5d} HVPs | top-5 off the certified values by "
                  f"{p['top5_rel_distance_to_certified']:.1e} | trace off by {p['trace_rel_distance']:.1e} "
                  f"(its samples' rel. stderr {p['trace_rel_implied_stderr']:.1e}) | "
                  f"W1 between the tools / lambda_max {p['density_w1_between_tools_over_lambda_max']:.1e}",
                  flush=True)
    if "speed_up" in rows:
        print(f"   PyHessian time / wdbound time: x{rows['speed_up']:.2f}", flush=True)


TARGETS = {"top1": 1e-3, "trace": 2e-2, "w1": 1e-3}  # equal accuracy: top-1 rel. error, trace rel. error, W1/lambda_max


def equal_accuracy(args, device) -> dict:
    """The equal-accuracy section: against the exact spectrum where the dense Hessian can be built
    (:func:`equal_accuracy_exact`), else (ResNet-18), or with ``--equal-reference lanczos``, against a long
    Lanczos reference (:func:`equal_accuracy_referenced`)."""
    out = {}
    for case in cases(args):
        name, _, _, exact_ok, _ = case
        if exact_ok and args.equal_reference == "exact":
            out[name] = equal_accuracy_exact(case, args, device)
        else:
            out[name] = equal_accuracy_referenced(case, args, device)
    return out


def equal_accuracy_exact(case, args, device) -> dict:
    """Each tool's cheapest settings (one seed) that reach the same accuracy against the exact spectrum:
    top-1 relative error <= 1e-3, trace relative error <= 2 %, density W1 <= 1e-3 x lambda_max (TARGETS).
    PyHessian's three calls are independent: for each, the cheapest setting of a grid that meets its target
    (eigenvalues(top_n=1, tol), trace(maxIter=n, tol=0), density(iter=m, n_v=1)); the times add up. wdbound's
    single pass gives all three at once: the cheapest (probes, density tol, trace rtol) of a grid meeting all."""
    name, model, dataset, _, _ = case
    ev = exact_eigenvalues(name, HessianOperator(model, dataset, dtype=torch.float64, mode="double-backward"),
                           args.exact_cache)
    lam, trace = float(ev[-1]), float(ev.sum())

    def w1_of(nodes, weights) -> float:
        return wasserstein1(nodes, weights, ev, np.ones_like(ev)) / lam

    def errors_of(found) -> dict:
        return {"top1": abs(found.top.values[0] - lam) / lam,
                "trace": abs(found.trace.estimate - trace) / abs(trace), "w1": w1_of(*found.slq.measure())}

    grid = [{"probes": probes, "density_tol": density_tol, "trace_rtol": trace_rtol}
            for probes in (2, 3, 4, 6, 8) for density_tol in (2e-3, 1e-3, 5e-4, 2.5e-4)
            for trace_rtol in (0.04, 0.02, 0.01)]
    ours = wdbound_grid(model, dataset, device, grid, errors_of, TARGETS, first_only=False)
    theirs = pyhessian_cheapest(model, dataset, device, lam, w1_of, TARGETS, trace=trace)
    return report_equal(name, TARGETS, ours, theirs)


# No exact spectrum: see equal_accuracy_referenced.
REFERENCED_TARGETS = {"top1": 1e-3, "trace_stderr": 0.10, "w1": 1e-3}


def equal_accuracy_referenced(case, args, device) -> dict:
    """Equal accuracy where the dense Hessian cannot be built (ResNet-18's 11 M parameters), against a
    long-Lanczos reference (:func:`lanczos_reference`): top-1 relative error <= 1e-3 and density W1 <= 1e-3 x
    lambda_max against the reference, and a trace standard error <= 10 % of the trace (``--trace-stderr-target``;
    no exact trace exists;
    the standard error is the expected size of the error, the one target both tools can be held to: wdbound
    reports it, PyHessian's samples imply it). PyHessian's trace draws samples in chunks until the first count
    >= 8 whose standard error meets the target (wdbound's deflated trace stops by the same rule); its
    seconds are the measured ones prorated to that count. wdbound: the first of its grid meeting all three.
    Both tools' per-sample spread also gives the samples a 2 % standard error would take (a projection)."""
    name, model, dataset, _, _ = case
    targets = {**REFERENCED_TARGETS, "trace_stderr": args.trace_stderr_target}
    ref = lanczos_reference(name, model, dataset, device, args)
    lam = ref["top1"]

    def w1_of(nodes, weights) -> float:
        return wasserstein1(nodes, weights, ref["nodes"], ref["weights"]) / lam

    def errors_of(found) -> dict:
        return {"top1": abs(found.top.values[0] - lam) / lam,
                "trace_stderr": found.trace.stderr / abs(found.trace.estimate), "w1": w1_of(*found.slq.measure())}

    grid = [{"probes": None, "density_tol": tol, "trace_rtol": targets["trace_stderr"]}
            for tol in (2e-3, 1e-3, 5e-4, 2.5e-4)]
    ours = wdbound_grid(model, dataset, device, grid, errors_of, targets, first_only=True)
    theirs = pyhessian_cheapest(model, dataset, device, lam, w1_of, targets)
    out = report_equal(name, targets, ours, theirs)
    out["reference"] = {k: v for k, v in ref.items() if k not in ("nodes", "weights")}
    projection = {}
    best = out["wdbound"]["best"]
    if best:
        projection["wdbound"] = (best["trace_rel_sample_std"] / 0.02) ** 2
    if theirs and theirs.get("trace"):
        projection["pyhessian"] = (theirs["trace"]["rel_sample_std"] / 0.02) ** 2
    out["trace_2pc_samples_projected"] = projection
    print("   reference: top-1 {:.6g} (rel. bound {:.1e}); density of {} probes x {} steps, its W1 to its own "
          "{}-step rule {:.1e} x lambda_max, sampling bound E W1 <= {:.1e}".format(
              lam, ref["top1_rel_bound"], ref["probes"], ref["steps"], ref["steps"] // 2, ref["self_w1_half"],
              ref["sampling_w1_bound"]), flush=True)
    if "exact_top1_rel_error" in ref:
        print(f"   reference vs exact: top-1 {ref['exact_top1_rel_error']:.1e}, W1/lambda_max {ref['exact_w1']:.1e}",
              flush=True)
    if projection:
        print("   trace to a 2 % standard error (projected from the per-sample spread): "
              + ", ".join(f"{tool} {n:.0f} samples" for tool, n in projection.items()), flush=True)
    return out


def lanczos_reference(name, model, dataset, device, args) -> dict:
    """The reference of :func:`equal_accuracy_referenced`: top-1 by wdbound's Lanczos certified to 1e-4
    relative (gap-refined residual bound; a tenth of the target), and the density of ``--reference-probes``
    Rademacher probes x ``--reference-steps`` low-memory Lanczos steps (float32 HVPs, float64 recurrence, about
    four vectors per probe whatever the steps: an 11 M-parameter basis of 150 steps would not fit). Its own accuracy is printed
    beside it: the W1 between its half-length and full-length rules (the quadrature's convergence) and the
    sampling bound range / sqrt(2 d k) of E W1. Seeds 1000 and 1001, independent of both tools' seed 0; kept
    as ``<cache>/<name>-n<N>-reference-k<k>-m<m>.npz`` between runs. With an exact spectrum at hand (the
    zoo), also its errors against it: the check that the reference is one."""
    probes, steps = args.reference_probes, args.reference_steps
    path = (args.exact_cache / f"{name}-n{len(dataset)}-reference-k{probes}-m{steps}.npz"
            if args.exact_cache is not None else None)
    if path is not None and path.is_file():
        saved = np.load(path)
        out = {k: (saved[k] if k in ("nodes", "weights") else float(saved[k])) for k in saved.files}
        out["probes"], out["steps"] = int(out["probes"]), int(out["steps"])
        return out
    from wdbound.spectrum import auto_kept_graph

    op = HessianOperator(model, dataset, device=device, dtype=torch.float32, mode="auto", batch_size=512)
    op.use_kept_graph(auto_kept_graph(op))
    start = time.perf_counter()
    # float32 HVPs: a residual below ~1e-5 relative may not be reachable; a restarted basis caps the memory
    top = top_eigenvalues(op, 1, torch.Generator().manual_seed(1000), tol=1e-4, max_steps=200, restart=50)
    gen = torch.Generator().manual_seed(1001)
    run = lanczos_blocks(op, lambda count: rademacher(count, op.dim, gen, op.dtype, op.device), probes, steps,
                         block=1)
    density = slq_from_run(run, op.dim)
    nodes, weights = density.measure()
    lam = float(top.values[0])
    spread = float(nodes.max() - min(nodes.min(), 0.0))
    out = {"top1": lam, "top1_rel_bound": float(top.bounds[0] / abs(lam)), "probes": probes, "steps": steps,
           "hvps": int(op.matvecs), "seconds": time.perf_counter() - start, "nodes": nodes, "weights": weights,
           "self_w1_half": wasserstein1(*density.truncated(steps // 2).measure(), nodes, weights) / lam,
           "sampling_w1_bound": spread / math.sqrt(2 * op.dim * probes) / lam}
    exact = exact_path(name, args.exact_cache)
    if exact is not None and exact.is_file():  # only a cached one: building it is what this reference avoids
        ev = np.load(exact)
        out["exact_top1_rel_error"] = abs(lam - ev[-1]) / ev[-1]
        out["exact_w1"] = wasserstein1(nodes, weights, ev, np.ones_like(ev)) / ev[-1]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **out)
    return out


def wdbound_grid(model, dataset, device, grid: list[dict], errors_of, targets: dict, first_only: bool) -> dict:
    """`wdbound spectrum` (top_k 1) at each of ``grid``'s settings {probes, density_tol, trace_rtol}, in
    order: {best: the fastest run meeting every target, grid: every run}. ``first_only``: stop at the first
    that meets them (the grid is ordered by cost; on ResNet-18 each run takes a minute or more)."""
    from wdbound.spectrum import estimate_spectrum, memory_plan, spectrum_command_settings

    runs = []
    for chosen in grid:
        settings = spectrum_command_settings(device=device.type, top_k=1, **chosen)
        op = HessianOperator(model, dataset, device=device, dtype=torch.float32, mode="auto")
        found, seconds, _ = timed(device, lambda: estimate_spectrum(op, settings, memory_plan(op, settings)))
        errors = errors_of(found)
        samples = len(found.trace.samples)
        runs.append({"settings": {**chosen, "probes": found.provenance["settings"]["probes"]}, "seconds": seconds,
                     "hvps": found.hvps, "errors": errors, "meets": all(errors[k] <= targets[k] for k in targets),
                     "trace_samples": samples,
                     "trace_rel_sample_std": found.trace.stderr * math.sqrt(samples) / abs(found.trace.estimate)})
        print(f"   wdbound run {runs[-1]['settings']}: {seconds:.2f} s, {found.hvps} HVPs, "
              + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()), flush=True)
        if first_only and runs[-1]["meets"]:
            break
    meeting = [r for r in runs if r["meets"]]
    return {"best": min(meeting, key=lambda r: r["seconds"]) if meeting else None, "grid": runs}


def report_equal(name: str, targets: dict, ours: dict, theirs: dict | None) -> dict:
    """Print one model's equal-accuracy result and return its JSON entry."""
    out = {"targets": targets, "wdbound": ours, "pyhessian": theirs}
    print(f"\n== equal accuracy, {name}: " + ", ".join(f"{k} <= {v:g}" for k, v in targets.items()), flush=True)
    best = ours["best"]
    if best:
        print(f"   wdbound   {best['seconds']:7.2f} s {best['hvps']:4d} HVPs  {best['settings']}  "
              + ", ".join(f"{k} {v:.1e}" for k, v in best["errors"].items()), flush=True)
    else:
        print("   wdbound   no setting of its grid met every target", flush=True)
    if theirs:
        total = sum(part["seconds"] for part in theirs.values() if part)
        print(f"   pyhessian {total:7.2f} s {sum(p['hvps'] for p in theirs.values() if p):4d} HVPs  "
              + "; ".join(f"{k}: {p['setting']} ({p['error']:.1e})" if p else f"{k}: not reached"
                          for k, p in theirs.items()), flush=True)
        if best and all(theirs.values()):
            out["speed_up"] = total / best["seconds"]
            print(f"   PyHessian time / wdbound time: x{out['speed_up']:.2f}", flush=True)
    return out


def pyhessian_cheapest(model, dataset, device, lam: float, w1_of, targets: dict, *, trace: float | None = None):
    """For each PyHessian call, the cheapest setting of a grid meeting its target: {part: {setting, seconds,
    hvps, error} or None}; None without PyHessian. top-1 relative error to ``lam`` <= ``targets["top1"]``;
    density ``w1_of(nodes, weights)`` <= ``targets["w1"]``; the trace within ``targets["trace"]`` of ``trace``,
    or (``trace`` None) with a standard error <= ``targets["trace_stderr"]`` relative
    (:func:`pyhessian_trace_to_stderr`)."""
    try:
        from pyhessian import hessian
    except ImportError:
        return None
    from wdbound.backends.pyhessian_backend import CountingCriterion
    from wdbound.backends.pyhessian_compat import torch_eig_shim

    op = HessianOperator(model, dataset, device=device, dtype=torch.float32, mode="double-backward", batch_size=512)
    batches = list(op.chunks())

    def attempt(call, seed: int = 0):
        criterion = CountingCriterion()
        torch.manual_seed(seed)
        engine = hessian(stock_layers(op.model), criterion, dataloader=batches, cuda=device.type == "cuda")
        result, seconds, _ = timed(device, lambda: call(engine))
        return result, seconds, criterion.calls // max(len(batches), 1)

    def density(engine, m):
        with torch_eig_shim():
            nodes, weights = engine.density(iter=m, n_v=1)
        return (np.concatenate([np.asarray(n, dtype=float) for n in nodes]),
                np.concatenate([np.asarray(w, dtype=float) for w in weights]))

    grids = {
        "top1": [({"tol": t}, lambda e, t=t: e.eigenvalues(top_n=1, tol=t)[0][0],
                  lambda v: abs(v - lam) / lam) for t in (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4)],
        "trace": [({"maxIter": n}, lambda e, n=n: float(np.mean(e.trace(maxIter=n, tol=0.0))),
                   lambda v: abs(v - trace) / abs(trace)) for n in (5, 10, 20, 40, 80, 160)] if trace is not None
        else None,
        "w1": [({"iter": m, "n_v": 1}, lambda e, m=m: density(e, m), lambda v: w1_of(*v))
               for m in (10, 20, 40, 70, 100, 150)],
    }
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for part, grid in grids.items():
            if grid is None:
                out[part] = pyhessian_trace_to_stderr(attempt, targets["trace_stderr"])
                continue
            out[part] = None
            for setting, call, error_of in grid:  # ordered by cost: the first that meets the target is the cheapest
                value, seconds, hvps = attempt(call)
                error = float(error_of(value))
                print(f"   pyhessian {part} {setting}: {seconds:.2f} s, {hvps} HVPs, error {error:.1e}", flush=True)
                if error <= targets[part]:
                    out[part] = {"setting": setting, "seconds": seconds, "hvps": hvps, "error": error}
                    break
    return out


def pyhessian_trace_to_stderr(attempt, target: float, chunk: int = 20, cap: int = 1000, least: int = 8):
    """PyHessian's trace samples (``trace(maxIter=chunk, tol=0)``, a fresh seed per chunk: independent
    Rademacher probes) until the first count >= ``least`` whose standard error is <= ``target`` x |mean|;
    its seconds are the chunks' measured time prorated to that count. None when ``cap`` samples do not.
    A chunk may return fewer samples: PyHessian's stop test divides by its signed running mean
    (``/ (trace + 1e-6) < tol``), so a negative running mean ends the chunk even at tol 0; every sample drawn
    is kept, and the next chunk goes on with a new seed."""
    samples: list[float] = []
    seconds = 0.0
    while len(samples) < cap:
        values, spent, _ = attempt(lambda e: e.trace(maxIter=chunk, tol=0.0), seed=len(samples))
        per_sample = spent / max(len(values), 1)
        for i, value in enumerate(values):
            samples.append(float(value))
            if len(samples) >= least:
                mean, stderr = mean_stderr(np.asarray(samples))
                if stderr <= target * abs(mean):
                    n = len(samples)
                    return {"setting": {"maxIter": n, "tol": 0.0}, "seconds": seconds + per_sample * (i + 1),
                            "hvps": n, "error": stderr / abs(mean), "trace": mean,
                            "rel_sample_std": stderr * math.sqrt(n) / abs(mean)}
        seconds += spent
        mean, stderr = mean_stderr(np.asarray(samples))
        print(f"   pyhessian trace: {len(samples)} samples, {seconds:.1f} s, rel. stderr {stderr / abs(mean):.1e}",
              flush=True)
    return None


def exact_path(name: str, cache: Path | None) -> Path | None:
    """Where :func:`exact_eigenvalues` keeps a model's exact spectrum: ``<cache>/<name>-eigenvalues.npy``."""
    return cache / f"{name}-eigenvalues.npy" if cache is not None else None


def exact_eigenvalues(name: str, op, cache: Path | None) -> np.ndarray:
    """The exact spectrum (dense Hessian, eigvalsh), kept at :func:`exact_path` between runs."""
    path = exact_path(name, cache)
    if path is not None and path.is_file():
        return np.load(path)
    values = np.linalg.eigvalsh(dense_matrix(op).double().cpu().numpy())
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, values)
    return values


def top5_error(found, exact_ev) -> float:
    """The largest relative error of the five largest eigenvalues."""
    top = np.asarray(sorted(found["top"], reverse=True)[:5])
    exact = exact_ev[::-1][: len(top)]
    return float(np.max(np.abs(top - exact) / np.abs(exact)))


def pyhessian_hvp_seconds(model, dataset, device, reps: int) -> float | None:
    """Seconds of one PyHessian HVP (its dataloader path, float32, as in :func:`pyhessian_defaults`) on
    ``dataset``; None without PyHessian."""
    try:
        from pyhessian import hessian
    except ImportError:
        return None
    from wdbound.backends.pyhessian_backend import CountingCriterion

    op = HessianOperator(model, dataset, device=device, dtype=torch.float32, mode="double-backward", batch_size=512)
    engine = hessian(stock_layers(op.model), CountingCriterion(), dataloader=list(op.chunks()),
                     cuda=device.type == "cuda")
    vector = [torch.randn_like(p) for p in engine.params]
    engine.dataloader_hv_product(vector)
    _, seconds, _ = timed(device, lambda: [engine.dataloader_hv_product(vector) for _ in range(reps)])
    return seconds / reps


def pyhessian_defaults(model, dataset, device):
    """PyHessian 0.1 at its defaults: (found, seconds, HVPs), or None without PyHessian."""
    try:
        from pyhessian import hessian
    except ImportError:
        return None
    from wdbound.backends.pyhessian_backend import CountingCriterion
    from wdbound.backends.pyhessian_compat import torch_eig_shim

    op = HessianOperator(model, dataset, device=device, dtype=torch.float32, mode="double-backward", batch_size=512)
    batches = list(op.chunks())
    criterion = CountingCriterion()
    torch.manual_seed(0)
    engine = hessian(stock_layers(op.model), criterion, dataloader=batches, cuda=device.type == "cuda")

    parts = {}

    def counted(name, fn):
        before = criterion.calls
        value = fn()
        parts[name] = (criterion.calls - before) // max(len(batches), 1)
        return value

    def run():
        values, _ = counted("top5", lambda: engine.eigenvalues(top_n=5))
        samples = counted("trace", engine.trace)
        with torch_eig_shim():
            nodes, weights = counted("density", engine.density)
        return values, samples, nodes, weights

    (values, samples, nodes, weights), seconds, _ = timed(device, run)
    samples = np.asarray(samples, dtype=float)
    found = {"top": sorted(values, reverse=True), "trace": float(np.mean(samples)),
             "nodes": np.concatenate([np.asarray(n, dtype=float) for n in nodes]),
             "weights": np.concatenate([np.asarray(w, dtype=float) for w in weights]),
             # PyHessian reports no error bar; this is the one its samples imply (their spread / sqrt(count))
             "trace_implied_stderr": float(samples.std(ddof=1) / np.sqrt(len(samples))) if len(samples) > 1 else None,
             "hvps_by_part": parts}
    return found, seconds, criterion.calls // max(len(batches), 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", default="all", choices=["all", "defaults", "equal-accuracy", "equal-settings"],
                        help="defaults: each tool at its defaults; equal-accuracy: each tool's cheapest settings "
                             "reaching the same errors; equal-settings: the same k and m for both")
    parser.add_argument("--models", default="digits-mlp,digits-cnn,cifar-cnn,resnet18")
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--cifar-n", type=int, default=32, help="random 32x32 images for the CIFAR-sized CNN")
    parser.add_argument("--resnet-n", type=int, default=8,
                        help="32x32 images for ResNet-18 (random ones; digits32 test images for resnet18-trained)")
    parser.add_argument("--full-resnet", action="store_true", help="also run the full analysis on ResNet-18")
    parser.add_argument("--pyhessian-hvps", type=int, default=0,
                        help="--section defaults: do not run PyHessian's defaults whole; time its HVP on the same "
                             "data and multiply by this count (the HVPs its defaults took on a smaller run)")
    parser.add_argument("--equal-reference", default="exact", choices=["exact", "lanczos"],
                        help="--section equal-accuracy: the exact spectrum where it can be built (else the Lanczos "
                             "reference), or the long-Lanczos reference for every model (lanczos: checks it "
                             "against the exact spectrum on the zoo)")
    parser.add_argument("--trace-stderr-target", type=float, default=REFERENCED_TARGETS["trace_stderr"],
                        help="equal accuracy against the Lanczos reference: the trace's relative standard error")
    parser.add_argument("--reference-probes", type=int, default=2, help="probes of the Lanczos reference density")
    parser.add_argument("--reference-steps", type=int, default=150, help="steps of the Lanczos reference density")
    parser.add_argument("--reps", type=int, default=5, help="repetitions for the HVP/gradient timing")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--exact-cache", type=Path, default=None,
                        help="folder keeping the exact eigenvalues between runs (the dense Hessian is slow to build)")
    args = parser.parse_args(argv)
    args.models = args.models.split(",")
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    report = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "torch": torch.__version__, "threads": torch.get_num_threads(), "models": {}}
    if args.section in ("all", "defaults"):
        report["defaults_vs_defaults"] = defaults_vs_defaults(args, device)
    if args.section in ("all", "equal-accuracy"):
        report["equal_accuracy"] = equal_accuracy(args, device)
    for name, model, dataset, exact_ok, full in (cases(args) if args.section in ("all", "equal-settings") else []):
        def factory(mode, model=model, dataset=dataset):
            return HessianOperator(model, dataset, device=device, dtype=dtype, mode=mode, batch_size=512)

        op = factory("forward-over-reverse")
        entry = {"d": op.dim, "n_eval": op.n_eval, "costs": hvp_costs(factory, args.reps, device)}
        print(f"\n== {name}: d = {op.dim}, n = {op.n_eval}", flush=True)
        print("   " + ", ".join(f"{k} {v:.3g}" for k, v in entry["costs"].items()), flush=True)
        if full:
            ours, ours_found = run_wdbound(op, args, device)
            theirs, theirs_found = run_pyhessian(factory("double-backward"), args, device)
            curv, curv_found = run_curvlinops(op, args, device)
            entry.update(wdbound=ours, pyhessian=theirs, curvlinops=curv)
            if exact_ok and op.dim <= 20_000:
                h = dense_matrix(op).double().cpu().numpy()
                ev = np.linalg.eigvalsh(h)
                entry["exact"] = {"lambda_max": float(ev[-1]), "trace": float(np.trace(h))}
                entry["accuracy"] = {"wdbound": accuracy(ours_found, ev, np.trace(h))}
                if theirs_found:
                    entry["accuracy"]["pyhessian"] = accuracy(theirs_found, ev, np.trace(h))
                if curv_found:
                    entry["accuracy"]["curvlinops"] = {"top1_rel_error": abs(curv_found["top"][0] - ev[-1]) / ev[-1]}
            for task in ("density", "top5", "trace", "diagonal", "full"):
                a = ours[task]
                b = (theirs or {}).get(task)
                ratio = (b["seconds"] / a["seconds"]) if b else math.nan
                print(f"   {task:9s} wdbound {a['seconds']:7.2f} s {a['hvps']:5d} HVPs | PyHessian "
                      + (f"{b['seconds']:7.2f} s {b['hvps']:5d} HVPs | speed-up x{ratio:.2f}" if b else "n/a"),
                      flush=True)
            for tool, acc in (entry.get("accuracy") or {}).items():
                print(f"   accuracy {tool}: " + ", ".join(f"{k} {v:.2e}" for k, v in acc.items()), flush=True)
        report["models"][name] = entry
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path = args.out / f"compare-{args.device.replace(':', '')}-{stamp}.json"
    json_path.write_text(json.dumps(report, indent=2, default=float) + "\n")
    (args.out / "summary.md").write_text(summary(report) + "\n")
    print(f"\nwrote {json_path} and {args.out / 'summary.md'}")
    return 0


def summary(report) -> str:
    s = report["settings"]
    lines = [f"# wdbound vs PyHessian ({s['device']}, {s['dtype']}, {report['threads']} threads, torch "
             f"{report['torch']}; k = {s['probes']} probes, m = {s['steps']} steps)", "",
             "| model | d | task | wdbound s | HVPs | PyHessian s | HVPs | speed-up |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for name, e in report["models"].items():
        for task in ("density", "top5", "trace", "diagonal", "full"):
            if "wdbound" not in e:
                continue
            a, b = e["wdbound"][task], (e.get("pyhessian") or {}).get(task)
            lines.append(f"| {name} | {e['d']} | {task} | {a['seconds']:.2f} | {a['hvps']} | "
                         + (f"{b['seconds']:.2f} | {b['hvps']} | x{b['seconds'] / a['seconds']:.2f} |" if b
                            else "n/a | | |"))
    lines += ["", "| model | grad s | HVP/grad (fwd-over-rev) | HVP/grad (double backward) | HVP/grad (PyHessian) |",
              "|---|---:|---:|---:|---:|"]
    for name, e in report["models"].items():
        c = e["costs"]
        lines.append(f"| {name} | {c['gradient_seconds']:.3g} | {c['hvp_forward-over-reverse_over_grad']:.2f} | "
                     f"{c['hvp_double-backward_over_grad']:.2f} | {c.get('hvp_pyhessian_over_grad', float('nan')):.2f} |")
    if report.get("defaults_vs_defaults"):
        lines += ["", "## Defaults vs defaults (`wdbound spectrum` vs PyHessian 0.1 as they come)", "",
                  "| model | tool | s | HVPs | top-5 max rel. err | trace rel. err | trace stderr | "
                  "W1/lambda_max |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for name, rows in report["defaults_vs_defaults"].items():
            for tool in ("wdbound", "pyhessian"):
                if tool in rows:
                    r = rows[tool]
                    se = "none" if not r.get("trace_stderr") else f"{r['trace_stderr']:.3g}"
                    nan = float("nan")  # no exact spectrum (ResNet-18): see the JSON's distances instead
                    tool = f"{tool} (extrapolated)" if r.get("extrapolated") else tool
                    lines.append(f"| {name} | {tool} | {r['seconds']:.2f} | {r['hvps']} | "
                                 f"{r.get('top5_max_rel_error', nan):.1e} | {r.get('trace_rel_error', nan):.1e} | "
                                 f"{se} | {r.get('density_w1_over_lambda_max', nan):.1e} |")
    if report.get("equal_accuracy"):
        lines += ["", "## Equal accuracy (each tool's cheapest settings meeting the same targets)", "",
                  "| model | tool | s | HVPs | settings |", "|---|---|---:|---:|---|"]
        for name, rows in report["equal_accuracy"].items():
            best = rows["wdbound"]["best"]
            if best:
                lines.append(f"| {name} | wdbound | {best['seconds']:.2f} | {best['hvps']} | {best['settings']} |")
            theirs = rows["pyhessian"] or {}
            if theirs and all(theirs.values()):
                lines.append(f"| {name} | pyhessian | {sum(p['seconds'] for p in theirs.values()):.2f} | "
                             f"{sum(p['hvps'] for p in theirs.values())} | "
                             + "; ".join(f"{k} {p['setting']}" for k, p in theirs.items()) + " |")
    lines += ["", "| model | tool | top-1 rel. error | density W1/lambda_max | trace rel. error |", "|---|---|---:|---:|---:|"]
    for name, e in report["models"].items():
        for tool, acc in (e.get("accuracy") or {}).items():
            lines.append(f"| {name} | {tool} | {acc.get('top1_rel_error', float('nan')):.2e} | "
                         f"{acc.get('density_w1_over_lambda_max', float('nan')):.2e} | "
                         f"{acc.get('trace_rel_error', float('nan')):.2e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
