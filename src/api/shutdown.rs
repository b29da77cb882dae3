//! Work to finish after the server stops accepting requests and in-flight responses are done
//! (e.g. the store flushing its queue of captured turns).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;

type Hook = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// Registered hooks run once, in registration order, each bounded by a timeout.
#[derive(Clone, Default)]
pub struct ShutdownHooks {
    hooks: Arc<Mutex<Vec<(String, Hook)>>>,
}

impl std::fmt::Debug for ShutdownHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.hooks.lock().map(|hooks| hooks.len()).unwrap_or(0);
        f.debug_struct("ShutdownHooks")
            .field("count", &count)
            .finish()
    }
}

impl ShutdownHooks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a hook, e.g. `hooks.add("turn store", move || Box::pin(async move { store.flush().await }))`.
    pub fn add(
        &self,
        name: impl Into<String>,
        hook: impl FnOnce() -> BoxFuture<'static, ()> + Send + 'static,
    ) {
        if let Ok(mut hooks) = self.hooks.lock() {
            hooks.push((name.into(), Box::new(hook)));
        }
    }

    /// Runs and removes every hook; one that overruns `timeout` is abandoned with a warning.
    pub async fn run(&self, timeout: Duration) {
        let hooks = match self.hooks.lock() {
            Ok(mut hooks) => std::mem::take(&mut *hooks),
            Err(_) => return,
        };
        for (name, hook) in hooks {
            tracing::info!(hook = %name, "running shutdown hook");
            if tokio::time::timeout(timeout, hook()).await.is_err() {
                tracing::warn!(hook = %name, ?timeout, "shutdown hook timed out");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn hooks_run_once_in_order_and_slow_ones_are_abandoned() {
        let hooks = ShutdownHooks::new();
        let order = Arc::new(Mutex::new(Vec::new()));
        let runs = Arc::new(AtomicUsize::new(0));
        for name in ["first", "slow", "last"] {
            let order = order.clone();
            let runs = runs.clone();
            hooks.add(name, move || {
                Box::pin(async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    if name == "slow" {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                    order.lock().unwrap().push(name);
                })
            });
        }
        hooks.run(Duration::from_millis(50)).await;
        hooks.run(Duration::from_millis(50)).await;
        assert_eq!(*order.lock().unwrap(), vec!["first", "last"]);
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }
}
