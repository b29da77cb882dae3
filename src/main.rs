use clap::{Parser, Subcommand};
use hindsight::cli;

/// Hindsight: an OpenAI-compatible server that learns from being used.
#[derive(Parser)]
#[command(name = "hindsight", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API.
    Serve(cli::serve::Args),
    /// Chat with the model in the terminal.
    Chat(cli::chat::Args),
    /// Convert a GGUF file into a Hugging Face model directory.
    ImportGguf(cli::import_gguf::Args),
    /// Export logged turns for training elsewhere.
    Export(cli::export::Args),
    /// Run a benchmark and print a table.
    Bench(cli::bench::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => cli::serve::run(args),
        Command::Chat(args) => cli::chat::run(args),
        Command::ImportGguf(args) => cli::import_gguf::run(args),
        Command::Export(args) => cli::export::run(args),
        Command::Bench(args) => cli::bench::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
