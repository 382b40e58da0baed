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

# Idle thread pools sleep soon instead of spinning. GNU OpenMP (Numba's threading layer here) spins a
# worker for ~5-8 ms after every parallel region, OpenBLAS its threads for ~0.1 s after every call. A
# decode step of a small model has one parallel region (lm_head), so with two threads a worker spun
# through the step on the second core, and with any other program running the step's own thread got
# half a core: two threads decoded up to 2x slower than one. 2000 spins (~0.1 ms) keep a worker awake
# between the back-to-back regions of a large model (a sleeping worker made each ~50 us dearer and
# took the 4b's two-thread gain) and let it sleep through serial stretches (docs/performance.md,
# "Two threads"). libgomp reads its variable when Numba starts its threads; OpenBLAS when numpy is
# first imported, so that one only applies when cogcore is imported first (as by the command line).
if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", "2000")
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")              # 2**18 cycles: ~0.1 ms

from .config import Config, preset
from .errors import CogcoreError, ConfigError, InputError, WeightsError
from .model import Model, load, parameter_counts, tensor_shapes
from .prompt_cache import PromptCache, PromptCacheError
from .quantizer import quantize

__version__ = "0.1.0"
__all__ = ["CogcoreError", "Config", "ConfigError", "InputError", "Model", "PromptCache", "PromptCacheError",
           "WeightsError", "load", "parameter_counts", "preset", "quantize", "tensor_shapes"]
