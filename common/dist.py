"""Distributed helpers that work unchanged with 1 process, gloo on CPU and NCCL on GPU.

Rank discovery order: torchrun variables (RANK/WORLD_SIZE/LOCAL_RANK), then a Slurm job step
started by ``srun`` (SLURM_PROCID is the *global* rank, SLURM_LOCALID the local one), else a
single process. All collectives are no-ops when not distributed, so callers never branch.
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from common.errors import ProcessGroupLostError, UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"  # "torchrun", "slurm" or "single"


def expand_first_host(nodelist: str) -> str:
    """First host of a Slurm nodelist (``node[3-5,7],gpu1`` -> ``node3``) without scontrol."""
    nodelist = nodelist.strip()
    match = re.match(r"^([^\[,]+)(\[([^\]]+)\])?", nodelist)
    if not match:
        raise UserError(f"cannot parse SLURM nodelist '{nodelist}'")
    prefix, _, ranges = match.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def _slurm_master_addr(nodelist: str) -> str:
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=20
        )
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return expand_first_host(nodelist)


def discover(env: dict[str, str] | None = None) -> DistInfo:
    """Read the process layout from the environment (pure function of ``env``)."""
    env = dict(os.environ if env is None else env)
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistInfo(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
            source="torchrun",
        )
    # SLURM_STEP_NUM_TASKS exists only inside an srun job step, not in the batch script itself.
    if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        job_id = int(env.get("SLURM_JOB_ID", "0") or 0)
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "127.0.0.1")
        addr = env.get("MASTER_ADDR") or _slurm_master_addr(nodelist)
        return DistInfo(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_STEP_NUM_TASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            master_addr=addr,
            master_port=int(env.get("MASTER_PORT", 20000 + job_id % 20000)),
            source="slurm",
        )
    return DistInfo()


def init(device: str = "auto", timeout_s: float = 1800.0) -> tuple[DistInfo, torch.device]:
    """Initialise the process group (if more than one process) and pick this rank's device."""
    info = discover()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("device 'cuda' requested but no GPU is visible; use device=cpu")
        dev = torch.device("cuda", info.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if info.world_size > 1 and not torch_dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        try:
            torch_dist.init_process_group(
                backend=backend,
                init_method=f"tcp://{info.master_addr}:{info.master_port}",
                rank=info.rank,
                world_size=info.world_size,
                timeout=datetime.timedelta(seconds=timeout_s),
                device_id=dev if dev.type == "cuda" else None,
            )
        except RuntimeError as err:  # DistStoreError / DistNetworkError: peers absent, port taken
            raise UserError(
                f"rank {info.rank} could not form the process group of {info.world_size} at "
                f"{info.master_addr}:{info.master_port} within train.dist_timeout_s={timeout_s:g} "
                f"s: {_first_sentence(err)}"
            ) from None
    return info, dev


# Messages of gloo / NCCL / c10d when a peer died, stalled past the timeout or closed its socket.
_COMM_FAILURE = re.compile(
    r"Connection (closed|reset) by peer|Broken pipe|[Tt]imed out|timeout|gloo|NCCL|c10d|"
    r"ProcessGroup|Socket|[Ww]atchdog"
)


def _first_sentence(err: BaseException) -> str:
    text = " ".join(str(err).split())
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)  # "[.../pair.cc:553] " source location
    return (text.split(". ")[0] or type(err).__name__)[:200]


def is_comm_failure(err: BaseException) -> bool:
    """Whether ``err`` says the process group broke (as opposed to a bug in our code)."""
    dist_error = getattr(torch_dist, "DistError", ())
    return isinstance(err, dist_error) or bool(_COMM_FAILURE.search(str(err)))


def lost_contact_error(err: BaseException, timeout_s: float) -> ProcessGroupLostError:
    """One line for a broken process group: which rank noticed, why, and the timeout knob."""
    return ProcessGroupLostError(
        f"rank {rank()} lost contact with the process group ({_first_sentence(err)}): another "
        f"rank died or stalled, see its log; a stall is given up after train.dist_timeout_s="
        f"{timeout_s:g} s"
    )


def shutdown() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def is_dist() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def rank() -> int:
    return torch_dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return torch_dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (sum/max/min/mean); identity with one process."""
    if not is_dist():
        return tensor
    ops = {
        "sum": torch_dist.ReduceOp.SUM,
        "max": torch_dist.ReduceOp.MAX,
        "min": torch_dist.ReduceOp.MIN,
        "mean": torch_dist.ReduceOp.SUM,
    }
    torch_dist.all_reduce(tensor, op=ops[op])
    if op == "mean":
        tensor /= world_size()
    return tensor


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equally-shaped tensors of all ranks along dim 0 (no gradient)."""
    if not is_dist():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    torch_dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def barrier() -> None:
    if is_dist():
        torch_dist.barrier()
