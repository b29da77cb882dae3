//! Failed sign-ins are limited per client: after [`LOGIN_ATTEMPTS`] wrong tokens within
//! [`LOGIN_WINDOW`], POST /admin/login answers 429 with `Retry-After` until the oldest failure
//! leaves the window, whatever token is sent, so the admin token cannot be guessed at speed.
//!
//! A few lines over a `Mutex<HashMap>` rather than a crate (governor / tower_governor): one route,
//! a handful of attempts a minute, a 429 in OpenAI's envelope with an exact `Retry-After`, and
//! only failures counted, which a generic request limiter would not give without as much glue,
//! plus a new dependency tree in the lockfile.
//!
//! The client is the TCP peer (`ConnectInfo`), never `X-Forwarded-For`, which any client can
//! write: behind a reverse proxy every sign-in shares the proxy's budget. IPv6 peers are counted
//! per /64, since one host usually holds a whole /64. Requests without a peer address (in-process
//! tests) share one budget.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Failed sign-ins allowed per client within [`LOGIN_WINDOW`].
pub const LOGIN_ATTEMPTS: usize = 5;
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// Clients tracked before expired entries are dropped; past it (after dropping), new clients
/// share one budget, so memory stays bounded whatever the number of addresses.
const MAX_CLIENTS: usize = 4096;

type Key = Option<IpAddr>;

#[derive(Debug, Clone)]
pub struct LoginLimiter {
    attempts: usize,
    window: Duration,
    failures: Arc<Mutex<HashMap<Key, VecDeque<Instant>>>>,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self::new(LOGIN_ATTEMPTS, LOGIN_WINDOW)
    }
}

impl LoginLimiter {
    pub fn new(attempts: usize, window: Duration) -> Self {
        Self {
            attempts: attempts.max(1),
            window,
            failures: Arc::default(),
        }
    }

    /// Ok when `client` may try now; Err(how long until it may) when it is over the limit.
    pub fn check(&self, client: Option<IpAddr>) -> Result<(), Duration> {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let Some(times) = failures.get_mut(&key(client)) else {
            return Ok(());
        };
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            times.pop_front();
        }
        match times.front() {
            Some(oldest) if times.len() >= self.attempts => {
                Err(self.window.saturating_sub(now.duration_since(*oldest)))
            }
            _ => Ok(()),
        }
    }

    /// Counts a wrong token from `client`.
    pub fn record_failure(&self, client: Option<IpAddr>) {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let mut key = key(client);
        if failures.len() >= MAX_CLIENTS && !failures.contains_key(&key) {
            let window = self.window;
            failures.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < window)
            });
            if failures.len() >= MAX_CLIENTS {
                key = None;
            }
        }
        let times = failures.entry(key).or_default();
        times.push_back(now);
        while times.len() > self.attempts {
            times.pop_front();
        }
    }
}

fn key(client: Option<IpAddr>) -> Key {
    match client?.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            Some(IpAddr::V6(Ipv6Addr::from(prefix)))
        }
        v4 => Some(v4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_failures_per_client_and_forgets_them_after_the_window() {
        let limiter = LoginLimiter::new(2, Duration::from_millis(200));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..2 {
            assert!(limiter.check(Some(a)).is_ok());
            limiter.record_failure(Some(a));
        }
        let wait = limiter.check(Some(a)).unwrap_err();
        assert!(wait <= Duration::from_millis(200) && wait > Duration::ZERO);
        assert!(limiter.check(Some(b)).is_ok());
        assert!(limiter.check(None).is_ok());
        std::thread::sleep(Duration::from_millis(250));
        assert!(limiter.check(Some(a)).is_ok());
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let limiter = LoginLimiter::new(1, Duration::from_secs(60));
        limiter.record_failure(Some("2001:db8::1".parse().unwrap()));
        assert!(limiter
            .check(Some("2001:db8::ffff".parse().unwrap()))
            .is_err());
        assert!(limiter
            .check(Some("2001:db8:0:1::1".parse().unwrap()))
            .is_ok());
        limiter.record_failure(Some("::ffff:10.0.0.9".parse().unwrap()));
        assert!(limiter.check(Some("10.0.0.9".parse().unwrap())).is_err());
    }
}
