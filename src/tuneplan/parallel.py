"""How a job is laid out over GPUs: data, tensor, pipeline, context and expert degrees.

Parallel holds the layout as asked (validated at construction, one-line errors); the
sharding records it names are tuneplan.choices.layouts, and what each layout does to
memory and time is derived in tuneplan.memory.ranks and tuneplan.timing_comm. Whether a
framework runs the layout is checked with the whole job (tuneplan.job_checks).
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneplan.bounds import MAX_COUNT, check_choice, check_positive, show_value
from tuneplan.choices.layouts import SHARDINGS, Sharding
from tuneplan.errors import TuneplanError

SHARDING = tuple(SHARDINGS)


@dataclass(frozen=True)
class Parallel:
    """How the job is laid out over GPUs (Megatron-Core's order of dimensions: the world is
    tensor x context x data x pipeline, and expert parallelism is carved out of data x context).

    Args:
        num_gpus: world size (tensor x context x data x pipeline).
        sharding: a row of tuneplan.choices.layouts: ddp (replicate) | zero1 | zero2 | zero3
            (DeepSpeed ZeRO) | fsdp (torch FSDP, the stack's version) | hsdp (FSDP inside a
            machine, replicas across), over the data (x context) group.
        offload_optimizer: optimizer states (and master weights) live in CPU RAM.
        offload_params: parameters live in CPU RAM (ZeRO-3/FSDP only).
        tensor: tensor-parallel degree (heads, MLP width and vocabulary split).
        pipeline: pipeline-parallel degree (decoder layers split into stages).
        virtual_stages: pipeline stages per rank (interleaved 1F1B; 1 = plain 1F1B).
        context: context-parallel degree (the sequence split, ring attention).
        expert: expert-parallel degree (MoE experts split over data x context ranks).
        sequence_parallel: with tensor parallelism, norms, dropout and the residual stream
            are split along the sequence too (Korthikanti et al. 2022); None: the stack's default.
        nodes: machines the GPUs span (num_gpus / nodes GPUs each); 0: as few as the device allows.
    """

    num_gpus: int = 1
    sharding: str = "ddp"
    offload_optimizer: bool = False
    offload_params: bool = False
    tensor: int = 1
    pipeline: int = 1
    virtual_stages: int = 1
    context: int = 1
    expert: int = 1
    sequence_parallel: bool | None = None
    nodes: int = 0

    def __post_init__(self) -> None:
        check_positive("number of GPUs", self.num_gpus, MAX_COUNT)
        check_choice("sharding", self.sharding, SHARDING)
        for degree, what in ((self.tensor, "tensor-parallel degree"), (self.pipeline, "pipeline-parallel degree"),
                             (self.virtual_stages, "virtual pipeline stages"),
                             (self.context, "context-parallel degree"), (self.expert, "expert-parallel degree")):
            check_positive(what, degree, MAX_COUNT)
        if not 0 <= self.nodes <= MAX_COUNT:
            raise TuneplanError(f"--nodes must be a positive count, got {show_value(self.nodes)}")
        if self.offload_params and self.shard_stage < 3:
            raise TuneplanError("parameter offload needs --sharding zero3, fsdp or hsdp")
        model = self.tensor * self.pipeline * self.context
        if self.num_gpus % model:
            raise TuneplanError(f"{self.num_gpus} GPUs cannot be split into tensor {self.tensor} x pipeline "
                                f"{self.pipeline} x context {self.context} groups ({model} GPUs each)")
        if (self.data * self.context) % self.expert:
            raise TuneplanError(f"expert parallelism {self.expert} must divide data x context "
                                f"({self.data} x {self.context}): experts are split over those ranks")
        if self.virtual_stages > 1 and self.pipeline == 1:
            raise TuneplanError("--vp (virtual pipeline stages) needs --pp above 1")
        if self.sequence_parallel and self.tensor == 1:
            raise TuneplanError("--sequence-parallel splits activations over the tensor-parallel group; it needs --tp above 1")
        if self.nodes and self.num_gpus % self.nodes:
            raise TuneplanError(f"{self.num_gpus} GPUs do not spread evenly over {self.nodes} machines")

    @property
    def data(self) -> int:
        """Data-parallel degree (replicas of the model-parallel group)."""
        return self.num_gpus // (self.tensor * self.pipeline * self.context)

    @property
    def layout(self) -> Sharding:
        """The sharding record (tuneplan.choices.layouts)."""
        return SHARDINGS[self.sharding]

    @property
    def shard_stage(self) -> int:
        """ZeRO stage: 0 = replicate, 1 = optimizer, 2 = +grads, 3 = +params."""
        return SHARDINGS[self.sharding].stage

    @property
    def model_parallel(self) -> bool:
        """Any of tensor, pipeline, context or expert parallelism."""
        return self.tensor * self.pipeline * self.context * self.expert > 1

    @property
    def machines(self) -> int:
        """Machines the job spans (1 unless --nodes says otherwise or a search set it)."""
        return self.nodes or 1

    @property
    def shard_world(self) -> int:
        """Ranks one state is sharded over: the data x context group (torchtitan's dp_shard_cp
        mesh, Megatron's distributed optimizer over data x context), inside one machine for
        HSDP (replicated across machines)."""
        world = self.data * self.context
        if self.layout.shard_group_node and self.machines > 1 and world % self.machines == 0:
            world //= self.machines
        return world
