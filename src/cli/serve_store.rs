//! How `serve` shows the store's state: a /readyz probe and Prometheus gauges.

use std::time::Duration;

use crate::api::ReadinessProbe;
use crate::store::Store;

/// An unreachable database does not stop serving (turns are journaled and replayed later), but
/// /readyz says so: not ready, with the reason, until the writer reaches the database again.
pub struct StoreProbe(pub Store);

impl ReadinessProbe for StoreProbe {
    fn name(&self) -> &str {
        "store"
    }

    fn check(&self) -> Result<(), String> {
        let health = self.0.health();
        if health.connected {
            return Ok(());
        }
        let reason = health.last_error.as_deref().unwrap_or("not reached yet");
        Err(format!(
            "{} unreachable ({reason}); turns are journaled ({} rows) and replayed once it is back",
            health.backend, health.journal_rows
        ))
    }

    fn detail(&self) -> serde_json::Value {
        serde_json::to_value(self.0.health()).unwrap_or_default()
    }
}

/// Copies the store's health into gauges every second, for /metrics.
pub async fn publish_store_gauges(store: Store) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let health = store.health();
        let backend = health.backend;
        metrics::gauge!("hindsight_store_connected", "backend" => backend)
            .set(if health.connected { 1.0 } else { 0.0 });
        metrics::gauge!("hindsight_store_queue_depth", "backend" => backend)
            .set(health.queue_depth as f64);
        metrics::gauge!("hindsight_store_journal_rows", "backend" => backend)
            .set(health.journal_rows as f64);
    }
}
