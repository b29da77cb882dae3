//! `hindsight export`: logged turns as OpenAI chat JSONL or per-session trajectories.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;

use crate::store::export::{export, ExportFilter, ExportFormat};
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to write.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Only sessions and turns from this time on (RFC 3339, e.g. 2025-01-31T00:00:00Z).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only this session.
    #[arg(long)]
    pub session: Option<String>,
    /// postgres://… or sqlite://… (default: SQLite in the data dir).
    #[arg(long, env = "HINDSIGHT_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where the embedded database and the journal live.
    #[arg(long, env = "HINDSIGHT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Output file (default: stdout).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("`{text}` is not an RFC 3339 time: {e}"))
}

/// `$XDG_DATA_HOME/hindsight` (or the platform's equivalent), else `./hindsight-data`.
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .map(|d| d.join("hindsight"))
        .unwrap_or_else(|| PathBuf::from("hindsight-data"))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: Args) -> anyhow::Result<()> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let store = Store::connect(args.database_url.as_deref(), &data_dir)
        .await
        .with_context(|| format!("cannot open the store (data dir {})", data_dir.display()))?;
    if !store.health().connected {
        store.shutdown().await;
        anyhow::bail!(
            "the database is unreachable: {}",
            store.health().last_error.unwrap_or_default()
        );
    }
    // Journaled turns from an earlier run are replayed by the writer; export after them.
    store.flush().await;
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let filter = ExportFilter {
        since: args.since,
        session_id: args.session.clone(),
    };
    let result = export(&store, args.format, &filter, &mut out).await;
    store.shutdown().await;
    let lines = result.with_context(|| match &args.output {
        Some(path) => format!("export to {} failed", path.display()),
        None => "export failed".to_string(),
    })?;
    eprintln!("exported {lines} lines");
    Ok(())
}
