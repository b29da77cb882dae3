//! Subcommands of the `hindsight` binary; each lives in its own file.
pub mod bench;
pub mod bench_context;
pub mod bench_engine;
pub mod bench_learn;
pub mod bench_store;
pub mod bench_train;
pub mod bench_train_serve;
pub mod chat;
pub mod export;
pub mod import_gguf;
pub mod model_args;
pub mod serve;
pub mod serve_learn;
pub mod serve_store;
