"""Several processes, one per GPU (or per CPU "device"): torchrun launches this module as the
worker; the parent collects one result file per rank.

torch.distributed with NCCL on GPUs and gloo on the CPU, over a (data, tensor) DeviceMesh.
--tp T splits each decoder layer with DTensor tensor parallelism (parallelize_module with
transformers' base_model_tp_plan: q/k/v/gate/up colwise, o/down rowwise, lm_head colwise with
gathered logits; LoRA factors with their base layer; --sequence-parallel adds torchtitan's
sequence-parallel norms), as `tuneplan trace --tp` replays it. Over the data dimension,
--sharding ddp wraps the model in DistributedDataParallel; --sharding fsdp shards each decoder
layer and the root with FSDP2 (torch.distributed.fsdp.fully_shard: parameters, gradients and
optimizer states sharded, a layer's parameters gathered for its forward and backward). Each
rank measures its own counters; the parent reports every rank and the highest.

    python -m torch.distributed.run --standalone --nproc_per_node N -m tuneplan.probe.dist REQUEST.json OUT_DIR

Several machines (--nodes M): the probe does not launch other machines; it writes the request
and prints one torchrun command per machine (node_commands), each writing its ranks' files to
its own OUT_DIR; `tuneplan probe --merge DIR` reads them back once they are in one folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneplan.errors import TuneplanError

RANK_FILE = "rank{rank}.json"
REQUEST_FILE = "request.json"
WORKER = "tuneplan.probe.dist"
RDZV_PORT = 29500


@dataclass(frozen=True)
class Mesh:
    """The (data, tensor) layout of the ranks: what apply_tp of the trace reads (tp, sequence_parallel)."""

    world: int
    tp: int = 1
    sequence_parallel: bool = False

    @property
    def dp(self) -> int:
        return self.world // self.tp


def torchrun_command(request: str | Path, out_dir: str | Path, nproc: int, *, nodes: int = 1,
                     node_rank: int | str = 0, endpoint: str = "") -> list[str]:
    """The torchrun command of one machine (nodes == 1: --standalone on this one)."""
    head = [sys.executable, "-m", "torch.distributed.run"]
    if nodes == 1:
        return [*head, "--standalone", f"--nproc_per_node={nproc}", "-m", WORKER, str(request), str(out_dir)]
    return ["torchrun", "--nnodes", str(nodes), "--nproc-per-node", str(nproc), "--node-rank", str(node_rank),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "-m", WORKER, str(request), str(out_dir)]


def node_commands(request: str | Path, out_dir: str | Path, world: int, nodes: int,
                  endpoint: str = f"HOST:{RDZV_PORT}") -> list[str]:
    """One shell line per machine (node rank 0..nodes-1), `world` processes over `nodes` machines."""
    if nodes < 2 or world % nodes:
        raise TuneplanError(f"{world} processes do not spread evenly over {nodes} machines")
    return [shlex.join(torchrun_command(request, out_dir, world // nodes, nodes=nodes, node_rank=i, endpoint=endpoint))
            for i in range(nodes)]


def write_request(request: dict[str, Any], out_dir: str | Path) -> Path:
    """Write the request into out_dir (created); returns its path."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / REQUEST_FILE
    path.write_text(json.dumps(request, indent=1))
    return path


def read_ranks(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every rank<N>.json in out_dir, in rank order (what launch returns)."""
    d = Path(out_dir)
    files = sorted(d.glob("rank*.json"), key=lambda f: int("".join(c for c in f.stem if c.isdigit()) or 0))
    out = []
    for f in files:
        try:
            out.append(json.loads(f.read_text()))
        except (OSError, ValueError) as e:
            raise TuneplanError(f"cannot read {f}: {e}") from None
    return out


def launch(request: dict[str, Any], nproc: int, kind: str, timeout_s: float | None = None,
           out_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Run the request on `nproc` processes with torchrun; returns each rank's result (rank order).

    out_dir: keep the request and the rank files there (for `probe --merge`); default a
    temporary folder.

    Raises:
        TuneplanError: torchrun failed before any rank wrote a result (one line: its last error).
    """
    with contextlib.ExitStack() as stack:
        if out_dir is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="tuneplan-probe-"))
        else:
            tmp = str(out_dir)
            for old in Path(tmp).glob("rank*.json"):  # a result of an earlier run is not this run's
                old.unlink()
        req = write_request(request, tmp)
        cmd = torchrun_command(req, tmp, nproc)
        env = dict(os.environ)
        if kind == "cpu":
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
            env.setdefault("GLOO_SOCKET_IFNAME", "lo" if sys.platform.startswith("linux") else "lo0")
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise TuneplanError(f"the {nproc}-process probe did not finish in {timeout_s:.0f} s") from None
        results = read_ranks(tmp)
        if not results:
            lines = [x for x in (proc.stderr or proc.stdout or "").strip().splitlines() if x.strip()]
            errors = [x for x in lines if "Error" in x or "error" in x]
            last = (errors or lines or ["no output"])[-1].strip()[:240]
            raise TuneplanError(f"torchrun with {nproc} processes failed (exit {proc.returncode}): {last}")
        return results


def _apply_tp():
    """The trace's DTensor tensor-parallel plan (tuneplan.trace.dist_layout.apply_tp; older
    trees keep it in tuneplan.trace.dist), looked up when it is needed."""
    import importlib

    for mod in ("tuneplan.trace.dist_layout", "tuneplan.trace.dist"):
        try:
            fn = getattr(importlib.import_module(mod), "apply_tp", None)
        except ImportError:
            continue
        if fn is not None:
            return fn
    raise TuneplanError("this tuneplan has no tensor-parallel plan (tuneplan.trace.dist_layout.apply_tp)")


def _wrap(job, mesh_layout: Mesh | None = None):
    """Tensor parallelism (--tp), then DDP (shard stage 0) or FSDP2 full sharding per decoder
    layer (stage 3) over the data-parallel ranks (nothing over a single data rank, as the trace
    and torchtitan run it).

    Under FSDP, profiles launched through accelerate (FrameworkProfile.fsdp_fp32_params)
    keep the trainable parameters' shards in fp32 and gather them in the 16-bit dtype, as
    accelerate's prepare_model upcasts a 16-bit model's flat parameters; the others shard the
    model in its own dtype.
    """
    layout = mesh_layout or Mesh(job.parallel.num_gpus)

    def wrap(model, dev):
        import torch

        t = job.training
        fsdp = job.parallel.shard_stage == 3 and layout.dp > 1
        mp_policy = None
        if fsdp and t.profile.fsdp_fp32_params and t.param_bytes < 4:
            from torch.distributed.fsdp import MixedPrecisionPolicy

            for p in model.parameters():  # before tensor parallelism splits them into DTensors
                if p.requires_grad:
                    p.data = p.data.float()
            mp_policy = MixedPrecisionPolicy(param_dtype=getattr(torch, t.dtypes.torch_param_dtype))
        mesh = None
        if layout.tp > 1:
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh(dev.kind, (layout.dp, layout.tp), mesh_dim_names=("dp", "tp"))
            trains = {n: p.requires_grad for n, p in model.named_parameters()}
            _apply_tp()(model, mesh["tp"], layout)
            # parallelize_module re-registers parameters as nn.Parameter(DTensor), which trains
            # by default: LoRA's frozen weights stay frozen
            for n, p in model.named_parameters():
                p.requires_grad_(trains.get(n, p.requires_grad))
        if layout.dp == 1:
            return model
        if not fsdp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            return DDP(model, device_ids=[dev.index] if dev.kind == "cuda" else None)
        from torch.distributed.fsdp import fully_shard

        from tuneplan.trace.build import layer_list

        kwargs: dict[str, Any] = {"mesh": mesh["dp"]} if mesh is not None else {}
        if mp_policy is not None:
            kwargs["mp_policy"] = mp_policy
        for layer in layer_list(model):
            fully_shard(layer, **kwargs)
        fully_shard(model, **kwargs)
        return model

    return wrap


def worker(request_path: str, out_dir: str) -> int:
    """One rank: build, wrap, run, write rank<N>.json. Exit 3 on out-of-memory so torchrun stops the others."""
    import torch.distributed as dist

    from tuneplan.job import Job
    from tuneplan.memory import estimate_memory
    from tuneplan.models import spec_from_config
    from tuneplan.probe import quiet_libraries
    from tuneplan.probe.device import Device
    from tuneplan.probe.step import Session, check_free, needed_bytes

    quiet_libraries()
    req = json.loads(Path(request_path).read_text())
    rank, local, world = (int(os.environ.get(k, "0")) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    kind = req["kind"]
    out: dict[str, Any] = {"rank": rank, "local_rank": local, "world": world}
    code = 0
    try:
        dev = Device(kind, index=local if kind == "cuda" else 0, limit=req.get("limit"))
        out["device"] = dev.to_dict()
        job = Job.from_settings(**req["settings"])
        spec = spec_from_config(req["config"], name=req.get("name", "model"))
        layout = Mesh(world, int(req.get("tp") or 1), bool(req.get("sequence_parallel")))
        out["layout"] = {"data": layout.dp, "tensor": layout.tp, "sequence_parallel": layout.sequence_parallel,
                         "data_rank": rank // layout.tp, "tensor_rank": rank % layout.tp}
        if kind == "cuda":  # the parent checked the CPU's shared RAM for all ranks
            check_free(needed_bytes(estimate_memory(spec, job), spec, job, kind, dev.limit), dev, req.get("force"))
        dist.init_process_group("nccl" if kind == "cuda" else "gloo")
        session = Session(req["config"], job, dev, wrap=_wrap(job, layout))
        if layout.tp > 1:
            session.tensor_parallel(data_rank=rank // layout.tp, sequence_parallel=layout.sequence_parallel)
        session.build()
        run = session.run(job.training.micro_batch, job.training.seq_len, req["steps"], req["warmup"])
        out["run"] = run.to_dict()
        out["info"] = session.info()
        if run.status == "oom":
            code = 3
        else:
            dist.barrier()
        session.close()
    except TuneplanError as e:
        out["refused"] = str(e)
        code = 2
    except Exception as e:  # noqa: BLE001 - reported by the parent in one line
        first = (str(e).strip().splitlines() or [""])[0][:200]
        out["error"] = f"{type(e).__name__}: {first}"
        code = 1
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    Path(out_dir, RANK_FILE.format(rank=rank)).write_text(json.dumps(out))
    if code:
        sys.stdout.flush()
        os._exit(code)  # the other ranks may wait in a collective: torchrun stops them
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(worker(sys.argv[1], sys.argv[2]))
