//! Subcommands of the `hindsight` binary; each lives in its own file.
pub mod bench;
pub mod chat;
pub mod export;
pub mod import_gguf;
pub mod serve;
