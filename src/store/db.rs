//! The two backends behind one type: PostgreSQL (production) or embedded SQLite (default),
//! chosen by the URL scheme; migrations are applied on first contact.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use super::error::StoreError;

#[derive(Clone, Debug)]
pub enum Db {
    Pg(PgPool),
    Lite(SqlitePool),
}

/// Calls `$module::$func(pool, args…)` on whichever backend `$db` is.
macro_rules! dispatch {
    ($db:expr, $module:ident :: $func:ident ( $($arg:expr),* $(,)? )) => {
        match $db {
            $crate::store::db::Db::Pg(pool) => $module::pg::$func(pool, $($arg),*).await,
            $crate::store::db::Db::Lite(pool) => $module::lite::$func(pool, $($arg),*).await,
        }
    };
}
pub(crate) use dispatch;

/// `sqlite://<data_dir>/hindsight.db`: the embedded default.
pub fn default_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("hindsight.db").display())
}

impl Db {
    /// Builds a pool without connecting (so a server can start while Postgres is down).
    pub fn lazy(url: &str) -> Result<Db, StoreError> {
        let bad_url = |_| StoreError::UnsupportedUrl(url.to_string());
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).map_err(bad_url)?;
            let pool = PgPoolOptions::new()
                .max_connections(4)
                // Short: a write that cannot get a connection is retried, then journaled.
                .acquire_timeout(Duration::from_secs(1))
                .connect_lazy_with(options);
            Ok(Db::Pg(pool))
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(bad_url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // WAL + NORMAL is durable across process crashes; the journal covers the rest.
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10));
            if let Some(parent) = options.get_filename().parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent).map_err(|source| StoreError::DataDir {
                        path: parent.to_path_buf(),
                        source,
                    })?;
                }
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(10))
                .connect_lazy_with(options);
            Ok(Db::Lite(pool))
        } else {
            Err(StoreError::UnsupportedUrl(url.to_string()))
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Db::Pg(_) => "postgres",
            Db::Lite(_) => "sqlite",
        }
    }

    /// Applies pending migrations (idempotent).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let result = match self {
            Db::Pg(pool) => sqlx::migrate!("migrations/postgres").run(pool).await,
            Db::Lite(pool) => sqlx::migrate!("migrations/sqlite").run(pool).await,
        };
        result.map_err(|e| StoreError::Migrate(e, self.backend()))
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        match self {
            Db::Pg(pool) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()),
            Db::Lite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()),
        }
    }

    pub async fn close(&self) {
        match self {
            Db::Pg(pool) => pool.close().await,
            Db::Lite(pool) => pool.close().await,
        }
    }
}
