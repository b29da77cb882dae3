"""Compare a Hindsight GGUF import with transformers' own GGUF loading of the same file.

usage: gguf_model.py GGUF_PATH OUR_DIR [GGUF_PATH OUR_DIR ...]
  -> prints one JSON object per pair on stdout, as a list.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

def compare(gguf_path, our_dir):
    gguf_dir, gguf_name = os.path.dirname(gguf_path), os.path.basename(gguf_path)

    ref = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    ref_state = ref.state_dict()
    ours = load_file(os.path.join(our_dir, "model.safetensors"))
    tied = ref.config.tie_word_embeddings
    if tied:
        # A tied lm_head is the embedding itself; it is not a separate tensor in either checkpoint.
        ref_state.pop("lm_head.weight", None)

    diffs, shape_mismatch = {}, []
    for name, ref_t in ref_state.items():
        if name in ours:
            if tuple(ours[name].shape) != tuple(ref_t.shape):
                shape_mismatch.append([name, list(ours[name].shape), list(ref_t.shape)])
            else:
                diffs[name] = (ours[name] - ref_t).abs().max().item()

    ref_cfg = AutoConfig.from_pretrained(gguf_dir, gguf_file=gguf_name).to_dict()
    our_cfg = AutoConfig.from_pretrained(our_dir).to_dict()
    keys = [
        "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "vocab_size",
        "tie_word_embeddings", "bos_token_id", "eos_token_id",
    ]
    config_diff = {k: [our_cfg.get(k), ref_cfg.get(k)] for k in keys if our_cfg.get(k) != ref_cfg.get(k)}
    rope = lambda c: c.get("rope_theta") or (c.get("rope_parameters") or {}).get("rope_theta")
    if rope(our_cfg) != rope(ref_cfg):
        config_diff["rope_theta"] = [rope(our_cfg), rope(ref_cfg)]

    return {
        "missing_in_ours": sorted(set(ref_state) - set(ours)),
        "extra_in_ours": sorted(set(ours) - set(ref_state)),
        "shape_mismatch": shape_mismatch,
        "max_abs_diff": max(diffs.values()) if diffs else None,
        "worst_tensor": max(diffs, key=diffs.get) if diffs else None,
        "compared": len(diffs),
        "config_diff": config_diff,
    }


args = sys.argv[1:]
print(json.dumps([compare(args[i], args[i + 1]) for i in range(0, len(args), 2)]))
