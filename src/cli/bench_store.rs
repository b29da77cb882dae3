//! `hindsight bench store`: logging throughput of the store on Postgres and SQLite. Turns are
//! synthetic and recorded exactly as the HTTP layer records them (no model runs), so the
//! store's write path is the bottleneck. Writes go to scratch databases, dropped afterwards.

use crate::store::bench::{
    create_scratch_postgres, drop_scratch_postgres, logging_throughput, Report,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchBackend {
    Postgres,
    Sqlite,
}

#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// Backends to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [BenchBackend::Postgres, BenchBackend::Sqlite], value_enum)]
    pub backends: Vec<BenchBackend>,
    /// A Postgres URL whose user may create databases: a scratch database is made there.
    #[arg(
        long,
        env = "HINDSIGHT_BENCH_POSTGRES",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub postgres_admin_url: String,
    /// Turns recorded per backend.
    #[arg(long, default_value_t = 20_000)]
    pub turns: usize,
    /// Concurrent producers (request handlers) calling record().
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
}

pub fn run(args: StoreArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.turns > 0, "--turns must be at least 1");
    let runtime = tokio::runtime::Runtime::new()?;
    let mut reports = Vec::new();
    for backend in &args.backends {
        let report = runtime.block_on(measure(*backend, &args))?;
        eprintln!("{}", serde_json::to_string(&report)?);
        reports.push(report);
    }
    println!(
        "| backend | turns | producers | turns/s sustained | record() p50 µs | record() p99 µs | record() max µs | rows lost | sessions ok |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in &reports {
        println!(
            "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.0} | {} | {} |",
            r.backend,
            r.turns,
            r.concurrency,
            r.turns_per_s,
            r.record_p50_us,
            r.record_p99_us,
            r.record_max_us,
            r.rows_lost,
            if r.sessions_stored == r.sessions_expected as i64 {
                "yes"
            } else {
                "NO"
            },
        );
    }
    let lost: i64 = reports.iter().map(|r| r.rows_lost).sum();
    anyhow::ensure!(lost == 0, "{lost} turn rows lost");
    Ok(())
}

async fn measure(backend: BenchBackend, args: &StoreArgs) -> anyhow::Result<Report> {
    match backend {
        BenchBackend::Postgres => {
            let url = create_scratch_postgres(&args.postgres_admin_url).await?;
            let report = logging_throughput(&url, args.turns, args.concurrency).await;
            drop_scratch_postgres(&args.postgres_admin_url, &url).await?;
            Ok(report?)
        }
        BenchBackend::Sqlite => {
            let dir = tempfile::tempdir()?;
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            Ok(logging_throughput(&url, args.turns, args.concurrency).await?)
        }
    }
}
