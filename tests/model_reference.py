"""A direct numpy transcription of docs/design.md#model, used as the model's reference.

Written loop-by-loop from the text (explicit per-group matmuls, explicit
per-example factors, explicit slice convolution) and independent of the Flax
code, so that agreement means the Flax model computes what the design says.
"""

import numpy as np


def leaky(x, slope=0.1):
    return np.where(x >= 0, x, slope * x)


def layer_norm(x, p, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def dense(x, p):
    return x @ p["kernel"] + p["bias"]


def grouped_dense(x, p):
    kernel, bias = p["kernel"], p["bias"]
    groups, gin, _ = kernel.shape
    outs = [x[..., g * gin:(g + 1) * gin] @ kernel[g] + bias[g] for g in range(groups)]
    return np.concatenate(outs, axis=-1)


def generator(m, p, rank, dim):
    h = leaky(grouped_dense(m, p["hidden1"]))
    h = leaky(grouped_dense(h, p["hidden2"]))
    return grouped_dense(h, p["out"]).reshape(m.shape[0], rank, dim) + p["static"]


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def mami_forward(params, images, cfg):
    """Returns (embedding, local_map, modality, code_weights) like MaMI.apply."""
    p = {k: v for k, v in params.items()}
    b, t, hh, ww, _ = images.shape
    ps, c = cfg.patch_size, cfg.width
    gh, gw = hh // ps, ww // ps
    n = b * t
    x = images.reshape(n, hh, ww, 3).astype(np.float64)
    # Patch embedding as explicit patch flattening.
    patches = x.reshape(n, gh, ps, gw, ps, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, gh, gw, -1)
    kernel = p["patch_embed"]["kernel"].reshape(-1, c)  # (ps, ps, 3, C) -> (ps*ps*3, C)
    emb = patches @ kernel

    cp = p["compa"]
    r = dense(leaky(dense(emb, cp["router_conv1"])), cp["router_conv2"]).mean(axis=(1, 2))
    w = softmax(dense(leaky(dense(r, cp["router_fc1"])), cp["router_fc2"]))
    k = cfg.num_codes
    m = np.stack([np.concatenate([w[i, l] * cp["codebook"][l] for l in range(k)])
                  for i in range(n)])
    shift_in = emb.mean(axis=(1, 2)) if cfg.shift_input == "patch_mean" else r
    shift = dense(leaky(dense(leaky(shift_in), cp["shift_fc1"])), cp["shift_fc2"])
    emb = emb + shift[:, None, None, :]

    tokens = np.concatenate([np.broadcast_to(p["class_embedding"], (n, 1, c)),
                             emb.reshape(n, gh * gw, c)], axis=1)
    tokens = layer_norm(tokens + p["pos_embedding"], p["ln_pre"])
    heads, hd = cfg.num_heads, c // cfg.num_heads
    for i in range(cfg.depth):
        bp = p[f"block_{i}"]
        gp = cp[f"block_{i}"]
        fac = {name: generator(m, gp[name], cfg.rank,
                               c * cfg.mlp_ratio if name == "fc_up" else c)
               for name in gp}
        # Slice adapter on patch tokens.
        ap = bp["adapter"]
        h = dense(tokens[:, 1:], ap["fc1"]).reshape(b, t, gh * gw, -1)
        conv = np.zeros_like(h)
        for tt in range(t):
            for j in range(3):
                src = tt + j - 1
                if 0 <= src < t:
                    conv[:, tt] += ap["conv_kernel"][j] * h[:, src]
        conv += ap["conv_bias"]
        tokens = tokens.copy()
        tokens[:, 1:] += dense(conv.reshape(n, gh * gw, -1), ap["fc2"])
        # Attention with per-example deltas.
        y = layer_norm(tokens, bp["ln_1"])
        qkv = dense(y, bp["attn"]["qkv"])
        parts = []
        for idx, name in enumerate("qkv"):
            part = qkv[..., idx * c:(idx + 1) * c].copy()
            for e in range(n):
                part[e] += (y[e] @ fac[name + "_down"][e].T) @ fac[name + "_up"][e]
            parts.append(part.reshape(n, -1, heads, hd).transpose(0, 2, 1, 3))
        q, kk, v = parts
        att = softmax(q @ kk.transpose(0, 1, 3, 2) / np.sqrt(hd))
        o = (att @ v).transpose(0, 2, 1, 3).reshape(n, -1, c)
        tokens = tokens + dense(o, bp["attn"]["out"])
        y = layer_norm(tokens, bp["ln_2"])
        hid = dense(y, bp["mlp"]["fc"])
        for e in range(n):
            hid[e] += (y[e] @ fac["fc_down"][e].T) @ fac["fc_up"][e]
        hid = hid / (1 + np.exp(-1.702 * hid))
        tokens = tokens + dense(hid, bp["mlp"]["proj"])

    local = tokens[:, 1:].reshape(b, t, gh, gw, c).mean(1)
    g = local.mean(axis=(1, 2))
    embedding = dense(leaky(dense(g, p["head_fc1"])), p["head_fc2"])
    return (embedding, local, m.reshape(b, t, c).mean(1), w.reshape(b, t, k).mean(1))
