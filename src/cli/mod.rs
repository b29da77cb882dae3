//! Subcommands of the `hindsight` binary; each lives in its own file.
pub mod serve;
pub mod chat;
pub mod import_gguf;
pub mod export;
pub mod bench;
