//! Prometheus metrics: one process-wide recorder, an HTTP middleware counting requests by route
//! and status, and helpers the generation paths call.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::engine::EngineLoad;

pub const HTTP_REQUESTS: &str = "hindsight_http_requests_total";
pub const HTTP_DURATION: &str = "hindsight_http_request_duration_seconds";
pub const TIME_TO_FIRST_TOKEN: &str = "hindsight_time_to_first_token_seconds";
pub const GENERATION_DURATION: &str = "hindsight_generation_duration_seconds";
pub const GENERATED_TOKENS: &str = "hindsight_generated_tokens_total";
pub const PROMPT_TOKENS: &str = "hindsight_prompt_tokens_total";
pub const CANCELLED_GENERATIONS: &str = "hindsight_generations_cancelled_total";
pub const QUEUE_DEPTH: &str = "hindsight_engine_queue_depth";
pub const ACTIVE_SEQUENCES: &str = "hindsight_engine_active_sequences";

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The process-wide recorder (metrics macros write to a global; installing twice is an error,
/// so every app in the process shares this handle).
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("the latency bucket list is non-empty");
            match builder.install_recorder() {
                Ok(handle) => handle,
                Err(err) => {
                    tracing::warn!(error = %err, "a metrics recorder is already installed; /metrics will be empty");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

/// Renders the exposition text, with the engine gauges sampled now.
pub fn render(handle: &PrometheusHandle, load: EngineLoad) -> String {
    metrics::gauge!(QUEUE_DEPTH).set(load.queued_requests as f64);
    metrics::gauge!(ACTIVE_SEQUENCES).set(load.active_sequences as f64);
    handle.run_upkeep();
    handle.render()
}

/// Counts every request by method, matched route (not the raw path: bounded cardinality) and
/// status, and observes the time to the response head.
pub async fn track_http(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS, "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(HTTP_DURATION, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

pub fn observe_time_to_first_token(endpoint: &'static str, ttft: Duration) {
    metrics::histogram!(TIME_TO_FIRST_TOKEN, "endpoint" => endpoint).record(ttft.as_secs_f64());
}

pub fn observe_generation(
    endpoint: &'static str,
    duration: Duration,
    prompt_tokens: usize,
    completion_tokens: usize,
) {
    metrics::histogram!(GENERATION_DURATION, "endpoint" => endpoint).record(duration.as_secs_f64());
    metrics::counter!(PROMPT_TOKENS, "endpoint" => endpoint).increment(prompt_tokens as u64);
    metrics::counter!(GENERATED_TOKENS, "endpoint" => endpoint).increment(completion_tokens as u64);
}

pub fn count_cancelled(endpoint: &'static str) {
    metrics::counter!(CANCELLED_GENERATIONS, "endpoint" => endpoint).increment(1);
}
