"""HydraLM: a hybrid of Gated DeltaNet and sliding-window attention layers
whose inference state has a fixed size however many tokens it has read."""

import importlib.util

from hydralm.config import HydraConfig
from hydralm.device import select_device
from hydralm.model import HydraLM, HydraModel, HydraOutput
from hydralm.state import HydraState, state_bytes

__version__ = "0.1.0"

__all__ = [
    "HydraConfig",
    "HydraLM",
    "HydraModel",
    "HydraOutput",
    "HydraState",
    "select_device",
    "state_bytes",
]

# Register the transformers adapter with AutoConfig / AutoModelForCausalLM
# when transformers is installed; the rest of the library needs torch only.
if importlib.util.find_spec("transformers") is not None:
    import hydralm.hf  # noqa: F401
