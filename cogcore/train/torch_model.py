"""A PyTorch mirror of the cogcore forward pass (SPEC Section 4), for training.

This is an independent implementation written from /SPEC.md (not from the NumPy
runtime), so that the two can cross-check each other: on the same weights they must
give the same logits. It works on a batch ``[B, T]`` of right-padded sequences
(everything is causal, so padding after a sequence does not change its logits).

Parameters are kept under their SPEC tensor names (``model.layers.0.rwkv.w0`` ...),
so ``state_dict_spec()`` is exactly the safetensors payload, and
``load_spec(tensors)`` loads one.

Training-specific choices (all exact with respect to the SPEC forward):
- MoE: tokens are dispatched to their top-k experts (no capacity limit), weighted as
  in SPEC 4.5; ``self.aux_loss`` accumulates a Switch-style load-balancing term.
- NSA: the three branches are computed with masks; the block selection (SPEC 4.3
  steps 3-4) is computed without gradient, as in the paper.
- RWKV-7: a per-token loop over time on a batched state ``[B, Hr, N, N]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

ATTN_TYPES = ("full_attention", "sliding_attention", "sparse_attention")


def _key(name: str) -> str:
    return name.replace(".", "__")


def tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """SPEC Section 3: every tensor name the config needs, with its shape."""
    D, V = cfg["hidden_size"], cfg["vocab_size"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, D)}
    layernorm = cfg.get("norm_type", "rmsnorm") == "layernorm"

    def norm(name):
        shapes[name + ".weight"] = (D,)
        if layernorm:
            shapes[name + ".bias"] = (D,)

    if cfg.get("embedding_norm", False):
        norm("model.embed_norm")
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        norm(p + "input_layernorm")
        norm(p + "post_attention_layernorm")
        lt, mt = cfg["layer_types"][i], cfg["mlp_types"][i]
        if lt in ATTN_TYPES:
            H, Hkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
            a = p + "self_attn."
            shapes[a + "q_proj.weight"] = (H * hd, D)
            shapes[a + "k_proj.weight"] = (Hkv * hd, D)
            shapes[a + "v_proj.weight"] = (Hkv * hd, D)
            shapes[a + "o_proj.weight"] = (D, H * hd)
            if lt == "sparse_attention":
                l, hc = cfg["nsa_compress_block"], cfg["nsa_compress_hidden"]
                for c in ("compress_k", "compress_v"):
                    shapes[a + c + ".pos"] = (l, hd)
                    shapes[a + c + ".fc1.weight"] = (hc, l * hd)
                    shapes[a + c + ".fc2.weight"] = (hd, hc)
                shapes[a + "gate_proj.weight"] = (3 * H, D)
        elif lt == "recurrent":
            N = cfg["rwkv_head_size"]
            Hr = D // N
            r = p + "rwkv."
            for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "k_k", "k_a"):
                shapes[r + n] = (D,)
            for n, rank in (("w", "rwkv_decay_rank"), ("a", "rwkv_a_rank"), ("v", "rwkv_v_rank"),
                            ("g", "rwkv_gate_rank")):
                shapes[r + n + "1"] = (D, cfg[rank])
                shapes[r + n + "2"] = (cfg[rank], D)
            shapes[r + "r_k"] = (Hr, N)
            for n in ("receptance", "key", "value", "output"):
                shapes[r + n + ".weight"] = (D, D)
            shapes[r + "ln_x.weight"] = (D,)
            shapes[r + "ln_x.bias"] = (D,)
        else:
            raise ValueError(f"unknown layer type {lt!r}")
        m = p + "mlp."
        if mt == "moe":
            E, Fm = cfg["num_experts"], cfg["moe_intermediate_size"]
            shapes[m + "gate.weight"] = (E, D)
            shapes[m + "experts.gate_proj"] = (E, Fm, D)
            shapes[m + "experts.up_proj"] = (E, Fm, D)
            shapes[m + "experts.down_proj"] = (E, D, Fm)
            if cfg.get("num_shared_experts", 0):
                Fs = cfg["shared_expert_intermediate_size"]
                shapes[m + "shared_expert.gate_proj.weight"] = (Fs, D)
                shapes[m + "shared_expert.up_proj.weight"] = (Fs, D)
                shapes[m + "shared_expert.down_proj.weight"] = (D, Fs)
                shapes[m + "shared_expert_gate.weight"] = (1, D)
        elif mt == "dense":
            Fd = cfg["intermediate_size"]
            shapes[m + "gate_proj.weight"] = (Fd, D)
            shapes[m + "up_proj.weight"] = (Fd, D)
            shapes[m + "down_proj.weight"] = (D, Fd)
        elif mt == "channel_mix":
            Fd = cfg["intermediate_size"]
            shapes[m + "x_k"] = (D,)
            shapes[m + "key.weight"] = (Fd, D)
            shapes[m + "value.weight"] = (D, Fd)
        else:
            raise ValueError(f"unknown mlp type {mt!r}")
    shapes["model.norm.weight"] = (D,)
    if layernorm:
        shapes["model.norm.bias"] = (D,)
    if not cfg.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (V, D)
    return shapes


# ----------------------------------------------------------------------------- helpers

def rope_cos_sin(T: int, hd: int, theta: float, dtype, device=None, offset: int = 0):
    inv_freq = theta ** (-torch.arange(0, hd // 2, dtype=torch.float64) * 2.0 / hd)
    pos = torch.arange(offset, offset + T, dtype=torch.float64)
    ang = pos[:, None] * inv_freq[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1).to(dtype)
    sin = torch.cat([ang.sin(), ang.sin()], -1).to(dtype)
    return cos, sin                                     # [T, hd]


def apply_rope(u, cos, sin):
    """u [..., T, hd]: u*cos + rotate_half(u)*sin, rotate_half([a, b]) = [-b, a]."""
    half = u.shape[-1] // 2
    rot = torch.cat([-u[..., half:], u[..., :half]], -1)
    return u * cos + rot * sin


def masked_attention(q, k, v, mask, scale):
    """q [B,H,T,hd], k/v [B,H,S,hd], mask bool broadcastable to [B,H,T,S]; rows with no
    visible key give 0."""
    bias = torch.zeros(mask.shape, dtype=q.dtype).masked_fill_(~mask, -1e30)   # exp underflows to 0
    p = torch.softmax((q @ k.transpose(-1, -2)) * scale + bias, -1)
    any_vis = mask.any(-1, keepdim=True)
    if not bool(any_vis.all()):
        p = p * any_vis
    return p @ v, p


def overlap_matrix(nc: int, nb: int, l: int, s: int, lsel: int) -> torch.Tensor:
    """O[i, j] = |[i*s, i*s+l) ∩ [j*l', (j+1)*l')|."""
    i = torch.arange(nc)[:, None]
    j = torch.arange(nb)[None, :]
    lo = torch.maximum(i * s, j * lsel)
    hi = torch.minimum(i * s + l, (j + 1) * lsel)
    return (hi - lo).clamp(min=0)


# ----------------------------------------------------------------------------- RWKV-7 state loop

def wkv7_reference(r, w, k, v, b, c):
    """The SPEC 4.4 state recurrence, per token (autograd through the loop).
    All inputs [B, T, Hr, N]; b = -kk, c = kk * a. Returns y [B, T, Hr, N]."""
    B, T, Hr, N = r.shape
    S = r.new_zeros(B, Hr, N, N)                                            # [value i, key j]
    ys = []
    for t in range(T):
        sa = torch.einsum("bhij,bhj->bhi", S, b[:, t])
        S = S * w[:, t, :, None, :] + sa[..., :, None] * c[:, t, :, None, :] + v[:, t, :, :, None] * k[:, t, :, None, :]
        ys.append(torch.einsum("bhij,bhj->bhi", S, r[:, t]))
    return torch.stack(ys, 1)


class WKV7(torch.autograd.Function):
    """Same recurrence as ``wkv7_reference`` with a hand-written backward pass:
    S_t = S_{t-1} * w_t[None, :] + (S_{t-1} b_t) c_t^T + v_t k_t^T,  y_t = S_t r_t."""

    @staticmethod
    def forward(ctx, r, w, k, v, b, c):
        B, T, Hr, N = r.shape
        M = B * Hr
        rf, wf, kf, vf, bf, cf = (u.transpose(0, 1).reshape(T, M, N).contiguous() for u in (r, w, k, v, b, c))
        S = r.new_zeros(M, N, N)
        states = [S]
        ys = []
        for t in range(T):
            sa = torch.bmm(S, bf[t].unsqueeze(-1))                          # [M,N,1]
            U = torch.cat([sa, vf[t].unsqueeze(-1)], -1)                     # [M,N,2]
            Vt = torch.stack([cf[t], kf[t]], 1)                              # [M,2,N]
            S = torch.baddbmm(S * wf[t].unsqueeze(1), U, Vt)
            states.append(S)
            ys.append(torch.bmm(S, rf[t].unsqueeze(-1)))
        ys = torch.cat(ys, -1).permute(2, 0, 1)                              # [T,M,N]
        ctx.save_for_backward(rf, wf, kf, vf, bf, cf, *states)
        ctx.shape = (B, T, Hr, N)
        return ys.reshape(T, B, Hr, N).transpose(0, 1)

    @staticmethod
    def backward(ctx, gy):
        rf, wf, kf, vf, bf, cf, *states = ctx.saved_tensors
        B, T, Hr, N = ctx.shape
        M = B * Hr
        gyf = gy.transpose(0, 1).reshape(T, M, N)
        grads = [torch.empty_like(rf) for _ in range(6)]
        gr, gw, gk, gv, gb, gc = grads
        dS = rf.new_zeros(M, N, N)
        for t in range(T - 1, -1, -1):
            S, Sp = states[t + 1], states[t]
            dy = gyf[t]
            gr[t] = torch.bmm(S.transpose(1, 2), dy.unsqueeze(-1)).squeeze(-1)
            dS = torch.baddbmm(dS, dy.unsqueeze(-1), rf[t].unsqueeze(1))
            sa = torch.bmm(Sp, bf[t].unsqueeze(-1))                          # [M,N,1]
            kc = torch.stack([kf[t], cf[t]], -1)                             # [M,N,2]
            dv_dsa = torch.bmm(dS, kc)                                       # [M,N,2]
            gv[t] = dv_dsa[..., 0]
            dsa = dv_dsa[..., 1]
            vs = torch.cat([vf[t].unsqueeze(-1), sa], -1)                    # [M,N,2]
            dk_dc = torch.bmm(dS.transpose(1, 2), vs)                        # [M,N,2]
            gk[t] = dk_dc[..., 0]
            gc[t] = dk_dc[..., 1]
            gw[t] = (dS * Sp).sum(1)
            gb[t] = torch.bmm(Sp.transpose(1, 2), dsa.unsqueeze(-1)).squeeze(-1)
            dS = torch.baddbmm(dS * wf[t].unsqueeze(1), dsa.unsqueeze(-1), bf[t].unsqueeze(1))
        return tuple(g.reshape(T, B, Hr, N).transpose(0, 1) for g in grads)


# ----------------------------------------------------------------------------- model

class CogcoreTorch(nn.Module):
    def __init__(self, cfg: dict, seed: int | None = None, init: str = "train"):
        super().__init__()
        self.cfg = dict(cfg)
        self.shapes = tensor_shapes(self.cfg)
        self.names = list(self.shapes)
        self.params = nn.ParameterDict(
            {_key(n): nn.Parameter(torch.empty(s, dtype=torch.float32)) for n, s in self.shapes.items()})
        self.aux_loss = torch.zeros(())
        self.expert_counts: list = []
        self.router_logits: list = []
        self.router_jitter = 0.0
        gen = torch.Generator().manual_seed(0 if seed is None else seed)
        self.reset_parameters(gen, init)

    # -- access by SPEC name
    def p(self, name: str) -> torch.Tensor:
        return self.params[_key(name)]

    def has(self, name: str) -> bool:
        return _key(name) in self.params

    def state_dict_spec(self) -> dict[str, torch.Tensor]:
        return {n: self.p(n).detach().contiguous() for n in self.names}

    @torch.no_grad()
    def load_spec(self, tensors: dict, strict: bool = True):
        extra = set(tensors) - set(self.names)
        missing = set(self.names) - set(tensors)
        if strict and (extra or missing):
            raise ValueError(f"tensor mismatch: missing {sorted(missing)}, extra {sorted(extra)}")
        for n in self.names:
            t = torch.as_tensor(tensors[n])
            if tuple(t.shape) != self.shapes[n]:
                raise ValueError(f"{n}: expected {self.shapes[n]}, found {tuple(t.shape)}")
            self.p(n).copy_(t.to(self.p(n).dtype))

    # -- init
    @torch.no_grad()
    def reset_parameters(self, gen: torch.Generator, init: str = "train"):
        cfg = self.cfg
        D = cfg["hidden_size"]
        L = cfg["num_hidden_layers"]

        def normal(t, std):
            t.copy_(torch.randn(t.shape, generator=gen) * std)

        def uniform(t, a):
            t.copy_((torch.rand(t.shape, generator=gen) * 2 - 1) * a)

        def ortho(t, gain):
            m = torch.randn(t.shape, generator=gen)
            q, r = torch.linalg.qr(m if m.shape[0] >= m.shape[1] else m.T)
            q = q * torch.sign(torch.diagonal(r))[None, :]
            t.copy_((q if m.shape[0] >= m.shape[1] else q.T) * gain)

        if init == "random":          # plain random weights for cross-checks
            for n in self.names:
                t = self.p(n)
                if t.dim() == 1 or n.endswith("r_k"):
                    normal(t, 0.5)
                    if n.endswith("norm.weight") or n.endswith("layernorm.weight") or n.endswith("ln_x.weight"):
                        t.add_(1.0)
                else:
                    normal(t, 1.0 / math.sqrt(t.shape[-1]))
            return

        for n in self.names:
            t = self.p(n)
            if n.endswith("norm.weight") or n.endswith("layernorm.weight"):
                t.fill_(1.0)
            elif n.endswith(".bias"):
                t.zero_()
            elif t.dim() >= 2:
                normal(t, 1.0 / math.sqrt(t.shape[-1]))
        normal(self.p("model.embed_tokens.weight"), 1.0)
        if self.has("lm_head.weight"):
            normal(self.p("lm_head.weight"), 0.5 / math.sqrt(D))
        out_scale = 0.5 / math.sqrt(2 * L)
        for i in range(L):
            p = f"model.layers.{i}."
            lt, mt = cfg["layer_types"][i], cfg["mlp_types"][i]
            if lt in ATTN_TYPES:
                t = self.p(p + "self_attn.o_proj.weight")
                normal(t, out_scale / math.sqrt(t.shape[-1]))
                if lt == "sparse_attention":
                    for c in ("compress_k", "compress_v"):
                        normal(self.p(p + f"self_attn.{c}.pos"), 0.02)
                    self.p(p + "self_attn.gate_proj.weight").zero_()      # all gates 0.5
            if lt == "recurrent":
                self._init_rwkv(i, gen, uniform, ortho)
            if mt == "moe":
                t = self.p(p + "mlp.experts.down_proj")
                normal(t, out_scale / math.sqrt(t.shape[-1]))
                normal(self.p(p + "mlp.gate.weight"), 0.02)
            elif mt == "dense":
                t = self.p(p + "mlp.down_proj.weight")
                normal(t, out_scale / math.sqrt(t.shape[-1]))
            elif mt == "channel_mix":
                self.p(p + "mlp.x_k").fill_(0.5)
                self.p(p + "mlp.value.weight").zero_()

    def _init_rwkv(self, i, gen, uniform, ortho):
        """In the spirit of the RWKV-7 reference init (BlinkDL/RWKV-LM, RWKV-v7)."""
        cfg = self.cfg
        D, L = cfg["hidden_size"], cfg["num_hidden_layers"]
        N = cfg["rwkv_head_size"]
        r = f"model.layers.{i}.rwkv."
        r0 = i / max(L - 1, 1)
        r1 = 1.0 - i / L
        ddd = torch.arange(D, dtype=torch.float32) / D
        self.p(r + "x_r").copy_(1 - ddd ** (0.2 * r1))
        self.p(r + "x_w").copy_(1 - ddd ** (0.9 * r1))
        self.p(r + "x_k").copy_(1 - ddd ** (0.7 * r1))
        self.p(r + "x_v").copy_(1 - ddd ** (0.7 * r1))
        self.p(r + "x_a").copy_(1 - ddd ** (0.9 * r1))
        self.p(r + "x_g").copy_(1 - ddd ** (0.2 * r1))
        n = torch.arange(D, dtype=torch.float32)
        decay_speed = -7 + 5 * (n / (D - 1)) ** (0.85 + 1.0 * r0 ** 0.5)
        self.p(r + "w0").copy_(decay_speed + 0.5)
        self.p(r + "a0").zero_()
        self.p(r + "v0").fill_(1.0)
        for m in ("w1", "a1", "v1", "g1"):
            self.p(r + m).zero_()
        for m in ("w2", "a2", "v2", "g2"):
            ortho(self.p(r + m), 0.1)
        self.p(r + "k_k").fill_(0.85)
        self.p(r + "k_a").fill_(1.0)
        self.p(r + "r_k").fill_(0.0)
        s = 1.0 / math.sqrt(D)
        uniform(self.p(r + "receptance.weight"), 0.5 * s)
        uniform(self.p(r + "key.weight"), 0.05 * s)
        uniform(self.p(r + "value.weight"), 0.5 * s)
        self.p(r + "output.weight").zero_()
        self.p(r + "ln_x.weight").fill_(((1 + i) / L) ** 0.7)
        self.p(r + "ln_x.bias").zero_()
        del N

    # -- blocks
    def norm(self, x, name):
        cfg = self.cfg
        eps = cfg.get("norm_eps", 1e-5)
        w = self.p(name + ".weight")
        if cfg.get("norm_type", "rmsnorm") == "layernorm":
            mu = x.mean(-1, keepdim=True)
            var = ((x - mu) ** 2).mean(-1, keepdim=True)
            return (x - mu) / torch.sqrt(var + eps) * w + self.p(name + ".bias")
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w

    def attention(self, x, i):
        cfg = self.cfg
        lt = cfg["layer_types"][i]
        a = f"model.layers.{i}.self_attn."
        B, T, _ = x.shape
        H, Hkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
        rep = H // Hkv
        q = (x @ self.p(a + "q_proj.weight").T).view(B, T, H, hd).transpose(1, 2)
        k = (x @ self.p(a + "k_proj.weight").T).view(B, T, Hkv, hd).transpose(1, 2)
        v = (x @ self.p(a + "v_proj.weight").T).view(B, T, Hkv, hd).transpose(1, 2)
        cos, sin = rope_cos_sin(T, hd, cfg.get("rope_theta", 10000.0), x.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        kh, vh = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        scale = 1.0 / math.sqrt(hd)
        t = torch.arange(T)
        causal = t[None, :] <= t[:, None]                                   # [T(q), T(k)]
        if lt == "full_attention":
            o, _ = masked_attention(q, kh, vh, causal, scale)
        elif lt == "sliding_attention":
            W = cfg["sliding_window"]
            o, _ = masked_attention(q, kh, vh, causal & (t[None, :] > t[:, None] - W), scale)
        else:
            o = self.nsa(x, q, k, v, i, scale)
        o = o.transpose(1, 2).reshape(B, T, H * hd)
        return o @ self.p(a + "o_proj.weight").T

    def compress(self, u, i, which):
        """u [B, Hkv, T, hd] -> [B, Hkv, nc, hd] (SPEC 4.3 step 1)."""
        cfg = self.cfg
        l, s = cfg["nsa_compress_block"], cfg["nsa_compress_stride"]
        a = f"model.layers.{i}.self_attn.{which}."
        B, G, T, hd = u.shape
        if T < l:
            return u.new_zeros(B, G, 0, hd)
        blocks = u.unfold(2, l, s).transpose(-1, -2)                        # [B,G,nc,l,hd]
        blocks = blocks + self.p(a + "pos")
        flat = blocks.reshape(B, G, blocks.shape[2], l * hd)
        h = F.silu(flat @ self.p(a + "fc1.weight").T)
        return h @ self.p(a + "fc2.weight").T

    def nsa(self, x, q, k, v, i, scale):
        cfg = self.cfg
        l, s = cfg["nsa_compress_block"], cfg["nsa_compress_stride"]
        lsel, n, w = cfg["nsa_select_block"], cfg["nsa_select_count"], cfg["nsa_window"]
        B, H, T, hd = q.shape
        G = k.shape[1]
        rep = H // G
        t = torch.arange(T)
        # 1-2. compressed attention
        kc = self.compress(k, i, "compress_k")
        vc = self.compress(v, i, "compress_v")
        nc = kc.shape[2]
        vis_c = (torch.arange(nc)[None, :] * s + l - 1) <= t[:, None]      # [T, nc]
        o_cmp, p_cmp = masked_attention(q, kc.repeat_interleave(rep, 1), vc.repeat_interleave(rep, 1),
                                        vis_c, scale)                      # p_cmp [B,H,T,nc]
        # 3-4. block scores and selection (no gradient through the choice)
        nb = (T + lsel - 1) // lsel
        with torch.no_grad():
            ov = overlap_matrix(nc, nb, l, s, lsel).to(q.dtype)
            score = p_cmp.reshape(B, G, rep, T, nc).sum(2) @ ov / s        # [B,G,T,nb]
            last = (t // lsel)[:, None]                                     # [T,1]
            j = torch.arange(nb)[None, :]
            cand = j <= last                                                # [T, nb]
            forced = (j == 0) | (j == last) | (j == last - 1)
            key_ = score.masked_fill(forced & cand, float("inf")).masked_fill(~cand, float("-inf"))
            order = torch.sort(key_, dim=-1, descending=True, stable=True).indices[..., :n]
            sel = torch.zeros(B, G, T, nb, dtype=torch.bool)
            sel.scatter_(-1, order, True)
            sel &= cand                                                     # <= n candidates: all
            sel_pos = sel[..., t // lsel] & (t[None, :] <= t[:, None])     # [B,G,T,T]
        kh, vh = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        o_slc, _ = masked_attention(q, kh, vh, sel_pos.repeat_interleave(rep, 1), scale)
        win = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - w)
        o_win, _ = masked_attention(q, kh, vh, win, scale)
        # 7. gates
        g = torch.sigmoid(x @ self.p(f"model.layers.{i}.self_attn.gate_proj.weight").T)  # [B,T,3H]
        g = g.view(B, T, 3, H).permute(2, 0, 3, 1).unsqueeze(-1)            # [3,B,H,T,1]
        return g[0] * o_cmp + g[1] * o_slc + g[2] * o_win

    def rwkv(self, x, i, v_first):
        cfg = self.cfg
        r_ = f"model.layers.{i}.rwkv."
        P = lambda n: self.p(r_ + n)                                        # noqa: E731
        B, T, D = x.shape
        N = cfg["rwkv_head_size"]
        Hr = D // N
        x_prev = torch.cat([x.new_zeros(B, 1, D), x[:, :-1]], 1)
        xx = x_prev - x
        xr, xw, xk = x + xx * P("x_r"), x + xx * P("x_w"), x + xx * P("x_k")
        xv, xa, xg = x + xx * P("x_v"), x + xx * P("x_a"), x + xx * P("x_g")
        r = xr @ P("receptance.weight").T
        k = xk @ P("key.weight").T
        v = xv @ P("value.weight").T
        w = torch.exp(-math.exp(-0.5) * torch.sigmoid(P("w0") + torch.tanh(xw @ P("w1")) @ P("w2")))
        a = torch.sigmoid(P("a0") + (xa @ P("a1")) @ P("a2"))
        g = torch.sigmoid(xg @ P("g1")) @ P("g2")
        kk = F.normalize((k * P("k_k")).view(B, T, Hr, N), dim=-1, p=2.0, eps=1e-12)
        k = k * (1 + (a - 1) * P("k_a"))
        if v_first is None:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(P("v0") + (xv @ P("v1")) @ P("v2"))
        rh, kh, vh = r.view(B, T, Hr, N), k.view(B, T, Hr, N), v.view(B, T, Hr, N)
        wh, ah = w.view(B, T, Hr, N), a.view(B, T, Hr, N)
        y = WKV7.apply(rh, wh, kh, vh, -kk, kk * ah)                         # [B,T,Hr,N]
        mu = y.mean(-1, keepdim=True)
        var = ((y - mu) ** 2).mean(-1, keepdim=True)
        y = ((y - mu) / torch.sqrt(var + 64e-5)).reshape(B, T, D) * P("ln_x.weight") + P("ln_x.bias")
        bonus = (rh * kh * P("r_k")).sum(-1, keepdim=True) * vh             # [B,T,Hr,N]
        y = y + bonus.reshape(B, T, D)
        return (y * g) @ P("output.weight").T, v_first

    def moe(self, x, i):
        cfg = self.cfg
        m = f"model.layers.{i}.mlp."
        shp = x.shape
        x = x.reshape(-1, shp[-1])
        E, k = cfg["num_experts"], cfg["num_experts_per_tok"]
        xr = x
        if self.training and self.router_jitter:
            # Switch Transformer's multiplicative jitter on the router input only
            xr = x * torch.empty_like(x).uniform_(1 - self.router_jitter, 1 + self.router_jitter)
        logits = xr @ self.p(m + "gate.weight").T
        prob = torch.softmax(logits.float(), -1).to(x.dtype)
        top = torch.sort(prob.detach(), dim=-1, descending=True, stable=True).indices[:, :k]   # ties: lower index
        wts = prob.gather(1, top)
        if cfg.get("norm_topk_prob", True):
            wts = wts / wts.sum(-1, keepdim=True)
        Wg, Wu, Wd = self.p(m + "experts.gate_proj"), self.p(m + "experts.up_proj"), self.p(m + "experts.down_proj")
        counts = torch.bincount(top.reshape(-1), minlength=E)
        flat_e = top.reshape(-1)
        order = torch.argsort(flat_e, stable=True)
        rows_all = order // k
        w_all = wts.reshape(-1)[order]
        outs = []
        start = 0
        for e, c in enumerate(counts.tolist()):
            if c == 0:
                continue
            xe = x[rows_all[start:start + c]]
            he = F.silu(xe @ Wg[e].T) * (xe @ Wu[e].T)
            outs.append(he @ Wd[e].T)
            start += c
        y = torch.zeros_like(x).index_add(0, rows_all, torch.cat(outs, 0) * w_all[:, None])
        if cfg.get("num_shared_experts", 0):
            sx = F.silu(x @ self.p(m + "shared_expert.gate_proj.weight").T) * (x @ self.p(m + "shared_expert.up_proj.weight").T)
            sx = sx @ self.p(m + "shared_expert.down_proj.weight").T
            y = y + torch.sigmoid(x @ self.p(m + "shared_expert_gate.weight").T) * sx
        if self.training:
            frac = counts.to(x.dtype) / (x.shape[0] * k)
            self.aux_loss = self.aux_loss + E * (frac * prob.mean(0)).sum()
            self.router_logits.append(logits)
        self.expert_counts.append(counts.detach())
        return y.reshape(shp)

    def ffn(self, x, i):
        mt = self.cfg["mlp_types"][i]
        m = f"model.layers.{i}.mlp."
        if mt == "moe":
            return self.moe(x, i)
        if mt == "dense":
            return (F.silu(x @ self.p(m + "gate_proj.weight").T) * (x @ self.p(m + "up_proj.weight").T)) \
                @ self.p(m + "down_proj.weight").T
        x_prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)
        kx = x + (x_prev - x) * self.p(m + "x_k")
        return torch.relu(kx @ self.p(m + "key.weight").T) ** 2 @ self.p(m + "value.weight").T

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T] (or [T]) int64 -> logits [B, T, V] (or [T, V])."""
        squeeze = ids.dim() == 1
        if squeeze:
            ids = ids[None]
        cfg = self.cfg
        self.aux_loss = torch.zeros((), dtype=self.p("model.embed_tokens.weight").dtype)
        self.expert_counts = []
        self.router_logits = []
        x = self.p("model.embed_tokens.weight")[ids]
        if cfg.get("embedding_norm", False):
            x = self.norm(x, "model.embed_norm")
        v_first = None
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            hn = self.norm(x, p + "input_layernorm")
            if cfg["layer_types"][i] == "recurrent":
                mix, v_first = self.rwkv(hn, i, v_first)
            else:
                mix = self.attention(hn, i)
            h = x + mix
            x = h + self.ffn(self.norm(h, p + "post_attention_layernorm"), i)
        head = self.p("lm_head.weight") if self.has("lm_head.weight") else self.p("model.embed_tokens.weight")
        logits = self.norm(x, "model.norm") @ head.T
        return logits[0] if squeeze else logits
