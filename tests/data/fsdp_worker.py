"""Run under torchrun by tests/test_fsdp.py: a digits MLP sharded with FSDP2 over the processes, its Hessian
through wdbound.fsdp.ShardedHessian, beside the one-process dense Hessian (double backward) of the same model.
Rank 0 writes what both found as JSON to argv[1]; argv[2] is the dtype."""

import json
import sys


def main(out: str, dtype_name: str) -> None:
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import wdbound
    from wdbound.fsdp import ShardedHessian
    from wdbound.stats import wasserstein1

    dist.init_process_group("gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    dtype = getattr(torch, dtype_name)
    data = wdbound.load_dataset("digits", "test")
    x = torch.stack([data[i][0] for i in range(120)]).flatten(1).to(dtype)
    y = torch.tensor([data[i][1] for i in range(120)])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)).to(dtype)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    dense = wdbound.Hessian(model, (x.double(), y), progress=False, device="cpu").dense()  # double backward
    exact = np.linalg.eigvalsh(dense)
    mesh = init_device_mesh("cpu", (world,))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    H = ShardedHessian(model, (x, y), seed=3)
    error = H.hvp_error()
    top = H.top_eigenvalues(3, steps=60)
    trace, trace_bar = H.trace(48)
    nodes, weights = H.density(2, 40)
    from wdbound.bounds import BoundInputs, corollary3_exact
    inputs = BoundInputs(d=H.dim, n=1437, b=64, eta=1e-3, lam=5e-2, rho=0.125)
    errs = H.err(inputs, probes=2, steps=40)
    exact_err = {form: corollary3_exact(exact, form, inputs).err_mean for form in ("adamw", "l2-adam")}
    restored = all(torch.equal(p.full_tensor(), original[n]) for n, p in model.named_parameters())
    if rank == 0:
        w1 = wasserstein1(nodes, weights / weights.sum(), exact, np.full(len(exact), 1 / len(exact)))
        json.dump({"world": world, "dim": H.dim, "local_dim": H.local_dim, "exact_top": exact[::-1][:3].tolist(),
                   "top": top.values.tolist(), "residual": top.residual.tolist(), "bounds": top.bounds.tolist(),
                   "eta": top.eta, "exact_trace": float(np.trace(dense)), "trace": trace, "trace_bar": trace_bar,
                   "w1": float(w1 / exact.max()), "error": error.to_json(), "restored": restored,
                   "hvps": H.hvps, "err": [e.to_json() for e in errs], "exact_err": exact_err}, open(out, "w"))
    dist.barrier()  # both ranks leave together: a rank tearing gloo down while the other still writes can abort
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
