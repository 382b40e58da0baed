"""Figures from a trace (`cogcore trace ... --plot`; needs matplotlib, the `viz` extra).

    from cogcore import trace, trace_plots
    trace_plots.plot_all(trace.load("out/"), "out/")    # -> the PNG paths written

One figure per question a student asks of the pass:

    expert_load.png        which experts each MoE layer used (tokens per expert)
    router_entropy.png     how sure each router was, token by token
    nsa_layer<i>.png       which selection blocks each query kept, beside the full attention pattern
    nsa_gates.png          how each head mixed the compressed, selected and window branches
    rwkv.png               how the RWKV-7 state grew and how fast each head forgot
    attention_layer<i>.png the attention pattern of a full or sliding attention layer
"""

from __future__ import annotations

import os

import numpy as np

from .errors import CogcoreError

DPI = 100


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise CogcoreError("plotting a trace needs matplotlib: pip install 'cogcore[viz]'") from None
    matplotlib.use("Agg")   # files only, never a window
    import matplotlib.pyplot as plt
    return plt


def plot_all(trace, out_dir: str | os.PathLike) -> list[str]:
    """Write every figure that applies to this trace's layers into `out_dir`; returns their paths."""
    plt = _pyplot()
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    figures = []
    moe = [i for i, layer in enumerate(trace.layers) if "router_probs" in layer]
    nsa = [i for i, kind in enumerate(trace.layer_types) if kind == "sparse_attention"]
    rwkv = [i for i, kind in enumerate(trace.layer_types) if kind == "recurrent"]
    attn = [i for i, kind in enumerate(trace.layer_types) if kind in ("full_attention", "sliding_attention")]
    if moe:
        figures += [("expert_load.png", expert_load(plt, trace, moe)),
                    ("router_entropy.png", router_entropy(plt, trace, moe))]
    for i in nsa:
        figures.append((f"nsa_layer{i}.png", nsa_selection(plt, trace, i)))
    if nsa:
        figures.append(("nsa_gates.png", nsa_gates(plt, trace, nsa)))
    if rwkv:
        figures.append(("rwkv.png", rwkv_state(plt, trace, rwkv)))
    for i in attn:
        figures.append((f"attention_layer{i}.png", attention_pattern(plt, trace, i)))
    paths = []
    for name, fig in figures:
        path = os.path.join(out_dir, name)
        tmp = path + ".tmp.png"
        fig.savefig(tmp, dpi=DPI)
        plt.close(fig)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def _token_axis(ax, trace, axis: str = "x") -> None:
    """Label a position axis with the token pieces (small, rotated)."""
    labels = [p.replace("\u2581", "_") for p in trace.pieces]
    ticks = np.arange(trace.T)
    if axis == "x":
        ax.set_xticks(ticks, labels, rotation=90, fontsize=5)
    else:
        ax.set_yticks(ticks, labels, fontsize=5)


def expert_load(plt, trace, layers):
    counts = np.stack([np.bincount(trace.layers[i]["experts"].ravel(),
                                   minlength=trace.layers[i]["router_probs"].shape[1]) for i in layers])
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(layers) + 1.6), constrained_layout=True)
    im = ax.imshow(counts, aspect="auto", cmap="viridis")
    ax.set(title=f"Expert load: tokens routed to each expert ({trace.T} tokens, "
                 f"top-{trace.layers[layers[0]]['experts'].shape[1]})",
           xlabel="expert", ylabel="layer", yticks=range(len(layers)), yticklabels=[str(i) for i in layers])
    fig.colorbar(im, ax=ax, label="tokens")
    return fig


def router_entropy(plt, trace, layers):
    fig, ax = plt.subplots(figsize=(9, 3.2), constrained_layout=True)
    for i in layers:
        p = trace.layers[i]["router_probs"].astype(np.float64)
        ax.plot(-(p * np.log(np.maximum(p, 1e-30))).sum(axis=1), marker=".", label=f"layer {i}")
    E = trace.layers[layers[0]]["router_probs"].shape[1]
    ax.axhline(np.log(E), color="grey", linestyle=":", label=f"uniform over {E}")
    ax.set(title="Router entropy per token (low: the router is sure)", ylabel="entropy (nats)",
           xlabel="token", xlim=(-0.5, trace.T - 0.5))
    _token_axis(ax, trace)
    ax.legend(fontsize=7, ncol=len(layers) + 1, loc="lower right")
    return fig


def nsa_selection(plt, trace, i):
    layer, nsa = trace.layers[i], trace.nsa
    selection, scores, attn = layer["selection"], layer["block_scores"], layer["attention"]
    Hkv, H = selection.shape[1], attn.shape[1]
    G = H // Hkv
    fig, axes = plt.subplots(Hkv, 2, figsize=(10, 3.6 * Hkv), squeeze=False, constrained_layout=True,
                             gridspec_kw={"width_ratios": [1, 2]})
    for g in range(Hkv):
        ax = axes[g, 0]
        im = ax.imshow(scores[:, g], aspect="auto", cmap="Blues", interpolation="nearest")
        fig.colorbar(im, ax=ax, label="block score")
        for code, marker, color, label in ((1, "o", "darkorange", "kept (by score, or all when <= n)"),
                                           (2, "x", "crimson", "forced")):
            t, j = np.nonzero(selection[:, g] == code)
            ax.scatter(j, t, marker=marker, s=8, color=color, label=label, linewidths=0.8)
        ax.set(title=f"layer {i} kv head {g}: selected blocks\n(l'={nsa['nsa_select_block']}, "
                     f"n={nsa['nsa_select_count']})",
               xlabel="selection block", ylabel="query position", xticks=range(scores.shape[2]))
        ax.legend(fontsize=6, loc="lower left")
        ax = axes[g, 1]
        im = ax.imshow(attn[:, g * G:(g + 1) * G].mean(axis=1), aspect="auto", cmap="magma",
                       interpolation="nearest")
        fig.colorbar(im, ax=ax, label="attention weight")
        for edge in range(nsa["nsa_select_block"], trace.T, nsa["nsa_select_block"]):
            ax.axvline(edge - 0.5, color="white", linewidth=0.5, linestyle=":")
        ax.set(title=f"full causal attention of the same q, k (mean of heads {g * G}-{(g + 1) * G - 1});"
                     f" dotted: block edges", ylabel="query position")
        _token_axis(ax, trace)
    return fig


def nsa_gates(plt, trace, layers):
    fig, axes = plt.subplots(len(layers), 1, figsize=(9, 2.4 * len(layers) + 0.6), squeeze=False,
                             constrained_layout=True)
    for ax, i in zip(axes[:, 0], layers):
        gates = trace.layers[i]["gates"]                                 # [T, 3, H]
        H = gates.shape[2]
        im = ax.imshow(gates.reshape(trace.T, -1).T, aspect="auto", cmap="viridis", vmin=0, vmax=1,
                       interpolation="nearest")
        fig.colorbar(im, ax=ax, label="gate")
        ax.set_yticks(range(3 * H), [f"{b} h{h}" for b in ("cmp", "slc", "win") for h in range(H)], fontsize=6)
        for row in (H, 2 * H):
            ax.axhline(row - 0.5, color="white", linewidth=1)
        ax.set(title=f"layer {i}: NSA gates per head (cmp: compressed, slc: selected, win: window)",
               ylabel="branch, head")
        _token_axis(ax, trace)
    return fig


def rwkv_state(plt, trace, layers):
    fig, axes = plt.subplots(len(layers), 2, figsize=(12, 2.6 * len(layers) + 0.6), squeeze=False,
                             constrained_layout=True)
    for row, i in zip(axes, layers):
        layer = trace.layers[i]
        panels = ((layer["state_norm"].T, "state norm |S|_F after each token", "magma", None),
                  (layer["decay"].mean(axis=2).T, "decay w (mean over the head's N channels; 1 = keep)",
                   "viridis", (0.545, 1.0)))
        for ax, (image, title, cmap, limits) in zip(row, panels):
            im = ax.imshow(image, aspect="auto", cmap=cmap, interpolation="nearest",
                           vmin=limits and limits[0], vmax=limits and limits[1])
            fig.colorbar(im, ax=ax)
            ax.set(title=f"layer {i}: {title}", ylabel="RWKV head")
            _token_axis(ax, trace)
    return fig


def attention_pattern(plt, trace, i):
    attn = trace.layers[i]["attention"]
    fig, ax = plt.subplots(figsize=(6, 5), constrained_layout=True)
    im = ax.imshow(attn.mean(axis=1), aspect="auto", cmap="magma", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="attention weight")
    ax.set(title=f"layer {i} ({trace.layer_types[i]}): attention, mean over heads", ylabel="query position")
    _token_axis(ax, trace)
    return fig
