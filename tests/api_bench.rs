//! The proxy-overhead benchmark runs end to end on the fake backend and reports sane numbers.

use std::sync::Arc;

use hindsight::api::bench::{proxy_overhead, OverheadOptions};
use hindsight::api::testing::{FakeBackend, FakeConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_overhead_on_the_fake_backend() {
    let backend = Arc::new(FakeBackend::new(FakeConfig::default()));
    let report = proxy_overhead(
        backend.clone(),
        OverheadOptions {
            requests: 50,
            concurrency: 64,
            concurrent_requests: 640,
            ..OverheadOptions::default()
        },
    )
    .await
    .unwrap();
    println!("{report}");
    assert!(report.http.p50_ms > 0.0 && report.direct.p50_ms > 0.0);
    assert!(report.http.p50_ms >= report.direct.p50_ms, "{report}");
    assert!(report.http.p99_ms >= report.http.p50_ms);
    assert!(report.http_requests_per_s > 0.0 && report.direct_requests_per_s > 0.0);
    assert!(report.ttft_http.p50_ms > 0.0);
    // Every measured call really reached the engine: warm-up + 4 per sample + throughput runs.
    assert_eq!(backend.requests().len(), 5 * 2 + 50 * 4 + 640 * 2);
}
