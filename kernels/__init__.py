"""Numba twins of the hot functions of cogcore.blocks, installed as `cogcore.kernels`.

Each module `kernels/X.py` mirrors `cogcore/blocks/X.py` (same function names,
arguments and results) and imports nothing from cogcore: these are numeric
functions. `cogcore.backends.NumbaOps` binds them into the ops table that the
blocks call. Every kernel is compiled with `cache=True`; kernels that split work
across threads come in a serial and a parallel variant (`threads.twins`).

| op                         | kernel                                                     | module            |
|----------------------------|------------------------------------------------------------|-------------------|
| linear                     | decode: GEMV per storage kind; prefill: sgemm / block-widened BLAS | linear.py  |
| rmsnorm, layernorm, add_*  | one pass per row; the add_* variants fuse the residual add | norm.py           |
| rope                       | rotation with float64 or float32 angles (inv_freq's dtype) | rope.py           |
| attention                  | decode: chunked running softmax per GQA group; prefill, long contexts: BLAS products | attention.py |
| nsa_attention              | decode: the branches per (query, group); prefill: BLAS per block of queries | sparse_attention.py |
| wkv7                       | one fused pass per token and head                          | rwkv7.py          |
| rwkv7_inputs, rwkv7_output | decode: token shift + low-rank branches; kk, residual, wkv7, group norm, gate | rwkv7.py |
| moe                        | router top-k; fused expert GEMVs (decode); grouped BLAS (prefill) | moe.py     |
| linear, moe over q8_0 / q4_0 | fused dequantize-dot GEMV (decode); block-dequantized BLAS (prefill) | quant.py |
| token_probabilities        | top-k / top-p / min-p ranking only the top m ids           | sampling.py       |
| (exp)                      | `expf`: a float32 exp that vectorises (within 1 ulp)      | expf.py           |
| (threads)                  | serial / parallel twins, `pick`, thread counts             | threads.py        |
"""
