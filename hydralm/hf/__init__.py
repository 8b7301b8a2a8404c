"""transformers adapter: HydraLMConfig and HydraLMForCausalLM, registered as "hydralm".

Importing this package registers both with ``AutoConfig`` and
``AutoModelForCausalLM``, so ``AutoModelForCausalLM.from_pretrained(folder)``
loads a saved HydraLM.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from hydralm.hf.configuration_hydralm import HydraLMConfig
from hydralm.hf.modeling_hydralm import HydraCache, HydraLMForCausalLM, HydraLMPreTrainedModel

AutoConfig.register(HydraLMConfig.model_type, HydraLMConfig, exist_ok=True)
AutoModelForCausalLM.register(HydraLMConfig, HydraLMForCausalLM, exist_ok=True)

__all__ = ["HydraCache", "HydraLMConfig", "HydraLMForCausalLM", "HydraLMPreTrainedModel"]
