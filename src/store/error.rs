//! Errors of the store: each names what failed so a log line or CLI message is actionable.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL `{0}`: expected postgres://… or sqlite://…")]
    UnsupportedUrl(String),
    #[error("cannot connect to {backend} at `{url}`: {source}")]
    Connect {
        backend: &'static str,
        url: String,
        source: sqlx::Error,
    },
    #[error("cannot apply {backend} migrations: {0}", backend = .1)]
    Migrate(sqlx::migrate::MigrateError, &'static str),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("journal {path}: {source}")]
    Journal {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
    #[error("invalid store request: {0}")]
    Invalid(String),
    #[error("no policy version {0}")]
    UnknownVersion(i64),
}

/// A connection-level failure that is worth retrying (server restarting, network), as opposed
/// to a statement the database will reject every time.
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            // 08: connection exception, 53: insufficient resources, 57: operator intervention
            // (admin shutdown, cannot connect now), 40001/40P01: retryable; SQLite BUSY/LOCKED.
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || code == "40001"
                || code == "40P01"
                || code == "5"
                || code == "6"
                || code == "517"
                || code == "261"
        }
        _ => false,
    }
}
