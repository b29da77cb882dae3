//! Judge workers: claim turns whose next state or feedback has arrived, ask the judge chain,
//! and record the verdict with the training sample it yields.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::judge::{FeedbackInput, JudgeChain, JudgeInput, NextMessage, Rating, Verdict};
use super::samples::{LearnMode, SampleKind};
use crate::store::{JudgeTask, NewJudgement, NewSample, Store};

/// How long a claim holds before another worker may take the turn over.
const LEASE: Duration = Duration::from_secs(300);
const CLAIM_BATCH: usize = 8;

pub struct JudgeWorker {
    pub name: String,
    pub store: Store,
    pub chain: Arc<JudgeChain>,
    pub mode: LearnMode,
    pub poll: Duration,
    pub stop: Arc<AtomicBool>,
}

impl JudgeWorker {
    pub async fn run(self) {
        while !self.stop.load(Ordering::SeqCst) {
            let tasks = match self
                .store
                .claim_judge_tasks(&self.name, CLAIM_BATCH, LEASE)
                .await
            {
                Ok(tasks) => tasks,
                Err(err) => {
                    tracing::warn!(%err, "claiming turns to judge failed");
                    Vec::new()
                }
            };
            if tasks.is_empty() {
                tokio::time::sleep(self.poll).await;
                continue;
            }
            let mut failed = false;
            for task in tasks {
                failed |= !self.judge_one(task).await;
            }
            // A failing judge (e.g. a remote one that is down) is retried, but not in a hot loop.
            if failed {
                tokio::time::sleep(self.poll).await;
            }
        }
    }

    /// False when the judge failed and the turn was handed back for a later retry.
    async fn judge_one(&self, task: JudgeTask) -> bool {
        let turn_id = task.turn_id;
        let claim = &task.claim;
        let input = judge_input(&task);
        let mut judged = true;
        let outcome = match self.chain.judge(&input).await {
            Ok(Some(verdict)) => {
                let (judgement, sample) = records(&task, &verdict, self.mode);
                metrics::counter!("hindsight_judged_turns_total", "source" => verdict.source)
                    .increment(1);
                self.store
                    .record_judgement(claim, &judgement, sample.as_ref())
                    .await
                    .map(drop)
            }
            Ok(None) => {
                metrics::counter!("hindsight_judged_turns_total", "source" => "abstained")
                    .increment(1);
                self.store.skip_judging(claim).await.map(drop)
            }
            Err(err) => {
                tracing::warn!(turn_id, %err, "judging failed; the turn will be retried");
                judged = false;
                self.store.release_judge_claim(claim).await
            }
        };
        if let Err(err) = outcome {
            tracing::warn!(turn_id, %err, "recording a judgement failed");
            judged = false;
        }
        judged
    }
}

pub fn judge_input(task: &JudgeTask) -> JudgeInput {
    JudgeInput {
        messages: task.messages.as_array().cloned().unwrap_or_default(),
        response_text: task.response_text.clone(),
        response_tool_calls: task.response_tool_calls.clone(),
        next_state: task
            .next_state
            .iter()
            .map(|n| NextMessage {
                role: n.role.clone(),
                content: n.content.clone(),
            })
            .collect(),
        feedback: task
            .feedback
            .iter()
            .map(|f| FeedbackInput {
                rating: Rating::parse(&f.rating),
                correction: f.correction.clone(),
            })
            .collect(),
    }
}

/// The judgement row and, when the verdict carries a signal the mode trains on, the sample.
pub fn records(
    task: &JudgeTask,
    verdict: &Verdict,
    mode: LearnMode,
) -> (NewJudgement, Option<NewSample>) {
    let votes: Vec<Value> = verdict
        .votes
        .iter()
        .map(|v| json!({"text": v.text, "value": v.value}))
        .collect();
    let hint_votes: Vec<Value> = verdict
        .hint_votes
        .iter()
        .map(|v| json!({"text": v.text, "accepted": v.accepted, "hint": v.hint}))
        .collect();
    let judgement = NewJudgement {
        judge: verdict.judge.clone(),
        source: verdict.source.to_string(),
        votes: Value::Array(votes),
        score: Some(f64::from(verdict.score)),
        hint: verdict.hint.clone(),
        hint_votes: Value::Array(hint_votes),
    };
    let reward = f64::from(verdict.score);
    let sample = SampleKind::of(reward, verdict.hint.as_deref(), mode)
        .filter(|_| !task.response_token_ids.is_empty())
        .map(|kind| NewSample {
            policy_version: task.policy_version,
            reward,
            kind: kind.as_str().to_string(),
            hint: verdict.hint.clone(),
        });
    (judgement, sample)
}
