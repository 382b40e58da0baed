"""The bench's bookkeeping (not its speed, which is measured, never asserted)."""

import numpy as np

from cogcore.bench import bytes_per_token, read_bandwidth
from cogcore.config import preset


def test_read_bandwidth_is_the_best_method_and_names_it():
    bw, winner, rates = read_bandwidth(4 * 2**20, reps=1, threads=(1, 2))
    assert bw == max(rates.values()) == rates[winner]
    methods = {k.rsplit(",", 1)[0] for k in rates}
    assert methods == {"numpy sum", "numba sum", "numba parallel sum", "BLAS sgemv with ones"}


def test_bytes_per_token_counts_chosen_experts_one_embedding_row_and_compression_per_stride():
    cfg = preset("4b", num_experts=4, num_experts_per_tok=2, tie_word_embeddings=False)
    V, D = 10, 6
    w = {"model.embed_tokens.weight": np.zeros((V, D), np.float32),            # one row: 24 bytes
         "model.layers.0.mlp.experts.gate_proj": np.zeros((4, 3, D), np.uint16),  # 2 of 4 experts: 72
         "lm_head.weight": np.zeros((V, D), np.float32),                        # whole: 240
         "model.layers.1.self_attn.compress_k.fc1.weight": np.zeros((cfg.nsa_compress_stride, 8), np.float32)}
    assert bytes_per_token(cfg, w) == 24 + 72 + 240 + 32              # NSA compression: once per stride


def test_wall_and_cpu_time_the_same_calls():
    """CPU time leaves out time the caller did not run: a sleeping call takes wall time, no CPU."""
    import time

    from cogcore.bench import wall_and_cpu

    wall, cpu = wall_and_cpu(lambda: time.sleep(0.02), reps=3)
    assert wall >= 0.02 and cpu < 0.01
