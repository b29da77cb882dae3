//! The model: HF directories and GGUF import, tokenizer, chat templates, and the tch
//! transformer (Llama / Qwen2 / Qwen3) with its KV cache and LoRA adapters.
pub mod attention;
pub mod chat_template;
pub mod config;
pub mod cpu;
pub mod default_model;
pub mod error;
pub mod fused_decode;
pub mod gguf;
pub mod grammar;
pub mod kv_cache;
pub mod kv_forward;
pub mod logprobs;
pub mod lora;
pub mod omp_team;
pub mod overrides;
pub mod peft;
pub mod prefix_cache;
pub mod rope;
pub mod skinny_matmul;
pub mod tokenizer;
pub mod transformer;
pub mod weights;
