"""Adapters: LaVIN's MM-Adapter, the plain RepAdapter, LoRA (PEFT), and their placement."""

from cotune.adapters.bottleneck import GroupedUp, MMAdapter, RepAdapter
from cotune.adapters.gate import GateError, LoraGate
from cotune.adapters.inject import ADAPTERS, AdapterHost
from cotune.adapters.routing import RoutingError, RoutingState
from cotune.adapters.sites import AdaptedInput, SiteError, find_blocks

__all__ = [
    "ADAPTERS", "AdaptedInput", "AdapterHost", "GateError", "GroupedUp", "LoraGate", "MMAdapter", "RepAdapter", "RoutingError",
    "RoutingState", "SiteError", "find_blocks",
]
