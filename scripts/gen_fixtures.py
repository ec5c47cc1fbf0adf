#!/usr/bin/env python3
"""Build tiny gpt-oss checkpoints in the published layout and store transformers' reference logits.

Run on a machine with torch + transformers (the GPU machine has both):

    python3 scripts/gen_fixtures.py --out tests/fixtures

For each fixture it writes <out>/<name>/:
  config.json                      gpt-oss config incl. quantization_config (mxfp4)
  model.safetensors                or model-0000N-of-0000M.safetensors + model.safetensors.index.json
  reference.safetensors            f32 logits of transformers' GptOssForCausalLM for every prompt position,
                                   the prompts, a greedy continuation, the model's RoPE inv_freq and
                                   per-layer hidden states of prompt_0 (for debugging a backend)

The reference runs in float32 on the CPU with eager attention and the MXFP4 experts dequantized, so an
f32 engine should agree to ~1e-5 relative. The model is loaded twice: through transformers' own MXFP4
loading path (from_pretrained + Mxfp4Config(dequantize=True)) and through a plain state dict built by
this script's own MXFP4 decoder; both must give the same logits, which checks our reading of the format.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

FP4_VALUES = np.array([+0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0,
                       -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=np.float32)

FIXTURES = [
    # name, seed, shape; "sharded" stores the weights in two shards with an index
    dict(name="tiny-a", seed=1234, hidden=64, intermediate=96, layers=3, experts=4, top_k=2,
         heads=4, kv_heads=2, head_dim=16, vocab=512, window=8, rope_orig=64, sharded=True,
         prompt_lens=[48, 41]),
    dict(name="tiny-b", seed=987, hidden=128, intermediate=64, layers=4, experts=8, top_k=4,
         heads=8, kv_heads=2, head_dim=32, vocab=1024, window=8, rope_orig=4096, sharded=False,
         prompt_lens=[56, 44]),
]


def config_for(f):
    return {
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        "num_hidden_layers": f["layers"],
        "hidden_size": f["hidden"],
        "intermediate_size": f["intermediate"],
        "head_dim": f["head_dim"],
        "num_attention_heads": f["heads"],
        "num_key_value_heads": f["kv_heads"],
        "num_local_experts": f["experts"],
        "num_experts_per_tok": f["top_k"],
        "experts_per_token": f["top_k"],
        "vocab_size": f["vocab"],
        "rms_norm_eps": 1e-05,
        "sliding_window": f["window"],
        "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(f["layers"])],
        "rope_theta": 150000,
        "rope_scaling": {
            "rope_type": "yarn",
            "factor": 32.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "original_max_position_embeddings": f["rope_orig"],
            "truncate": False,
        },
        "max_position_embeddings": f["rope_orig"] * 32,
        "initial_context_length": f["rope_orig"],
        "swiglu_limit": 7.0,
        "attention_bias": True,
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "eos_token_id": f["vocab"] - 2,
        "pad_token_id": f["vocab"] - 1,
        "router_aux_loss_coef": 0.9,
        "output_router_logits": False,
        "initializer_range": 0.02,
        "use_cache": True,
        "transformers_version": "4.55.0.dev0",
        "quantization_config": {
            "quant_method": "mxfp4",
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                       "model.embed_tokens", "lm_head"],
        },
    }


def bf16(rng, shape, std, mean=0.0):
    return torch.from_numpy((rng.standard_normal(shape) * std + mean).astype(np.float32)).to(torch.bfloat16)


def mxfp4(rng, experts, rows, cols, scale_choices):
    groups = cols // 32
    blocks = rng.integers(0, 256, size=(experts, rows, groups, 16), dtype=np.uint8)
    scales = rng.choice(np.array(scale_choices, dtype=np.uint8), size=(experts, rows, groups))
    return torch.from_numpy(blocks), torch.from_numpy(scales)


def dequant(blocks, scales):
    """[E, R, G, 16] u8 + [E, R, G] u8 -> [E, R, G*32] f32 (out, in orientation)."""
    b = blocks.numpy()
    s = scales.numpy().astype(np.int32) - 127
    lo = FP4_VALUES[b & 0x0F]
    hi = FP4_VALUES[b >> 4]
    vals = np.stack([lo, hi], axis=-1).reshape(*b.shape[:-1], 32)  # element 2j = lo, 2j+1 = hi
    vals = vals * np.exp2(s.astype(np.float32))[..., None]
    return torch.from_numpy(vals.reshape(b.shape[0], b.shape[1], -1).astype(np.float32))


def make_weights(f):
    rng = np.random.default_rng(f["seed"])
    H, I, E, V = f["hidden"], f["intermediate"], f["experts"], f["vocab"]
    NQ, NKV, D = f["heads"], f["kv_heads"], f["head_dim"]
    w = {"model.embed_tokens.weight": bf16(rng, (V, H), 1.0)}
    for l in range(f["layers"]):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = bf16(rng, (H,), 0.1, 1.0)
        w[p + "self_attn.q_proj.weight"] = bf16(rng, (NQ * D, H), H ** -0.5)
        w[p + "self_attn.q_proj.bias"] = bf16(rng, (NQ * D,), 0.1)
        w[p + "self_attn.k_proj.weight"] = bf16(rng, (NKV * D, H), H ** -0.5)
        w[p + "self_attn.k_proj.bias"] = bf16(rng, (NKV * D,), 0.1)
        w[p + "self_attn.v_proj.weight"] = bf16(rng, (NKV * D, H), H ** -0.5)
        w[p + "self_attn.v_proj.bias"] = bf16(rng, (NKV * D,), 0.1)
        w[p + "self_attn.o_proj.weight"] = bf16(rng, (H, NQ * D), (NQ * D) ** -0.5)
        w[p + "self_attn.o_proj.bias"] = bf16(rng, (H,), 0.1)
        w[p + "self_attn.sinks"] = bf16(rng, (NQ,), 1.0)
        w[p + "post_attention_layernorm.weight"] = bf16(rng, (H,), 0.1, 1.0)
        w[p + "mlp.router.weight"] = bf16(rng, (E, H), 2.0 * H ** -0.5)
        w[p + "mlp.router.bias"] = bf16(rng, (E,), 0.5)
        # scales chosen so that some gate values exceed the swiglu limit of 7 (the clamp is exercised)
        gu_b, gu_s = mxfp4(rng, E, 2 * I, H, [124, 125, 126] if H <= 64 else [123, 124, 125])
        dn_b, dn_s = mxfp4(rng, E, H, I, [121, 122, 123])
        w[p + "mlp.experts.gate_up_proj_blocks"] = gu_b
        w[p + "mlp.experts.gate_up_proj_scales"] = gu_s
        w[p + "mlp.experts.gate_up_proj_bias"] = bf16(rng, (E, 2 * I), 0.5)
        w[p + "mlp.experts.down_proj_blocks"] = dn_b
        w[p + "mlp.experts.down_proj_scales"] = dn_s
        w[p + "mlp.experts.down_proj_bias"] = bf16(rng, (E, H), 0.5)
    w["model.norm.weight"] = bf16(rng, (H,), 0.1, 1.0)
    w["lm_head.weight"] = bf16(rng, (V, H), 2.0 * H ** -0.5)
    return w


def save_checkpoint(f, weights, d):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as fh:
        json.dump(config_for(f), fh, indent=2)
    meta = {"format": "pt"}
    if not f["sharded"]:
        save_file(weights, os.path.join(d, "model.safetensors"), metadata=meta)
        return
    # two shards named like the published converter does (zero-based, "of" = count - 1)
    names = list(weights)
    half = len(names) // 2
    shards = {"model-00000-of-00001.safetensors": names[:half], "model-00001-of-00001.safetensors": names[half:]}
    weight_map, total = {}, 0
    for fname, keys in shards.items():
        save_file({k: weights[k] for k in keys}, os.path.join(d, fname), metadata=meta)
        for k in keys:
            weight_map[k] = fname
            total += weights[k].numel() * weights[k].element_size()
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)


def plain_state_dict(model, weights):
    """Our own MXFP4 decode into whatever orientation this transformers version's parameters use."""
    params = model.state_dict()
    dense = {}
    for name in params:
        if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            dense[name] = dequant(weights[name + "_blocks"], weights[name + "_scales"])  # [E, out, in]
    # [E, out, in] or [E, in, out]? Decide on a non-square matrix; a square one cannot tell.
    transposed = None
    for name, w in dense.items():
        if w.shape[1] != w.shape[2]:
            transposed = tuple(params[name].shape) != tuple(w.shape)
            break
    if transposed is None:
        sys.exit("every expert matrix is square: cannot tell the parameter orientation")
    sd = {}
    for name, param in params.items():
        if name in weights:
            sd[name] = weights[name].to(torch.float32)
        elif name in dense:
            sd[name] = dense[name].transpose(1, 2).contiguous() if transposed else dense[name]
            if tuple(sd[name].shape) != tuple(param.shape):
                sys.exit(f"unexpected shape for {name}: {tuple(param.shape)}")
        else:
            sys.exit(f"transformers expects a parameter this script does not make: {name}")
    print(f"expert parameters are stored {'[E, in, out]' if transposed else '[E, out, in]'}")
    return sd


@torch.no_grad()
def logits_of(model, ids):
    out = model(input_ids=torch.tensor([ids]), use_cache=False, output_hidden_states=True)
    return out.logits[0].float(), [h[0].float() for h in out.hidden_states]


@torch.no_grad()
def greedy(model, ids, n):
    ids = list(ids)
    out = []
    for _ in range(n):
        logits, _ = logits_of(model, ids)
        nxt = int(torch.argmax(logits[-1]))
        out.append(nxt)
        ids.append(nxt)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures")
    args = ap.parse_args()

    import transformers
    from transformers import GptOssConfig, GptOssForCausalLM
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    torch.set_num_threads(8)

    for f in FIXTURES:
        d = os.path.join(args.out, f["name"])
        weights = make_weights(f)
        save_checkpoint(f, weights, d)

        cfg_dict = config_for(f)
        cfg_dict.pop("quantization_config")
        config = GptOssConfig(**cfg_dict)
        config._attn_implementation = "eager"
        plain = GptOssForCausalLM(config).to(torch.float32).eval()
        missing = plain.load_state_dict(plain_state_dict(plain, weights), strict=True)
        print(f"{f['name']}: plain load ok ({missing})")

        # transformers' own loading path of the published layout
        hf_model = None
        try:
            from transformers import Mxfp4Config
            kw = dict(quantization_config=Mxfp4Config(dequantize=True), attn_implementation="eager")
            try:
                hf_model = GptOssForCausalLM.from_pretrained(d, dtype=torch.float32, **kw)
            except TypeError:
                hf_model = GptOssForCausalLM.from_pretrained(d, torch_dtype=torch.float32, **kw)
            hf_model = hf_model.to(torch.float32).eval()
        except Exception as e:  # report, keep the plain reference
            print(f"{f['name']}: from_pretrained failed: {type(e).__name__}: {e}")

        rng = np.random.default_rng(f["seed"] + 1)
        ref = {}
        for i, n in enumerate(f["prompt_lens"]):
            ids = rng.integers(0, f["vocab"], size=n).tolist()
            logits, hidden = logits_of(plain, ids)
            ref[f"prompt_{i}"] = torch.tensor(ids, dtype=torch.int32)
            ref[f"logits_{i}"] = logits.contiguous()
            if i == 0:
                for l, h in enumerate(hidden):
                    ref[f"hidden_{l}"] = h.contiguous()
            if hf_model is not None:
                hf_logits, _ = logits_of(hf_model, ids)
                diff = float((hf_logits - logits).abs().max())
                print(f"{f['name']} prompt {i}: from_pretrained vs plain max abs diff {diff:.3e}")
                assert diff < 1e-4, "transformers' MXFP4 loading disagrees with this script's decoder"
        gp = ref["prompt_0"][:12].tolist()
        ref["greedy_prompt"] = torch.tensor(gp, dtype=torch.int32)
        ref["greedy_tokens"] = torch.tensor(greedy(plain, gp, 16), dtype=torch.int32)
        rot = plain.model.rotary_emb
        ref["inv_freq"] = rot.inv_freq.float().contiguous()
        ref["attention_scaling"] = torch.tensor([float(rot.attention_scaling)], dtype=torch.float32)
        meta = {"torch": torch.__version__, "transformers": transformers.__version__,
                "loaded_via": "plain+from_pretrained" if hf_model is not None else "plain",
                "dtype": "float32", "attn_implementation": "eager"}
        save_file(ref, os.path.join(d, "reference.safetensors"), metadata=meta)
        print(f"{f['name']}: wrote {d} ({meta['loaded_via']}); greedy {ref['greedy_tokens'].tolist()}")


if __name__ == "__main__":
    main()
