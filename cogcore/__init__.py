"""cogcore: a from-scratch runtime for sparse mixture-of-experts "cognitive core" models.

    import cogcore
    model = cogcore.load("weights/cogcore-tiny")        # backend="numba" (default) or "numpy"
    logits = model.forward([1, 5, 9])                   # float32 [T, V]
    text = model.generate("12+345=", max_new_tokens=8)
    pc = cogcore.PromptCache(model)                      # reuse computed prefixes across prompts
    text = model.generate(document + question, prompt_cache=pc)
    cogcore.quantize("weights/cogcore-tiny", "tiny-q4", "q4_0")   # GGML q8_0 / q4_0 blocks
"""

from .config import Config, preset
from .errors import CogcoreError, ConfigError, InputError, WeightsError
from .model import Model, load, parameter_counts, tensor_shapes
from .prompt_cache import PromptCache, PromptCacheError
from .quantizer import quantize

__version__ = "0.1.0"
__all__ = ["CogcoreError", "Config", "ConfigError", "InputError", "Model", "PromptCache", "PromptCacheError",
           "WeightsError", "load", "parameter_counts", "preset", "quantize", "tensor_shapes"]
