"""The memory plan: budget parsing, the choice between full and low-memory Lanczos, and the up-front refusal."""

import dataclasses
import json
import math

import pytest
import torch

from conftest import raises_param

from wdbound import memory
from wdbound.memory import (ACTIVATION_SAFETY, FULL_BASIS_MAX_BYTES, KEPT_GRAPH_FACTOR, MemoryPlan, activation_floats,
                            human_bytes, kept_graph_bytes, parse_memory, plan_memory)

GIB = 2**30


def plan(**overrides) -> MemoryPlan:
    args = dict(dim=2_000, probes=16, steps=80, top_k=5, hvp_bytes=8, example_floats=64, activation_per_example=200,
                n_eval=360, data_resident=True, hvp_chunk=512, probe_chunk=64, budget=8 * GIB, budget_source="test")
    args.update(overrides)
    return plan_memory(**args)


@pytest.mark.parametrize("text, expected", [("8GB", 8 * 10**9), ("8GiB", 8 * GIB), ("8g", 8 * GIB),
                                            ("512MB", 512 * 10**6), ("1.5GiB", int(1.5 * GIB)),
                                            ("3000000", 3_000_000)])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "8 XB", "-1GB", "10"])
def test_parse_memory_refuses(text):
    with raises_param("memory"):
        parse_memory(text)


def test_small_model_keeps_the_whole_basis():
    p = plan()
    assert p.lanczos_mode == "full" and p.restart is None and p.probe_block == 16
    # k*m*d float64 basis plus four working vectors per probe
    assert p.lanczos == 16 * 80 * 2_000 * 8 + 4 * 16 * 2_000 * 8
    assert p.peak == p.baseline + p.model + p.data + p.activations + max(p.lanczos + p.diagonal, p.top)


def test_resnet18_size_switches_to_low_memory_and_fits_8gb():
    """ResNet-18 (11.2 M parameters) at the spectrum defaults: the full basis would be 115 GB."""
    d = 11_173_962
    p = plan(dim=d, hvp_bytes=4, example_floats=3 * 32 * 32, activation_per_example=600_000, n_eval=256,
             data_resident=True, budget=8 * GIB)
    assert 16 * 80 * d * 8 > 100e9
    assert p.lanczos_mode == "low-memory" and p.restart is not None
    assert p.peak <= 8 * GIB
    # O(block) vectors, independent of the steps, beside the top-k basis and one copy of its Ritz vectors
    assert p.lanczos == 4 * p.probe_block * d * 8 + 2 * p.restart * d * 8
    # the restarted top-k basis, and its Ritz vectors the three-term density run projects off (two copies while
    # they are made)
    assert p.top == p.restart * d * 8 + 2 * p.restart * d * 8


def test_the_ritz_vectors_are_planned_only_when_they_fit():
    """The Ritz vectors the low-memory density run projects off (20 x d float64, 40 while they are made) come
    before speed, but never at the price of a run: a budget with no room for them gets the run without them."""
    d = 11_173_962
    shape = dict(dim=d, hvp_bytes=4, example_floats=3 * 32 * 32, activation_per_example=600_000, n_eval=4,
                 data_resident=True)
    roomy, tight = plan(**shape, budget=8 * GIB), plan(**shape, budget=4 * GIB)
    assert roomy.ritz and roomy.memory.ritz and roomy.peak <= 8 * GIB
    assert not tight.ritz and not tight.memory.ritz and tight.peak <= 4 * GIB
    # without them the density run still runs beside the top-k basis (it lives until the trace is done)
    assert tight.top == tight.restart * d * 8
    assert tight.lanczos == 4 * tight.probe_block * d * 8 + tight.restart * d * 8
    assert "Ritz" in roomy.summary() and "Ritz" not in tight.summary()


def test_the_plan_shrinks_the_block_then_the_chunk():
    d = 1_000_000
    roomy = plan(dim=d, mode="low-memory", budget=64 * GIB, activation_per_example=10_000)
    tight = plan(dim=d, mode="low-memory", budget=2 * GIB, activation_per_example=10_000)
    assert roomy.probe_block == 16 and tight.probe_block < 16
    tighter = plan(dim=d, mode="low-memory", budget=int(1.2 * GIB), activation_per_example=2_000_000)
    assert tighter.hvp_chunk < 512 and tighter.peak <= 1.2 * GIB


def test_nothing_fits_is_refused_up_front_naming_the_flag():
    with raises_param("memory") as info:
        plan(dim=50_000_000, budget=GIB)
    assert "needs at least" in str(info.value)
    with raises_param("lanczos"):
        plan(mode="sideways")
    with raises_param("memory"):
        plan(dim=3_000_000, mode="full", budget=4 * GIB)


def test_full_basis_never_above_the_cap():
    d = int(FULL_BASIS_MAX_BYTES / (16 * 80 * 8)) + 1000
    assert plan(dim=d, budget=1024 * GIB).lanczos_mode == "low-memory"


def test_activation_floats_counts_leaf_outputs():
    import torch
    from torch import nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    # input 64 + flatten 64 + linear 32 + tanh 32 + linear 10
    assert activation_floats(model, torch.zeros(5, 1, 8, 8)) == 64 + 64 + 32 + 32 + 10


def test_activation_floats_counts_the_columns_of_unfolded_convolutions():
    import torch
    from torch import nn

    from wdbound.curvature import _use_unfold_convolutions

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 3, stride=2, padding=1))
    x = torch.zeros(5, 3, 8, 8)
    # input 3*8*8 + conv 4*8*8 + conv 2*4*4
    stock = 3 * 64 + 4 * 64 + 2 * 16
    assert activation_floats(model, x) == stock
    _use_unfold_convolutions(model, max_positions=16)  # only the 4 x 4 output is unfolded: 4*3*3 by 16 columns
    assert activation_floats(model, x) == stock + 4 * 9 * 16
    for conv in model:
        conv.unfold_positions = math.inf  # every convolution (float64): 3*3*3 by 64 columns as well
    assert activation_floats(model, x) == stock + 4 * 9 * 16 + 3 * 9 * 64


def test_plan_json_and_summary():
    p = plan()
    data = p.to_json()
    assert data["planned_peak"] == p.peak and data["lanczos_mode"] == "full"
    assert "memory plan" in p.summary() and human_bytes(p.peak) in p.summary()
    assert json.loads(json.dumps(data)) == data
    assert math.isinf(p.memory.full_basis_bytes)


def test_cli_refuses_a_budget_too_small_before_any_work(tiny_checkpoint, tmp_path, capsys):
    from conftest import run_cli

    out = tmp_path / "s.json"
    code, stdout, err = run_cli(["spectrum", tiny_checkpoint, "--memory", "2MB", "--no-cache", "--json", out], capsys)
    assert code == 2 and "--memory" in err and len(err.strip().splitlines()) == 1, err
    assert "HVPs" not in stdout and not out.exists()


def test_cli_records_the_plan_and_the_measured_peak(tiny_checkpoint, tmp_path, capsys):
    from conftest import run_cli

    out = tmp_path / "s.json"
    code, _, err = run_cli(["spectrum", tiny_checkpoint, "--probes", "3", "--steps", "10", "--lanczos", "low-memory",
                            "--memory", "4GiB", "--no-cache", "--json", out], capsys)
    assert code == 0, err
    assert "memory plan (4.00 GiB budget, --memory)" in err
    prov = json.loads(out.read_text())["provenance"]
    assert prov["memory_plan"]["lanczos_mode"] == "low-memory" and prov["lanczos"] == "local"
    assert prov["memory_plan"]["budget"] == 4 * GIB and prov["peak_memory_bytes"] > 0
    # spectrum's default: float32 HVPs, float64 Lanczos vectors and recurrences
    assert prov["precision"]["lanczos_vectors"] == "float64" and prov["precision"]["hvp"] == "float32"


def test_the_gradient_graph_is_kept_only_when_the_plan_has_room():
    roomy = plan(budget=64 * GIB, graph=2 * GIB)
    assert roomy.keep_graph and roomy.graph == 2 * GIB and roomy.peak == plan(budget=64 * GIB).peak + 2 * GIB
    assert "kept gradient graph" in roomy.summary() and roomy.to_json()["kept_graph"] == 2 * GIB
    tight = plan(budget=64 * GIB, graph=200 * GIB)
    assert not tight.keep_graph and tight.peak <= 64 * GIB
    assert not plan(budget=64 * GIB).keep_graph  # no graph offered: products streamed


def test_kept_graph_estimate_scales_with_examples_and_precision():
    one = kept_graph_bytes(1000, 10, 4)
    assert kept_graph_bytes(1000, 20, 4) == 2 * one and kept_graph_bytes(1000, 10, 8) == 2 * one
    assert one == int(KEPT_GRAPH_FACTOR * ACTIVATION_SAFETY * 1000 * 10 * 4)


def test_single_pass_steps_fit_the_budget():
    from wdbound.memory import with_single_pass

    base = plan(dim=1_000_000, probes=4, steps=40, budget=8 * GIB)
    fitted = with_single_pass(base, dim=1_000_000, probes=4, steps=40, trace_vectors=6)
    assert fitted.single_pass_steps == 40 and fitted.peak <= 8 * GIB  # 4 x 41 x 8 MB: 1.3 GB
    tight = plan(dim=1_000_000, probes=4, steps=40, budget=int(1.2 * GIB))
    capped = with_single_pass(tight, dim=1_000_000, probes=4, steps=40, trace_vectors=6)
    assert 10 <= capped.single_pass_steps < 40 and capped.peak <= tight.budget
    assert "single pass" in capped.summary() and capped.to_json()["single_pass_steps"] == capped.single_pass_steps
    none = with_single_pass(plan(dim=1_000_000, probes=4, steps=40, budget=int(0.5 * GIB)), dim=1_000_000,
                            probes=4, steps=40, trace_vectors=6)
    assert none.single_pass_steps is None and none.single_pass == 0


# ---------------------------------------------------------------- what the process can really get (issue 31)

def _fake_system(tmp_path, cgroup_line: str, files: dict[str, str], meminfo_gib: int = 64):
    from wdbound.memory import SystemRoots

    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup_line + "\n")
    (proc / "meminfo").write_text(f"MemTotal: {2 * meminfo_gib * 2**20} kB\nMemAvailable: {meminfo_gib * 2**20} kB\n")
    for name, text in files.items():
        path = cgroup / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    cgroup.mkdir(exist_ok=True)
    return SystemRoots(proc=proc, cgroup=cgroup)


def test_cgroup_v2_limit_of_an_ancestor_binds(tmp_path):
    """A SLURM-like job: the job's cgroup has a 4 GiB limit (1 GiB used), the step below it none."""
    import torch

    from wdbound.memory import available_bytes

    roots = _fake_system(tmp_path, "0::/job/step", {"cgroup.controllers": "memory", "job/memory.max": str(4 * GIB),
                                                     "job/memory.current": str(GIB), "job/step/memory.max": "max",
                                                     "job/step/memory.current": str(GIB)})
    free, source = available_bytes(torch.device("cpu"), roots)
    assert free == 3 * GIB and "cgroup v2" in source and "/job" in source


def test_cgroup_v1_limit_and_unlimited_v1(tmp_path):
    import torch

    from wdbound.memory import available_bytes

    limited = _fake_system(tmp_path / "a", "4:memory:/docker/abc", {
        "memory/docker/abc/memory.limit_in_bytes": str(2 * GIB),
        "memory/docker/abc/memory.usage_in_bytes": str(GIB // 2)})
    free, source = available_bytes(torch.device("cpu"), limited)
    assert free == 2 * GIB - GIB // 2 and "cgroup v1" in source
    unlimited = _fake_system(tmp_path / "b", "4:memory:/", {"memory/memory.limit_in_bytes": "9223372036854771712",
                                                            "memory/memory.usage_in_bytes": str(GIB)})
    free, source = available_bytes(torch.device("cpu"), unlimited)
    assert free == 64 * GIB and "MemAvailable" in source


def test_cgroup_v2_on_a_hybrid_system_and_meminfo_when_smaller(tmp_path):
    import torch

    from wdbound.memory import available_bytes

    roots = _fake_system(tmp_path, "0::/user", {"unified/user/memory.max": str(100 * GIB),
                                                "unified/user/memory.current": str(GIB)}, meminfo_gib=8)
    free, source = available_bytes(torch.device("cpu"), roots)
    assert free == 8 * GIB and "MemAvailable" in source  # the smallest limit wins
    roots = _fake_system(tmp_path / "b", "0::/user", {"unified/user/memory.max": str(5 * GIB),
                                                      "unified/user/memory.current": str(GIB)})
    assert available_bytes(torch.device("cpu"), roots) == (4 * GIB, "cgroup v2 memory.max − usage of /user")


def _limited(limit: int):
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def test_rlimit_as_is_read_in_a_capped_subprocess():
    """Under ``ulimit -v`` the budget comes from RLIMIT_AS minus the address space already mapped."""
    import subprocess
    import sys

    code = ("import torch, json; from wdbound.memory import available_bytes, in_use_bytes; "
            "d = torch.device('cpu'); free, source = available_bytes(d); "
            "print(json.dumps([free, source, in_use_bytes(d, source)]))")
    limit = 12 * 10**9
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         preexec_fn=_limited(limit))
    free, source, in_use = json.loads(out.stdout)
    assert source.startswith("RLIMIT_AS") and 0 < free < limit and free + in_use <= limit


@pytest.mark.slow
def test_err_completes_under_an_address_space_cap_within_its_plan(tiny_checkpoint, tmp_path):
    """``wdbound err`` on the SLQ path under a 9 GB RLIMIT_AS: the plan names the limit it used, the run
    completes, and the peak it measured stays inside the plan."""
    import subprocess
    import sys

    out = tmp_path / "err.json"
    run = subprocess.run([sys.executable, "-m", "wdbound", "err", str(tiny_checkpoint), "--exact", "off",
                          "--steps", "60", "--no-cache", "--json", str(out)], capture_output=True, text=True,
                         preexec_fn=_limited(9 * 10**9))
    assert run.returncode == 0, run.stderr[-2000:]
    provenance = json.loads(out.read_text())["inputs"]["spectrum"]
    plan = provenance["memory_plan"]
    assert "RLIMIT_AS" in plan["budget_source"] and plan["budget"] <= 9 * 10**9
    assert provenance["peak_memory_bytes"] <= plan["planned_peak"]


@pytest.mark.parametrize("phase_target, error, words", [
    ("wdbound.spectrum.estimate_spectrum",
     RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to "
                  "allocate 8292781824 bytes. Error code 12 (Cannot allocate memory)"),
     "out of memory while estimating the spectrum"),
    ("wdbound.analysis.theorem_runs", MemoryError(), "out of memory while the Theorem 6/7 Lanczos runs"),
    ("wdbound.analysis.theorem_runs", "cuda", "out of memory while the Theorem 6/7 Lanczos runs"),
])
def test_an_allocation_failure_is_one_line_exit_2_and_writes_nothing(phase_target, error, words, tiny_checkpoint,
                                                                     tmp_path, monkeypatch, capsys):
    import torch

    from conftest import run_cli

    if error == "cuda":
        error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def fail(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(phase_target, fail)
    out = tmp_path / "err.json"
    code, _, err = run_cli(["err", tiny_checkpoint, "--exact", "off", "--theorem", "on", "--steps", "20", "--no-cache",
                            "--json", out], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: " + words), err
    assert err.strip().splitlines()[-1] == errors[0] and "Traceback" not in err
    assert "the plan expected a peak of" in errors[0] and "--memory" in errors[0]
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))


def test_the_api_takes_torch_dtypes_and_devices():
    import torch
    from torch import nn

    from wdbound import Hessian
    from wdbound.errors import WdboundError

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    data = (torch.randn(16, 3), torch.randint(0, 2, (16,)))
    by_name = Hessian(model, data, dtype="float64", device="cpu").exact().eigenvalues
    by_object = Hessian(model, data, dtype=torch.float64, device=torch.device("cpu")).exact().eigenvalues
    assert (by_name == by_object).all()
    assert Hessian(model, data, dtype=torch.float32).operator.dtype == torch.float32
    with pytest.raises(WdboundError, match="unknown dtype"):
        Hessian(model, data, dtype=torch.float16)


def test_a_bare_timm_name_resolves_when_no_builtin_has_it():
    import timm  # noqa: F401 - a test extra: the test runs, never skips
    from wdbound.models import build_model, canonical_arch

    assert canonical_arch("vit_tiny_patch16_224") == "timm:vit_tiny_patch16_224"
    assert canonical_arch("resnet18") == "resnet18"  # the built-in (torchvision) name wins
    assert canonical_arch("no_such_model") == "no_such_model"
    assert sum(p.numel() for p in build_model("vit_tiny_patch16_224", num_classes=3, img_size=32,
                                              patch_size=8).parameters()) > 0


def _mallinfo(field: str) -> int:
    """A field of glibc's ``mallinfo2()``: ``hblkhd``, bytes this process holds in blocks glibc allocated with
    their own mmap; ``fordblks``, bytes free inside its heap."""
    import ctypes

    fields = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
              "keepcost")
    info = type("Mallinfo2", (ctypes.Structure,), {"_fields_": [(f, ctypes.c_size_t) for f in fields]})
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = info
    return int(getattr(libc.mallinfo2(), field))


@pytest.mark.skipif(memory._glibc() is None, reason="glibc only: elsewhere the context is a no-op")
def test_reuse_freed_memory_serves_large_blocks_from_the_heap_inside_and_restores_glibc_on_exit():
    size = 64 * 2**20  # above glibc's largest mmap threshold (32 MB): by default its own mapping
    with memory.reuse_freed_memory():
        with memory.reuse_freed_memory():  # nested: the inner exit must not restore the defaults
            pass
        before = _mallinfo("hblkhd")
        block = torch.empty(size, dtype=torch.uint8)
        inside = _mallinfo("hblkhd") - before
        del block
    # After the exit a block larger than all the heap's free bytes (holes earlier tests left in it could serve
    # a smaller one whatever the settings) must come from its own mapping again: the defaults are back.
    large = size + _mallinfo("fordblks")
    before = _mallinfo("hblkhd")
    block = torch.empty(large, dtype=torch.uint8)
    after = _mallinfo("hblkhd") - before
    del block
    assert inside == 0
    assert after >= large


def test_heap_reuse_is_planned_only_when_the_budget_leaves_room_for_its_fragmentation():
    roomy = plan()
    assert roomy.heap_reuse and roomy.to_json()["heap_reuse"] is True
    # a budget just above the planned peak: no room for the allowance, so freed memory goes back at once
    tight = dataclasses.replace(roomy, budget=int(roomy.peak * (1 + memory.HEAP_REUSE_ALLOWANCE / 2)))
    assert tight.peak <= tight.budget and not tight.heap_reuse
    # the same budget from --memory auto: the 30 % of the free RAM it leaves out takes the fragmentation
    import torch

    baseline = tight.budget // 4
    auto = dataclasses.replace(tight, headroom=memory.budget_headroom("auto", tight.budget, baseline,
                                                                      torch.device("cpu")))
    assert auto.headroom == round((tight.budget - baseline) * 0.3 / 0.7) and auto.heap_reuse
    assert auto.to_json()["headroom"] == auto.headroom
    assert memory.budget_headroom("12GB", tight.budget, baseline, torch.device("cpu")) == 0


@pytest.mark.parametrize("preset, expected", [(None, "1"), ("0", "0")])
def test_importing_wdbound_first_puts_large_tensors_on_huge_pages_unless_the_user_chose(preset, expected):
    """``import wdbound`` before torch sets PyTorch's THP_MEM_ALLOC_ENABLE (read once, at torch's first
    allocation) so large CPU tensors are madvised onto transparent huge pages; a value already in the
    environment is the user's and is kept."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if preset is not None:
        env["THP_MEM_ALLOC_ENABLE"] = preset
    out = subprocess.run([sys.executable, "-c", "import sys, os, wdbound; "
                          "print(os.environ['THP_MEM_ALLOC_ENABLE'], 'torch' in sys.modules)"],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == [expected, "True"]
