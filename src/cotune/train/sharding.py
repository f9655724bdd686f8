"""How the trainer's model is spread over processes: replicated (one process, DDP) or sharded (FSDP).

Both strategies give the loop the module to call, the full trainable weights and the optimizer
state in ``torch.optim.Optimizer.state_dict()`` layout (every process takes part in gathering; the
main process writes), so a checkpoint of either loads into the other, on any number of processes.

accelerate shards only on accelerators: for CPU processes its state never becomes FSDP (the model
would be replicated with DDP without a word). cotune therefore wraps the model with torch FSDP
itself, from the settings ``accelerate launch`` exports (parsed by accelerate's own
``FullyShardedDataParallelPlugin``): the code verified on CPU with gloo is the code that runs on GPUs.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from cotune.train.launch import LaunchError

log = logging.getLogger(__name__)


class Replicated:
    """Every process holds the whole model: one process, or DDP through ``accelerator.prepare``."""

    sharded = False

    def __init__(self, accelerator) -> None:
        self.accelerator = accelerator

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        if self.accelerator.num_processes > 1:
            return self.accelerator.prepare(model, optimizer)
        return model, optimizer

    def trainable_state(self, model, module: nn.Module) -> dict[str, torch.Tensor]:
        return model.trainable_state_dict()

    def optimizer_state(self, module: nn.Module, optimizer) -> dict:
        return optimizer.state_dict()

    def load_optimizer_state(self, module: nn.Module, optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)


def fsdp_plugin():
    """accelerate's FSDP settings from the launcher's environment, refused where cotune differs."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()
    policy = getattr(plugin.auto_wrap_policy, "__name__", None)
    problems = {
        "fsdp_version": (plugin.fsdp_version != 1, "cotune shards with FSDP1 (fsdp_version: 1)"),
        "fsdp_use_orig_params": (not plugin.use_orig_params, "must be true: optimizer groups and checkpoints address the original frozen and trainable parameters"),
        "fsdp_auto_wrap_policy": (policy != "transformer_auto_wrap_policy", "must be TRANSFORMER_BASED_WRAP (cotune makes every transformer block and every trainable module an FSDP unit)"),
        "fsdp_activation_checkpointing": (plugin.activation_checkpointing, "set it false and use train.gradient_checkpointing"),
        "fsdp_cpu_ram_efficient_loading": (plugin.cpu_ram_efficient_loading, "set it false: every process loads the backbones itself"),
    }
    for key, (bad, why) in problems.items():
        if bad:
            raise LaunchError(f"accelerate FSDP config: {key}: {why}")
    return plugin


def block_classes(model: nn.Module, names: list[str] | None) -> tuple[type, ...]:
    """Classes of the transformer blocks to shard one by one: ``names`` (the config's
    ``fsdp_transformer_layer_cls_to_wrap``) or every backbone's own ``_no_split_modules``."""
    wanted = set(names or ())
    if not wanted:
        for module in model.modules():
            wanted.update(getattr(module, "_no_split_modules", None) or ())
    found = {type(m) for m in model.modules() if type(m).__name__ in wanted}
    if names and {c.__name__ for c in found} != set(names):
        missing = sorted(set(names) - {c.__name__ for c in found})
        raise LaunchError(f"accelerate FSDP config: fsdp_transformer_layer_cls_to_wrap names {missing}, which the model does not contain")
    return tuple(found)


def trainable_islands(model: nn.Module) -> list[nn.Module]:
    """The largest submodules whose parameters all train (adapters, LoRA matrices, connectors, the
    modality embedding). Each becomes its own FSDP unit, so frozen and trainable weights never share
    a flat parameter: the frozen ones keep their dtype (bf16 beside float32 adapters) and get no
    gradient buffers. Containers (ModuleDict, ModuleList) are never called, so their children are
    taken instead."""
    islands: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            params = list(child.parameters())
            if params and all(p.requires_grad for p in params) and not isinstance(child, (nn.ModuleDict, nn.ModuleList)):
                islands.append(child)
            else:
                visit(child)

    visit(model)
    return islands


def check_unit_dtypes(model: nn.Module, units: set[nn.Module]) -> None:
    """FSDP1 flattens the parameters each unit owns (outside nested units) into one tensor of one
    dtype; say which unit mixes dtypes instead of failing inside FSDP."""
    owned: dict[str, set[torch.dtype]] = {}

    def visit(module: nn.Module, owner: str, prefix: str) -> None:
        for p in module.parameters(recurse=False):
            owned.setdefault(owner, set()).add(p.dtype)
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            visit(child, path if child in units else owner, f"{path}.")

    visit(model, "(root)", "")
    mixed = {owner: dtypes for owner, dtypes in owned.items() if len(dtypes) > 1}
    if mixed:
        owner, dtypes = next(iter(mixed.items()))
        raise LaunchError(
            f"FSDP: {owner} holds parameters of several dtypes ({', '.join(sorted(map(str, dtypes)))}) outside the "
            "transformer blocks; give the backbones one dtype (model.llm.dtype and model.encoders.<name>.dtype)"
        )


def _own_parameters(unit: nn.Module) -> list[nn.Parameter]:
    """The parameters FSDP unit ``unit`` manages: those of its module outside nested units."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    own: list[nn.Parameter] = []

    def visit(module: nn.Module) -> None:
        own.extend(module.parameters(recurse=False))
        for child in module.children():
            if not isinstance(child, FullyShardedDataParallel):
                visit(child)

    visit(unit.module)
    return own


class FullySharded:
    """FSDP1 (``use_orig_params``): transformer blocks and trainable modules are units; the rest of
    the model is the root unit. Frozen weights are never written to checkpoints."""

    sharded = True

    def __init__(self, accelerator) -> None:
        self.accelerator = accelerator
        self.plugin = fsdp_plugin()
        self.names: dict[nn.Parameter, str] = {}
        self.optimizer_names: list[str] = []
        self.trainable_names: set[str] = set()

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import CustomPolicy

        # use_orig_params keeps these Parameter objects (their data become shards), so names are
        # taken before wrapping. The optimizer was built on the unsharded model (its groups split
        # matrices from vectors by shape); its parameter order maps checkpoint indices to names.
        self.names = {p: n for n, p in model.named_parameters()}
        self.optimizer_names = [self.names[p] for group in optimizer.param_groups for p in group["params"]]
        self.trainable_names = {n for p, n in self.names.items() if p.requires_grad}
        total = sum(p.numel() for p in model.parameters())
        islands = trainable_islands(model)
        blocks = block_classes(model, self.plugin.transformer_cls_names_to_wrap)
        units = {*islands, *(m for m in model.modules() if isinstance(m, blocks))}
        check_unit_dtypes(model, units)
        device = self.accelerator.device
        if device.type == "cpu":  # accelerate numbers CPU processes (cpu:1); FSDP wants the plain CPU
            device = torch.device("cpu")
        wrapped = FullyShardedDataParallel(
            model, auto_wrap_policy=CustomPolicy(lambda module: module in units),
            sharding_strategy=self.plugin.sharding_strategy, cpu_offload=self.plugin.cpu_offload,
            backward_prefetch=self.plugin.backward_prefetch, forward_prefetch=self.plugin.forward_prefetch,
            limit_all_gathers=self.plugin.limit_all_gathers, sync_module_states=self.plugin.sync_module_states,
            use_orig_params=True, device_id=device,
        )
        local = sum(p.numel() for p in model.parameters())
        n_blocks = sum(isinstance(m, blocks) for m in units)
        log.info("FSDP %s over %d processes: %d units (root, %d blocks of %s, %d trainable modules); process %d holds %s of %s parameter values",
                 self.plugin.sharding_strategy.name, self.accelerator.num_processes, len(units) + 1, n_blocks,
                 "/".join(sorted(c.__name__ for c in blocks)) or "no class", len(units) - n_blocks, self.accelerator.process_index,
                 f"{local:,}", f"{total:,}")
        return wrapped, optimizer

    def trainable_state(self, model, module: nn.Module) -> dict[str, torch.Tensor]:
        """Whole trainable tensors by model key, on every process (a collective). Only the units that
        hold trainable parameters are gathered, one at a time: a full state dict would materialise
        every frozen weight on every process, the very memory FSDP is there to save."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        state: dict[str, torch.Tensor] = {}
        for unit in FullyShardedDataParallel.fsdp_modules(module):  # the same order on every process
            trainable = [p for p in _own_parameters(unit) if p.requires_grad]
            if not trainable:
                continue
            with FullyShardedDataParallel.summon_full_params(unit, recurse=False, writeback=False):
                state.update({self.names[p]: p.detach().clone().cpu() for p in trainable})
        if set(state) != self.trainable_names:
            raise RuntimeError(f"FSDP gathered {len(state)} trainable tensors, the model has {len(self.trainable_names)}")
        return dict(sorted(state.items()))

    def optimizer_state(self, module: nn.Module, optimizer) -> dict:
        """The full optimizer state with parameters numbered as ``optimizer.state_dict()`` does."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        named = get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True))
        index = {name: i for i, name in enumerate(self.optimizer_names)}
        groups = [{**group, "params": [index[name] for name in group["params"]]} for group in named["param_groups"]]
        return {"state": {index[name]: value for name, value in named["state"].items()}, "param_groups": groups}

    def load_optimizer_state(self, module: nn.Module, optimizer, state: dict) -> None:
        """Loads a full ``optimizer.state_dict()``-layout state; each process keeps its shard."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = self.optimizer_names
        if len(names) != sum(len(group["params"]) for group in state["param_groups"]):
            raise ValueError(f"the checkpoint's optimizer has {sum(len(g['params']) for g in state['param_groups'])} parameters, this model {len(names)}")
        named = {
            "state": {names[i]: value for i, value in state["state"].items()},
            "param_groups": [{**group, "params": [names[i] for i in group["params"]]} for group in state["param_groups"]],
        }
        set_optimizer_state_dict(module, optimizer, named, options=StateDictOptions(full_state_dict=True))


def make_sharding(accelerator, fsdp: bool) -> Replicated | FullySharded:
    """FSDP when the launch asked for it and there is more than one process, else replication."""
    if fsdp and accelerator.num_processes > 1:
        return FullySharded(accelerator)
    if fsdp:
        log.info("FSDP config on one process: nothing to shard, training unsharded")
    return Replicated(accelerator)
