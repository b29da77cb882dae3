//! Grammar masks of one step, computed on a worker thread while the model runs: the mask for
//! the next token depends only on tokens already sampled, so it never has to wait for logits,
//! and the batch's other rows do not wait for the grammar.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use llguidance::Matcher;

use super::sampling::mask_row;
use super::scheduler::SharedCounters;

/// Per row: no grammar, its additive mask row (see [`mask_row`]), or the grammar's error.
pub type RowMask = Option<Result<Vec<f32>, String>>;

/// Runs `forward` on this thread while a scoped worker computes the next-token mask of each
/// `(row, matcher)`; returns the forward's result and `rows` masks. Without matchers no thread
/// is started and nothing else is done.
pub fn overlapped<R>(
    rows: usize,
    matchers: Vec<(usize, &mut Matcher)>,
    counters: &SharedCounters,
    forward: impl FnOnce() -> R,
) -> (R, Vec<RowMask>) {
    if matchers.is_empty() {
        return (forward(), Vec::new());
    }
    let positions: Vec<usize> = matchers.iter().map(|&(row, _)| row).collect();
    let (out, computed) = std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("hindsight-grammar".into())
            .spawn_scoped(scope, move || {
                matchers
                    .into_iter()
                    .map(|(_, matcher)| timed_mask(matcher))
                    .collect::<Vec<_>>()
            });
        let out = forward();
        let computed = match worker {
            Ok(worker) => worker.join().ok(),
            Err(err) => {
                tracing::error!(%err, "cannot start the grammar mask thread");
                None
            }
        };
        (out, computed)
    });
    let computed = computed.unwrap_or_else(|| {
        let err = "the grammar mask computation failed".to_string();
        positions
            .iter()
            .map(|_| (Err(err.clone()), Duration::ZERO))
            .collect()
    });
    let mut masks: Vec<RowMask> = vec![None; rows];
    for (row, (mask, elapsed)) in positions.into_iter().zip(computed) {
        record(counters, elapsed);
        masks[row] = Some(mask);
    }
    (out, masks)
}

fn timed_mask(matcher: &mut Matcher) -> (Result<Vec<f32>, String>, Duration) {
    let start = Instant::now();
    // compute_mask catches llguidance's own panics and reports them as errors.
    let mask = matcher
        .compute_mask()
        .map(|allowed| mask_row(&allowed))
        .map_err(|e| format!("constrained decoding failed: {e}"));
    (mask, start.elapsed())
}

fn record(counters: &SharedCounters, elapsed: Duration) {
    counters.grammar_masks.fetch_add(1, Ordering::Relaxed);
    counters
        .grammar_mask_nanos
        .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    metrics::histogram!("hindsight_grammar_mask_seconds").record(elapsed.as_secs_f64());
}
