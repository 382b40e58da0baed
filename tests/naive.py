"""An independent, naive float64 implementation of the cogcore model, written from SPEC.md.

Nothing here imports cogcore: every block is a per-token (and per-head, per-key)
loop transcribed from the SPEC formulas, so that the tests compare the runtime with
a second implementation rather than with itself. Slow on purpose; small shapes only.

`tensors` are {name: array} as stored (float32, float16, or uint16 = bfloat16 bits);
`cfg` is a plain config dict with every key the model uses.
"""

from __future__ import annotations

import math

import numpy as np

GROUP_NORM_EPS = 64e-5   # SPEC 4.4 (a test may change it to show the eps matters)


def f64(a: np.ndarray) -> np.ndarray:
    """A stored tensor widened to float64 (uint16 = bfloat16 bits, the high half of a float32)."""
    a = np.asarray(a)
    if a.dtype == np.uint16:
        return (a.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return a.astype(np.float64)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def silu(x):
    return x * sigmoid(x)


def softmax(s):
    s = np.asarray(s, np.float64)
    e = np.exp(s - s.max())
    return e / e.sum()


# ---------------------------------------------------------------- norms
def rmsnorm_row(x, w, eps):
    return x / math.sqrt(sum(v * v for v in x) / len(x) + eps) * w


def layernorm_row(x, w, b, eps):
    mu = sum(x) / len(x)
    var = sum((v - mu) ** 2 for v in x) / len(x)
    return (x - mu) / math.sqrt(var + eps) * w + b


def norm(X, W, prefix, cfg):
    w = f64(W[f"{prefix}.weight"])
    if cfg.get("norm_type", "rmsnorm") == "layernorm":
        b = f64(W[f"{prefix}.bias"])
        return np.stack([layernorm_row(x, w, b, cfg.get("norm_eps", 1e-5)) for x in X])
    return np.stack([rmsnorm_row(x, w, cfg.get("norm_eps", 1e-5)) for x in X])


# ---------------------------------------------------------------- RoPE, as complex multiplication
def rope_head(u, p, theta):
    """Rotate one head vector u [hd] to position p: pairs (u[j], u[j+hd/2]) are complex numbers
    multiplied by exp(i p theta^(-2j/hd)) (equivalent to SPEC 4.1's rotate_half form)."""
    hd = len(u)
    half = hd // 2
    z = u[:half] + 1j * u[half:]
    angle = np.array([p * theta ** (-2.0 * j / hd) for j in range(half)])
    z = z * np.exp(1j * angle)
    return np.concatenate([z.real, z.imag])


def linear(x, Wt):
    """x [.., in] @ W[out, in]^T in float64."""
    return x @ f64(Wt).T


def qkv(X, W, p, cfg, positions):
    """Rotated per-head q [T, H, hd], k [T, Hkv, hd], v [T, Hkv, hd]."""
    T, H, Hkv, hd = len(X), cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    q = linear(X, W[f"{p}.self_attn.q_proj.weight"]).reshape(T, H, hd)
    k = linear(X, W[f"{p}.self_attn.k_proj.weight"]).reshape(T, Hkv, hd)
    v = linear(X, W[f"{p}.self_attn.v_proj.weight"]).reshape(T, Hkv, hd)
    theta = cfg["rope_theta"]
    for t in range(T):
        for h in range(H):
            q[t, h] = rope_head(q[t, h], positions[t], theta)
        for g in range(Hkv):
            k[t, g] = rope_head(k[t, g], positions[t], theta)
    return q, k, v


def attend(qh, keys, values):
    """Softmax attention of one query head over lists of key and value vectors (explicit key loop)."""
    scores = [float(np.dot(qh, kj)) / math.sqrt(len(qh)) for kj in keys]
    p = softmax(scores)
    out = np.zeros(len(qh))
    for pj, vj in zip(p, values):
        out += pj * vj
    return out


# ---------------------------------------------------------------- full / sliding attention (4.2)
def attention_mixer(X, W, p, cfg, kind):
    T, H, Hkv = len(X), cfg["num_attention_heads"], cfg["num_key_value_heads"]
    q, k, v = qkv(X, W, p, cfg, list(range(T)))
    out = np.zeros((T, H * cfg["head_dim"]))
    hd = cfg["head_dim"]
    for t in range(T):
        lo = max(0, t - cfg["sliding_window"] + 1) if kind == "sliding_attention" else 0
        for h in range(H):
            g = h // (H // Hkv)
            out[t, h * hd:(h + 1) * hd] = attend(q[t, h], [k[j, g] for j in range(lo, t + 1)],
                                                 [v[j, g] for j in range(lo, t + 1)])
    return linear(out, W[f"{p}.self_attn.o_proj.weight"])


# ---------------------------------------------------------------- NSA (4.3), brute force per query
def overlap_count(i, j, l, s, lsel):
    return len(set(range(i * s, i * s + l)) & set(range(j * lsel, (j + 1) * lsel)))


def nsa_select(scores, t, lsel, n):
    """Step 4: all candidates if at most n, else block 0, the current and previous block, and the
    n-3 best others (ties to the lower index)."""
    cand = list(range(len(scores)))
    if len(cand) <= n:
        return cand
    cur = t // lsel
    forced = {0, cur, cur - 1}
    rest = sorted((j for j in cand if j not in forced), key=lambda j: (-scores[j], j))
    return sorted(forced | set(rest[:n - 3]))


def nsa_mixer(X, W, p, cfg, positions=None):
    """Returns (output [T, D], selected {(t, g): sorted list of blocks}, branches dict)."""
    T = len(X)
    positions = list(range(T)) if positions is None else positions
    H, Hkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    l, s, lsel = cfg["nsa_compress_block"], cfg["nsa_compress_stride"], cfg["nsa_select_block"]
    n, w = cfg["nsa_select_count"], cfg["nsa_window"]
    q, k, v = qkv(X, W, p, cfg, positions)
    a = f"{p}.self_attn"

    def compress(rows, c):
        flat = (rows + f64(W[f"{a}.{c}.pos"])).reshape(-1)        # [l*hd], position-major
        return f64(W[f"{a}.{c}.fc2.weight"]) @ silu(f64(W[f"{a}.{c}.fc1.weight"]) @ flat)

    gates = sigmoid(linear(X, W[f"{a}.gate_proj.weight"])).reshape(T, 3, H)
    out = np.zeros((T, H * hd))
    selected = {}
    branches = {name: np.zeros((T, H, hd)) for name in ("cmp", "slc", "win")}
    for t in range(T):
        for g in range(Hkv):
            vis = [i for i in range(t + 1) if i * s + l - 1 <= t]
            kc = [compress(k[i * s:i * s + l, g], "compress_k") for i in vis]
            vc = [compress(v[i * s:i * s + l, g], "compress_v") for i in vis]
            heads = [h for h in range(H) if h // (H // Hkv) == g]
            n_cand = t // lsel + 1
            score = [0.0] * n_cand
            o_cmp = {}
            for h in heads:
                if vis:
                    ph = softmax([float(np.dot(q[t, h], kc_i)) / math.sqrt(hd) for kc_i in kc])
                    o_cmp[h] = sum(pi * vci for pi, vci in zip(ph, vc))
                    for j in range(n_cand):
                        score[j] += sum(ph[ii] * overlap_count(i, j, l, s, lsel) / s
                                        for ii, i in enumerate(vis))
                else:
                    o_cmp[h] = np.zeros(hd)
            blocks = nsa_select(score, t, lsel, n)
            selected[(t, g)] = blocks
            slc_pos = [u for j in blocks for u in range(j * lsel, (j + 1) * lsel) if u <= t]
            win_pos = list(range(max(0, t - w + 1), t + 1))
            for h in heads:
                o_slc = attend(q[t, h], [k[u, g] for u in slc_pos], [v[u, g] for u in slc_pos])
                o_win = attend(q[t, h], [k[u, g] for u in win_pos], [v[u, g] for u in win_pos])
                branches["cmp"][t, h], branches["slc"][t, h], branches["win"][t, h] = o_cmp[h], o_slc, o_win
                G = gates[t, :, h]
                out[t, h * hd:(h + 1) * hd] = G[0] * o_cmp[h] + G[1] * o_slc + G[2] * o_win
    return linear(out, W[f"{a}.o_proj.weight"]), selected, branches


# ---------------------------------------------------------------- RWKV-7 time mix (4.4)
def rwkv_mixer(X, W, p, cfg, v_first=None, x_prev=None, S=None):
    """Per-token recurrence. v_first None: this is the first recurrent layer (its v becomes v_first).
    Returns (out [T, D], v_first [T, D], x_prev [D], S [Hr, N, N])."""
    T, D, N = X.shape[0], X.shape[1], cfg["rwkv_head_size"]
    Hr = D // N
    r_ = f"{p}.rwkv"
    P = {name: f64(W[f"{r_}.{name}"]) for name in
         ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "w1", "w2", "a1", "a2",
          "v1", "v2", "g1", "g2", "k_k", "k_a", "r_k", "ln_x.weight", "ln_x.bias")}
    first = v_first is None
    v_first_out = np.zeros((T, D))
    S = np.zeros((Hr, N, N)) if S is None else S.copy()
    prev = np.zeros(D) if x_prev is None else x_prev
    out = np.zeros((T, D))
    for t in range(T):
        x = X[t]
        xx = prev - x
        prev = x
        xr, xw, xk, xv, xa, xg = (x + xx * P[m] for m in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"))
        r = linear(xr, W[f"{r_}.receptance.weight"])
        k = linear(xk, W[f"{r_}.key.weight"])
        v = linear(xv, W[f"{r_}.value.weight"])
        w = np.exp(-math.exp(-0.5) * sigmoid(P["w0"] + np.tanh(xw @ P["w1"]) @ P["w2"]))
        a = sigmoid(P["a0"] + (xa @ P["a1"]) @ P["a2"])
        g = sigmoid(xg @ P["g1"]) @ P["g2"]
        kk = k * P["k_k"]
        for h in range(Hr):
            seg = slice(h * N, (h + 1) * N)
            kk[seg] = kk[seg] / max(math.sqrt(sum(c * c for c in kk[seg])), 1e-12)
        k = k * (1 + (a - 1) * P["k_a"])
        if first:
            v_first_out[t] = v
        else:
            v_first_out[t] = v_first[t]
            v = v + (v_first[t] - v) * sigmoid(P["v0"] + (xv @ P["v1"]) @ P["v2"])
        y = np.zeros(D)
        for h in range(Hr):
            seg = slice(h * N, (h + 1) * N)
            wh, kh, vh, rh, kkh, ah = w[seg], k[seg], v[seg], r[seg], kk[seg], a[seg]
            Sh = S[h]
            new = np.zeros((N, N))
            for i in range(N):          # S[i, j] pairs value i with key j
                sa_i = sum(Sh[i, m] * -kkh[m] for m in range(N))
                for j in range(N):
                    new[i, j] = Sh[i, j] * wh[j] + sa_i * kkh[j] * ah[j] + vh[i] * kh[j]
            S[h] = new
            yh = new @ rh
            mu = yh.mean()
            var = ((yh - mu) ** 2).mean()
            yh = (yh - mu) / math.sqrt(var + GROUP_NORM_EPS) * P["ln_x.weight"][seg] + P["ln_x.bias"][seg]
            yh = yh + sum(rh * kh * P["r_k"][h]) * vh          # bonus
            y[seg] = yh
        out[t] = linear(y * g, W[f"{r_}.output.weight"])
    return out, v_first_out, prev, S


# ---------------------------------------------------------------- FFNs (4.5, 4.6)
def swiglu(x, gate, up, down):
    return f64(down) @ (silu(f64(gate) @ x) * (f64(up) @ x))


def moe(X, W, p, cfg):
    """Returns (y [T, D], per-expert token counts [E], chosen [T] lists)."""
    E, kk = cfg["num_experts"], cfg["num_experts_per_tok"]
    m = f"{p}.mlp"
    counts = np.zeros(E, np.int64)
    Y = np.zeros_like(X)
    chosen = []
    for t, x in enumerate(X):
        probs = softmax(linear(x, W[f"{m}.gate.weight"]))
        top = sorted(range(E), key=lambda e: (-probs[e], e))[:kk]
        chosen.append(top)
        wts = [probs[e] for e in top]
        if cfg.get("norm_topk_prob", True):
            total = sum(wts)
            wts = [wt / total for wt in wts]
        for e, wt in zip(top, wts):
            counts[e] += 1
            Y[t] += wt * swiglu(x, W[f"{m}.experts.gate_proj"][e], W[f"{m}.experts.up_proj"][e],
                                W[f"{m}.experts.down_proj"][e])
        if cfg.get("num_shared_experts", 0):
            sg = sigmoid(float(f64(W[f"{m}.shared_expert_gate.weight"])[0] @ x))
            Y[t] += sg * swiglu(x, W[f"{m}.shared_expert.gate_proj.weight"],
                                W[f"{m}.shared_expert.up_proj.weight"],
                                W[f"{m}.shared_expert.down_proj.weight"])
    return Y, counts, chosen


def dense(X, W, p):
    m = f"{p}.mlp"
    return np.stack([swiglu(x, W[f"{m}.gate_proj.weight"], W[f"{m}.up_proj.weight"],
                            W[f"{m}.down_proj.weight"]) for x in X])


def channel_mix(X, W, p, x_prev=None):
    m = f"{p}.mlp"
    prev = np.zeros(X.shape[1]) if x_prev is None else x_prev
    out = []
    for x in X:
        kx = x + (prev - x) * f64(W[f"{m}.x_k"])
        prev = x
        out.append(linear(np.maximum(linear(kx, W[f"{m}.key.weight"]), 0.0) ** 2, W[f"{m}.value.weight"]))
    return np.stack(out)


# ---------------------------------------------------------------- the whole model (Section 4)
def forward(W, cfg, tokens):
    """Logits [T, V] float64, and {'expert_counts': {layer: [E]}, 'selected': {layer: {(t, g): blocks}}}."""
    x = np.stack([f64(W["model.embed_tokens.weight"][tok]) for tok in tokens])
    if cfg.get("embedding_norm", False):
        x = norm(x, W, "model.embed_norm", cfg)
    v_first = None
    info = {"expert_counts": {}, "selected": {}}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        kind, mlp = cfg["layer_types"][i], cfg["mlp_types"][i]
        xn = norm(x, W, f"{p}.input_layernorm", cfg)
        if kind == "recurrent":
            mixed, vf, _, _ = rwkv_mixer(xn, W, p, cfg, v_first)
            v_first = vf
        elif kind == "sparse_attention":
            mixed, sel, _ = nsa_mixer(xn, W, p, cfg)
            info["selected"][i] = sel
        else:
            mixed = attention_mixer(xn, W, p, cfg, kind)
        h = x + mixed
        hn = norm(h, W, f"{p}.post_attention_layernorm", cfg)
        if mlp == "moe":
            f, counts, _ = moe(hn, W, p, cfg)
            info["expert_counts"][i] = counts
        elif mlp == "dense":
            f = dense(hn, W, p)
        else:
            f = channel_mix(hn, W, p)
        x = h + f
    head = W["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings", False) else W["lm_head.weight"]
    return linear(norm(x, W, "model.norm", cfg), head), info


# ---------------------------------------------------------------- SPEC Section 3: every tensor and shape
def spec_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """The tensors a config needs, transcribed from the SPEC Section 3 tables."""
    D, V = cfg["hidden_size"], cfg["vocab_size"]
    layernorm = cfg.get("norm_type", "rmsnorm") == "layernorm"
    out: dict[str, tuple[int, ...]] = {}

    def norm_(prefix):
        out[f"{prefix}.weight"] = (D,)
        if layernorm:
            out[f"{prefix}.bias"] = (D,)

    out["model.embed_tokens.weight"] = (V, D)
    if cfg.get("embedding_norm", False):
        norm_("model.embed_norm")
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        norm_(f"{p}.input_layernorm")
        norm_(f"{p}.post_attention_layernorm")
        kind, mlp = cfg["layer_types"][i], cfg["mlp_types"][i]
        if kind != "recurrent":
            H, Hkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
            a = f"{p}.self_attn"
            out[f"{a}.q_proj.weight"] = (H * hd, D)
            out[f"{a}.k_proj.weight"] = (Hkv * hd, D)
            out[f"{a}.v_proj.weight"] = (Hkv * hd, D)
            out[f"{a}.o_proj.weight"] = (D, H * hd)
            if kind == "sparse_attention":
                l, hc = cfg["nsa_compress_block"], cfg["nsa_compress_hidden"]
                for c in ("compress_k", "compress_v"):
                    out[f"{a}.{c}.pos"] = (l, hd)
                    out[f"{a}.{c}.fc1.weight"] = (hc, l * hd)
                    out[f"{a}.{c}.fc2.weight"] = (hd, hc)
                out[f"{a}.gate_proj.weight"] = (3 * H, D)
        else:
            N = cfg["rwkv_head_size"]
            r = f"{p}.rwkv"
            for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "k_k", "k_a"):
                out[f"{r}.{name}"] = (D,)
            for name, rank in (("w", "rwkv_decay_rank"), ("a", "rwkv_a_rank"), ("v", "rwkv_v_rank"),
                               ("g", "rwkv_gate_rank")):
                out[f"{r}.{name}1"] = (D, cfg[rank])
                out[f"{r}.{name}2"] = (cfg[rank], D)
            out[f"{r}.r_k"] = (D // N, N)
            for name in ("receptance", "key", "value", "output"):
                out[f"{r}.{name}.weight"] = (D, D)
            out[f"{r}.ln_x.weight"] = (D,)
            out[f"{r}.ln_x.bias"] = (D,)
        m = f"{p}.mlp"
        if mlp == "moe":
            E, F = cfg["num_experts"], cfg["moe_intermediate_size"]
            out[f"{m}.gate.weight"] = (E, D)
            out[f"{m}.experts.gate_proj"] = (E, F, D)
            out[f"{m}.experts.up_proj"] = (E, F, D)
            out[f"{m}.experts.down_proj"] = (E, D, F)
            if cfg.get("num_shared_experts", 0):
                Fs = cfg["shared_expert_intermediate_size"]
                out[f"{m}.shared_expert.gate_proj.weight"] = (Fs, D)
                out[f"{m}.shared_expert.up_proj.weight"] = (Fs, D)
                out[f"{m}.shared_expert.down_proj.weight"] = (D, Fs)
                out[f"{m}.shared_expert_gate.weight"] = (1, D)
        elif mlp == "dense":
            Fd = cfg["intermediate_size"]
            out[f"{m}.gate_proj.weight"] = (Fd, D)
            out[f"{m}.up_proj.weight"] = (Fd, D)
            out[f"{m}.down_proj.weight"] = (D, Fd)
        else:
            Fd = cfg["intermediate_size"]
            out[f"{m}.x_k"] = (D,)
            out[f"{m}.key.weight"] = (Fd, D)
            out[f"{m}.value.weight"] = (D, Fd)
    norm_("model.norm")
    if not cfg.get("tie_word_embeddings", False):
        out["lm_head.weight"] = (V, D)
    return out


def spec_counts(cfg: dict) -> dict[str, int]:
    """total; active = total minus the (E - k) unchosen experts of each MoE layer;
    active_non_embedding = active minus embed_tokens and lm_head."""
    shapes = spec_shapes(cfg)
    total = sum(math.prod(s) for s in shapes.values())
    idle = 0
    for i, mlp in enumerate(cfg["mlp_types"]):
        if mlp == "moe":
            per_expert = 3 * cfg["moe_intermediate_size"] * cfg["hidden_size"]
            idle += (cfg["num_experts"] - cfg["num_experts_per_tok"]) * per_expert
    emb = cfg["vocab_size"] * cfg["hidden_size"] * (1 if cfg.get("tie_word_embeddings", False) else 2)
    return {"total": total, "active": total - idle, "active_non_embedding": total - idle - emb}
