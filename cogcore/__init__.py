"""cogcore: a from-scratch runtime for sparse mixture-of-experts "cognitive core" models.

    import cogcore
    model = cogcore.load("weights/cogcore-tiny")        # backend="numba" (default) or "numpy"
    logits = model.forward([1, 5, 9])                   # float32 [T, V]
    text = model.generate("12+345=", max_new_tokens=8)
    pc = cogcore.PromptCache(model)                      # reuse computed prefixes across prompts
    text = model.generate(document + question, prompt_cache=pc)
    cogcore.quantize("weights/cogcore-tiny", "tiny-q4", "q4_0")   # GGML q8_0 / q4_0 blocks
"""

import os as _os

# Idle thread pools sleep instead of spinning. GNU OpenMP (Numba's threading layer) spins a worker
# for milliseconds after every parallel region and OpenBLAS spins its threads for ~0.1 s after every
# call; in a decode step, where most kernels run on one thread, that spinning thread held the second
# core and, with any other program running, the step's own thread had to share a core with it: two
# threads decoded up to 2x slower than one (docs/performance.md, "Two threads"). libgomp reads its
# variable when Numba starts its threads, OpenBLAS when numpy is first imported (so this one only
# applies when cogcore is imported before numpy, as by the command line). 2**18 cycles: ~0.1 ms.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")

from .config import Config, preset
from .errors import CogcoreError, ConfigError, InputError, WeightsError
from .model import Model, load, parameter_counts, tensor_shapes
from .prompt_cache import PromptCache, PromptCacheError
from .quantizer import quantize

__version__ = "0.1.0"
__all__ = ["CogcoreError", "Config", "ConfigError", "InputError", "Model", "PromptCache", "PromptCacheError",
           "WeightsError", "load", "parameter_counts", "preset", "quantize", "tensor_shapes"]
