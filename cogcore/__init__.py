"""cogcore: a from-scratch runtime for sparse mixture-of-experts "cognitive core" models.

    import cogcore
    model = cogcore.load("weights/cogcore-tiny")        # backend="numba" (default) or "numpy"
    logits = model.forward([1, 5, 9])                   # float32 [T, V]
    text = model.generate("12+345=", max_new_tokens=8)
    pc = cogcore.PromptCache(model)                      # reuse computed prefixes across prompts
    text = model.generate(document + question, prompt_cache=pc)
"""

from .config import Config, preset
from .errors import CogcoreError, ConfigError, InputError, WeightsError
from .model import Model, load, parameter_counts, tensor_shapes
from .prompt_cache import PromptCache, PromptCacheError

__version__ = "0.1.0"
__all__ = ["CogcoreError", "Config", "ConfigError", "InputError", "Model", "PromptCache", "PromptCacheError",
           "WeightsError", "load", "parameter_counts", "preset", "tensor_shapes"]
