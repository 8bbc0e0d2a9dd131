"""Goal 3 over seeds: ``wdbound spectrum``'s defaults (float32, the command's memory plan; ``--api``:
``Hessian.spectrum()``, no plan) on the ResNet-18 of ``benchmarks/resnet18_err.py`` for seeds 0..N-1, then
PyHessian's defaults once (on the model's stock layers), in one process.

One seed of the spectrum says little about its cost: the deflated trace draws probes until its standard
error meets the target, so its HVP count is a random variable. This prints each seed's time, HVPs and trace
(± its standard error), PyHessian's time, HVPs and trace (± the error its own samples imply), and the ratios.

    python benchmarks/resnet18_err.py --out DIR --stem imagenet --epochs 4     # a trained ResNet-18, once
    python benchmarks/goal3_seeds.py DIR/resnet18-imagenet-digits32-adamw.pt --seeds 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import wdbound  # before torch: its huge-page setting reaches every tool in this process

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import pyhessian_defaults  # noqa: E402
from peers import resnet18_model_and_data  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def command_spectrum(operator, seed: int):
    """What ``wdbound spectrum`` runs after loading: its defaults (float32 here) under the memory plan of
    ``--memory auto``, planned and timed like the command (the plan is part of its time)."""
    from wdbound.spectrum import estimate_spectrum, memory_plan, spectrum_command_settings

    settings = spectrum_command_settings(dtype="float32", seed=seed)
    return estimate_spectrum(operator, settings.for_dim(operator.dim), memory_plan(operator, settings))


def one_run(model, data, seed: int, api: bool) -> dict:
    """One seed: time, HVPs, trace and top-5 (and the memory plan's choices on the command path)."""
    hessian = wdbound.Hessian(model, data, dtype="float32", progress=False, seed=seed)
    start = time.perf_counter()
    found = hessian.spectrum() if api else command_spectrum(hessian.operator, seed)
    seconds = time.perf_counter() - start
    plan = found.provenance.get("memory_plan") or {}
    single = found.provenance.get("single_pass") or {}
    return {"seed": seed, "path": "api" if api else "command", "seconds": seconds,
            "hvps": int(hessian.operator.matvecs), "trace": found.trace.estimate, "trace_stderr": found.trace.stderr,
            "trace_samples": len(found.trace.samples), "top": found.top.values.tolist(),
            "plan": (f"single pass {single.get('steps')} of {plan.get('single_pass_steps')} steps, heap reuse "
                     f"{plan.get('heap_reuse')}, top from {found.provenance.get('top_from')}") if plan else ""}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("resnet18", help="the checkpoint benchmarks/resnet18_err.py wrote (its digits32/ beside it)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--resnet-n", type=int, default=64, help="test images (the first n)")
    parser.add_argument("--tag", default="")
    parser.add_argument("--api", action="store_true",
                        help="time Hessian.spectrum() (no memory plan) instead of the command's path (its plan "
                             "under --memory auto)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # one seed of the command path, JSON out
    args = parser.parse_args(argv)
    model, data, *_ = resnet18_model_and_data(args)
    if args.worker is not None:
        print(json.dumps(one_run(model, data, args.worker, api=False)))
        return
    runs = []
    for seed in range(args.seeds):
        if args.api:
            runs.append(one_run(model, data, seed, api=True))
        else:  # a process of its own, as the command runs: the memory plan sees what one run holds
            command = [sys.executable, __file__, args.resnet18, "--resnet-n", str(args.resnet_n), "--worker", str(seed)]
            runs.append(json.loads(subprocess.run(command, check=True, capture_output=True, text=True
                                                  ).stdout.strip().splitlines()[-1]))
        seconds = runs[-1]["seconds"]
        print(f"wdbound seed {seed}: {seconds:6.1f} s {runs[-1]['hvps']:4d} HVPs  trace {runs[-1]['trace']:.1f} "
              f"± {runs[-1]['trace_stderr'] / abs(runs[-1]['trace']):.1%} ({runs[-1]['trace_samples']} samples)"
              f"{'' if args.api else ', plan: ' + runs[-1]['plan']}", flush=True)
    values, seconds, hvps = pyhessian_defaults(model.float(), data, torch.device("cpu"))
    implied = values["trace_implied_stderr"]
    print(f"PyHessian:  {seconds:6.1f} s {hvps:4d} HVPs  trace {values['trace']:.1f} ± "
          f"{implied / abs(values['trace']):.1%} (implied by its samples); HVPs by part {values['hvps_by_part']}")
    times = np.array([r["seconds"] for r in runs])
    print(f"ratio PyHessian / wdbound: median {seconds / np.median(times):.2f}, per seed "
          f"{np.round(seconds / times, 2).tolist()}; HVPs {int(np.median([r['hvps'] for r in runs]))} (median) "
          f"against {hvps}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"goal3-seeds-{date.today():%Y%m%d}{'-' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps({"checkpoint": str(args.resnet18), "images": args.resnet_n, "wdbound": runs,
                               "pyhessian": {"seconds": seconds, "hvps": hvps, "trace": values["trace"],
                                             "trace_implied_stderr": implied, "top": list(map(float, values["top"])),
                                             "hvps_by_part": values["hvps_by_part"]}}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
