"""Import pretrained weights of other architectures into HydraLM."""

from hydralm.convert.llama import (
    build_hydra_lm,
    hydra_config_from_llama,
    hydra_from_llama,
    hydra_state_dict_from_llama,
    load_gguf_llama,
)

__all__ = [
    "build_hydra_lm",
    "hydra_config_from_llama",
    "hydra_from_llama",
    "hydra_state_dict_from_llama",
    "load_gguf_llama",
]
