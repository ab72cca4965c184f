"""Several processes, one per GPU (or per CPU "device"): torchrun launches this module as the
worker; the parent collects one result file per rank.

torch.distributed with NCCL on GPUs and gloo on the CPU. --sharding ddp wraps the model in
DistributedDataParallel; --sharding fsdp shards each decoder layer and the root with FSDP2
(torch.distributed.fsdp.fully_shard: parameters, gradients and optimizer states sharded, a
layer's parameters gathered for its forward and backward). Each rank measures its own
counters; the parent reports every rank and the highest.

    python -m torch.distributed.run --standalone --nproc_per_node N -m tuneplan.probe.dist REQUEST.json OUT_DIR
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tuneplan.errors import TuneplanError

RANK_FILE = "rank{rank}.json"


def launch(request: dict[str, Any], nproc: int, kind: str, timeout_s: float | None = None) -> list[dict[str, Any]]:
    """Run the request on `nproc` processes with torchrun; returns each rank's result (rank order).

    Raises:
        TuneplanError: torchrun failed before any rank wrote a result (one line: its last error).
    """
    with tempfile.TemporaryDirectory(prefix="tuneplan-probe-") as tmp:
        req = Path(tmp) / "request.json"
        req.write_text(json.dumps(request))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "tuneplan.probe.dist", str(req), tmp]
        env = dict(os.environ)
        if kind == "cpu":
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
            env.setdefault("GLOO_SOCKET_IFNAME", "lo" if sys.platform.startswith("linux") else "lo0")
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise TuneplanError(f"the {nproc}-process probe did not finish in {timeout_s:.0f} s") from None
        results = []
        for rank in range(nproc):
            f = Path(tmp) / RANK_FILE.format(rank=rank)
            if f.exists():
                results.append(json.loads(f.read_text()))
        if not results:
            lines = [x for x in (proc.stderr or proc.stdout or "").strip().splitlines() if x.strip()]
            errors = [x for x in lines if "Error" in x or "error" in x]
            last = (errors or lines or ["no output"])[-1].strip()[:240]
            raise TuneplanError(f"torchrun with {nproc} processes failed (exit {proc.returncode}): {last}")
        return results


def _wrap(job):
    """DDP (shard stage 0) or FSDP2 full sharding per decoder layer (stage 3).

    Under FSDP, profiles launched through accelerate (FrameworkProfile.fsdp_fp32_params)
    keep the trainable parameters' shards in fp32 and gather them in the 16-bit dtype, as
    accelerate's prepare_model upcasts a 16-bit model's flat parameters; the others shard the
    model in its own dtype.
    """
    def wrap(model, dev):
        import torch

        if job.parallel.shard_stage == 0:
            from torch.nn.parallel import DistributedDataParallel as DDP

            return DDP(model, device_ids=[dev.index] if dev.kind == "cuda" else None)
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        from tuneplan.trace.build import layer_list

        t = job.training
        kwargs = {}
        if t.profile.fsdp_fp32_params and t.param_bytes < 4:
            for p in model.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=getattr(torch, t.dtypes.torch_param_dtype))
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
    out: dict[str, Any] = {"rank": rank, "world": world}
    code = 0
    try:
        dev = Device(kind, index=local if kind == "cuda" else 0, limit=req.get("limit"))
        out["device"] = dev.to_dict()
        job = Job.from_settings(**req["settings"])
        spec = spec_from_config(req["config"], name=req.get("name", "model"))
        if kind == "cuda":  # the parent checked the CPU's shared RAM for all ranks
            check_free(needed_bytes(estimate_memory(spec, job), spec, job, kind, dev.limit), dev, req.get("force"))
        dist.init_process_group("nccl" if kind == "cuda" else "gloo")
        session = Session(req["config"], job, dev, wrap=_wrap(job))
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
    Path(out_dir, RANK_FILE.format(rank=rank)).write_text(json.dumps(out))
    if code:
        sys.stdout.flush()
        os._exit(code)  # the other ranks may wait in a collective: torchrun stops them
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(worker(sys.argv[1], sys.argv[2]))
