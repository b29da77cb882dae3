//! The model: HF directories and GGUF import, tokenizer, chat templates, and the tch
//! transformer (Llama / Qwen2 / Qwen3) with its KV cache and LoRA adapters.
