//! How `serve` shows the store's state: a /readyz probe and Prometheus gauges.

use std::time::Duration;

use crate::api::ReadinessProbe;
use crate::store::Store;

/// The store never blocks serving (an unreachable database only means turns are journaled and
/// replayed later), so it never fails readiness; /readyz shows its state beside the verdict.
pub struct StoreProbe(pub Store);

impl ReadinessProbe for StoreProbe {
    fn name(&self) -> &str {
        "store"
    }

    fn check(&self) -> Result<(), String> {
        Ok(())
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
