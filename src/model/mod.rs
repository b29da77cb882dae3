//! The model: HF directories and GGUF import, tokenizer, chat templates, and the tch
//! transformer (Llama / Qwen2 / Qwen3) with its KV cache and LoRA adapters.
pub mod chat_template;
pub mod default_model;
pub mod gguf;
pub mod tokenizer;
