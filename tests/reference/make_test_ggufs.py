"""Write small GGUF files for the import tests: every supported quant type, and one that is not.

usage: make_test_ggufs.py OUT_DIR [QWEN3_TOKENIZER_DIR]
  -> OUT_DIR/{multi_quant,unsupported_quant,qwen2,qwen3}.gguf, and with a Qwen3 tokenizer dir,
     OUT_DIR/qwen3_tokenizer.gguf: a tiny Qwen3 whose tokenizer metadata is the real Qwen3
     tokenizer, as llama.cpp's convert_hf_to_gguf.py stores it.
Block bytes are random, but each block's f16 scales are set to small finite values so the
dequantized weights are finite and comparable.
"""
import json
import sys

import numpy as np
from gguf import GGMLQuantizationType as T, GGUFWriter, GGML_QUANT_SIZES
from gguf.quants import quantize

rng = np.random.default_rng(0)
HIDDEN, HEADS, KV_HEADS, FFN = 256, 4, 2, 512
# Byte alphabet of GPT-2 for printable ASCII, plus one merge, plus two special tokens.
TOKENS = ["<|endoftext|>", "<|im_end|>"] + [chr(c) for c in range(33, 127)] + ["ab"]
F16_FIELDS = {  # byte offsets of the f16 scale fields in each block
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208], T.Q2_K: [80, 82],
}


def raw_blocks(qtype, shape):
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    n_blocks = int(np.prod(shape)) // block_elems
    blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        scales = rng.uniform(-0.05, 0.05, size=n_blocks).astype(np.float16)
        blocks[:, off:off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(shape[0], -1)


def add(writer, name, shape, qtype):
    if qtype == T.F32:
        writer.add_tensor(name, rng.normal(size=shape).astype(np.float32))
    elif qtype in (T.F16, T.BF16):
        data = quantize(rng.normal(size=shape).astype(np.float32), qtype)
        writer.add_tensor(name, data, raw_dtype=qtype)
    else:
        writer.add_tensor(name, raw_blocks(qtype, shape), raw_dtype=qtype)


def add_tiny_tokenizer(w):
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(TOKENS)
    w.add_token_types([3, 3] + [1] * (len(TOKENS) - 2))
    w.add_token_merges(["a b"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    return len(TOKENS)


def add_qwen3_tokenizer(w, tokenizer_dir):
    tok = json.load(open(f"{tokenizer_dir}/tokenizer.json", encoding="utf-8"))
    config = json.load(open(f"{tokenizer_dir}/tokenizer_config.json", encoding="utf-8"))
    tokens = {i: t for t, i in tok["model"]["vocab"].items()}
    types = {i: 1 for i in tokens}  # NORMAL
    for added in tok["added_tokens"]:
        tokens[added["id"]] = added["content"]
        types[added["id"]] = 3 if added["special"] else 4  # CONTROL / USER_DEFINED
    ids = range(max(tokens) + 1)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list([tokens[i] for i in ids])
    w.add_token_types([types[i] for i in ids])
    w.add_token_merges([" ".join(m) for m in tok["model"]["merges"]])
    w.add_eos_token_id(tok["model"]["vocab"].get("<|im_end|>", 151645))
    w.add_pad_token_id(151643)
    w.add_bos_token_id(151643)
    w.add_add_bos_token(False)
    w.add_chat_template(config["chat_template"])
    return len(ids)


def write(path, types, arch="llama", head_dim=HIDDEN // HEADS, tokenizer_dir=None, tied=False):
    w = GGUFWriter(path, arch)
    w.add_block_count(1)
    w.add_context_length(512)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    if arch == "llama":
        w.add_rope_dimension_count(head_dim)
    if arch == "qwen3":
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    vocab = add_qwen3_tokenizer(w, tokenizer_dir) if tokenizer_dir else add_tiny_tokenizer(w)
    shapes = {
        "token_embd.weight": (vocab, HIDDEN), "output.weight": (vocab, HIDDEN),
        "output_norm.weight": (HIDDEN,), "blk.0.attn_norm.weight": (HIDDEN,),
        "blk.0.ffn_norm.weight": (HIDDEN,), "blk.0.attn_q.weight": (HEADS * head_dim, HIDDEN),
        "blk.0.attn_k.weight": (KV_HEADS * head_dim, HIDDEN),
        "blk.0.attn_v.weight": (KV_HEADS * head_dim, HIDDEN),
        "blk.0.attn_output.weight": (HIDDEN, HEADS * head_dim), "blk.0.ffn_gate.weight": (FFN, HIDDEN),
        "blk.0.ffn_up.weight": (FFN, HIDDEN), "blk.0.ffn_down.weight": (HIDDEN, FFN),
    }
    if arch == "qwen2":  # q/k/v biases
        shapes.update({f"blk.0.attn_{p}.bias": (n * head_dim,)
                       for p, n in [("q", HEADS), ("k", KV_HEADS), ("v", KV_HEADS)]})
    if arch == "qwen3":  # per-head q/k RMS norms
        shapes.update({"blk.0.attn_q_norm.weight": (head_dim,), "blk.0.attn_k_norm.weight": (head_dim,)})
    if tied:
        del shapes["output.weight"]
    for name, shape in shapes.items():
        add(w, name, shape, types.get(name, T.F32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


out = sys.argv[1]
write(f"{out}/multi_quant.gguf", {
    "token_embd.weight": T.Q6_K, "output.weight": T.Q8_0, "blk.0.attn_q.weight": T.Q4_K,
    "blk.0.attn_k.weight": T.Q5_K, "blk.0.attn_v.weight": T.Q5_0,
    "blk.0.attn_output.weight": T.Q5_1, "blk.0.ffn_gate.weight": T.Q4_0,
    "blk.0.ffn_up.weight": T.F16, "blk.0.ffn_down.weight": T.BF16,
    "blk.0.attn_norm.weight": T.F32,
})
write(f"{out}/unsupported_quant.gguf", {"blk.0.ffn_gate.weight": T.Q2_K})
write(f"{out}/qwen2.gguf", {"blk.0.attn_q.weight": T.Q8_0}, arch="qwen2")
# Qwen3 models have head_dim != hidden / heads; 128 is also transformers' Qwen3 default.
write(f"{out}/qwen3.gguf", {"blk.0.attn_k.weight": T.Q4_K}, arch="qwen3", head_dim=128)
if len(sys.argv) > 2:
    # Q8_0 keeps the 151k-row embedding small.
    write(f"{out}/qwen3_tokenizer.gguf", {"token_embd.weight": T.Q8_0},
          arch="qwen3", head_dim=128, tokenizer_dir=sys.argv[2], tied=True)
print("ok")
