"""Computed (not measured) memory and time of a Table I run on ImageNet: ResNet-50 and ViT-S/16 at 224x224.

Everything that can be counted is counted on this machine: the parameters d, the forward FLOPs of one
224x224 example (``torch.utils.flop_counter``), the activation floats of one example (leaf-module outputs,
the memory plan's unit), the memory plan of ``wdbound spectrum`` and ``wdbound err`` at their defaults under an
80 GB GPU budget, and the HVPs each command spends (``spectrum.expected_hvps`` plus the Theorem runs of
``err``). Two numbers are assumptions, stated in the output: the HVP costs ``HVP_OVER_FORWARD`` forward passes
(a gradient is ~3 forwards and the published eager GPU HVP/gradient ratio is 4.5-7.9x: 5x is used, 15 forwards;
under torch.compile 1.1-2.9x), and the GPU sustains ``UTILISATION`` of its dense float32 peak (TF32 off,
wdbound's default) or of its TF32 peak (``--tf32``).

    .venv/bin/python benchmarks/project_imagenet.py [--images 50000] [--measured-extra N]

The Table I cell (= `wdbound err` at its defaults) is counted at its caps (the top-1 run at most 60 steps beside
the 1,280-step density run, the lower end at most 150); "err" below is `wdbound err --theorem on`.
``--measured-extra N`` also projects it with the density run as planned and the rest at what a real cell spent
besides its density run (110 on the ResNet-50 of ``benchmarks/resnet18_err.py --arch resnet50 --stem imagenet``:
docs/scale.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from wdbound.memory import activation_floats, plan_memory
from wdbound.models import build_model
from wdbound import defaults
from wdbound.spectrum import SpectrumSettings, expected_hvps, spectrum_command_settings

HVP_OVER_FORWARD = 15.0  # 3 forwards per gradient x 5 (eager GPU HVP / gradient, published 4.5-7.9)
UTILISATION = 0.5
GPUS = {"A100-80GB": {"fp32": 19.5e12, "tf32": 156e12}, "H100-80GB (SXM)": {"fp32": 67e12, "tf32": 495e12}}
MODELS = {"resnet50": ("resnet50", {"num_classes": 1000, "cifar_stem": False}),
          "vit_small_patch16_224": ("timm:vit_small_patch16_224", {"num_classes": 1000})}


def forward_flops(model: torch.nn.Module, example: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example)
    return int(counter.get_total_flops())


def err_hvps(settings: SpectrumSettings, dim: int) -> int:
    """`wdbound err` at its defaults on the SLQ path: the spectrum (with the extra Hutchinson probes of Q's
    diagonal), Theorem runs (AdamW: ln det on A and the trace run, plus A's ends; l2-Adam: the trace run), and
    up to the adaptive refinement's cap (0 by default)."""
    theorem = 3 * settings.theorem_probes * settings.theorem_steps + 2 * defaults.ENDS_MAX_STEPS  # + A's two ends
    return expected_hvps(settings, dim) + theorem + settings.refine_cap()


def cell_hvps(settings: SpectrumSettings, dim: int) -> int:
    """One Table I cell: Corollary 3's err/d with its interval (the density run, top-1 and the spectrum's ends;
    no Theorem runs, no diagonal)."""
    return expected_hvps(settings, dim)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5_000)
    parser.add_argument("--chunk", type=int, default=64, help="examples per HVP pass per GPU (the plan may lower it)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/project_imagenet.json"))
    parser.add_argument("--measured-extra", type=int, default=None,
                        help="HVPs a real Table I cell spent besides its density run (the top-1 run, the lower end, "
                             "the zero rows and the logit shift): also project a cell at that")
    args = parser.parse_args()
    out = {"assumptions": {"hvp_over_forward": HVP_OVER_FORWARD, "utilisation": UTILISATION, "gpus": GPUS,
                           "images": args.images, "measured_extra_hvps": args.measured_extra}}
    for name, (arch, kwargs) in MODELS.items():
        try:
            model = build_model(arch, **kwargs).eval()
        except Exception as exc:  # timm missing
            print(f"{name}: skipped ({exc})")
            continue
        example = torch.zeros(1, 3, 224, 224)
        dim = sum(p.numel() for p in model.parameters())
        flops = forward_flops(model, example)
        acts = activation_floats(model, example)
        spectrum = spectrum_command_settings()
        err = SpectrumSettings(dtype="float32", top_k=1, diagonal="hutchinson",
                               diag_probes=defaults.q_diagonal_probes(dim, defaults.PROBES, diagonal="hutchinson"))
        cell = SpectrumSettings(dtype="float32", top_k=1, diagonal="hutchinson")
        entry = {"d": dim, "forward_flops": flops, "activation_floats": acts, "plans": {}, "hvps": {
            "spectrum": expected_hvps(spectrum, dim), "err": err_hvps(err, dim), "table cell": cell_hvps(cell, dim)}}
        if args.measured_extra is not None:  # the density run as planned, the rest as a real cell spent it
            density = cell.for_dim(dim)  # probes and steps as the plan fixes them for d (steps at most d)
            entry["hvps"]["table cell, measured extra"] = density.probes * density.steps + args.measured_extra
        commands = list(entry["hvps"])
        for gpus in (1, 8):
            per_gpu_images = -(-args.images // gpus)
            plan = plan_memory(dim=dim, probes=defaults.PROBES, steps=defaults.STEPS, top_k=1, hvp_bytes=4,
                               example_floats=3 * 224 * 224,
                               activation_per_example=acts, n_eval=per_gpu_images, data_resident=False,
                               hvp_chunk=args.chunk, probe_chunk=64, budget=int(0.85 * 80e9),
                               budget_source="85% of an 80 GB GPU", baseline=int(1.5 * 2**30))
            seconds_per_hvp = {gpu: {mode: per_gpu_images * flops * HVP_OVER_FORWARD / (peak * UTILISATION)
                                     for mode, peak in peaks.items()} for gpu, peaks in GPUS.items()}
            entry["plans"][gpus] = {"plan": plan.to_json(), "summary": plan.summary(),
                                    "seconds_per_hvp": seconds_per_hvp,
                                    "days": {gpu: {cmd: {mode: entry["hvps"][cmd] * s / 86400 for mode, s in modes.items()}
                                                   for cmd in commands}
                                             for gpu, modes in seconds_per_hvp.items()}}
        out[name] = entry
        print(f"{name}: d = {dim:,}, forward {flops / 1e9:.2f} GFLOP / image, {acts / 1e6:.1f} M activation floats "
              f"/ image; HVPs: spectrum {entry['hvps']['spectrum']:,}, err <= {entry['hvps']['err']:,}, "
              f"Table I cell <= {entry['hvps']['table cell']:,}")
        for gpus, p in entry["plans"].items():
            print(f"  {gpus} GPU(s), {-(-args.images // gpus):,} images each: {p['summary']}")
            for gpu, cmds in p["days"].items():
                s = p["seconds_per_hvp"][gpu]
                print(f"    {gpu}: {s['fp32']:.1f} s / HVP fp32 ({s['tf32']:.1f} s TF32); spectrum "
                      f"{cmds['spectrum']['fp32']:.2f} d ({cmds['spectrum']['tf32']:.2f} d TF32), err "
                      f"{cmds['err']['fp32']:.2f} d ({cmds['err']['tf32']:.2f} d TF32), Table I cell "
                      f"{24 * cmds['table cell']['fp32']:.1f} h ({24 * cmds['table cell']['tf32']:.1f} h TF32)"
                      + (f"; with the measured extra ({entry['hvps']['table cell, measured extra']:,} HVPs) "
                         f"{24 * cmds['table cell, measured extra']['fp32']:.2f} h "
                         f"({24 * cmds['table cell, measured extra']['tf32']:.2f} h TF32)"
                         if "table cell, measured extra" in cmds else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
