"""Makes the HF model directories the Rust model tests load.

usage: hf_model_fixtures.py OUT_ROOT
Writes tiny random-weight qwen3 / qwen2 / llama3 (untied, llama3 rope scaling) models with fixed
seeds. (SmolLM2 comes from our own GGUF importer; the reference loads its GGUF directly.)
Each directory is written to a temp name and renamed, so a half-written fixture is never used.
"""
import os
import shutil
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM


def atomic_save(out, save):
    if os.path.exists(out):
        return
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
    os.rename(tmp, out)


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
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6)
    atomic_save(os.path.join(root, "qwen3"), tiny(transformers.Qwen3Config(
        vocab_size=151936, head_dim=16, rope_theta=1e6, tie_word_embeddings=True, **common)))
    # qwen2's vocabulary is a multiple of 64 so that the fused decode step covers it (its q/k/v
    # biases); llama3's is not, so that a model the step does not cover is tested too.
    atomic_save(os.path.join(root, "qwen2"), tiny(transformers.Qwen2Config(
        vocab_size=1024, rope_theta=1e6, tie_word_embeddings=False, **common)))
    atomic_save(os.path.join(root, "llama3"), tiny(transformers.LlamaConfig(
        vocab_size=1000, rope_theta=5e5, tie_word_embeddings=False,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=64), **common)))


if __name__ == "__main__":
    main()
