//! Votes from the served model itself: adapter off (the frozen base), background priority so
//! user traffic always goes first.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::Value;

use super::llm::{LlmJudge, LlmJudgeOptions, VoteSampler};
use super::{Judge, JudgeError};
use crate::engine::{
    AdapterChoice, Backend, EventStream, GenerateEvent, GenerateRequest, Priority, SamplingParams,
    StopCriteria, SubmitError,
};

/// Fewer free context tokens than this and the judge abstains rather than answer truncated.
const MIN_ANSWER_TOKENS: usize = 32;

pub struct LocalSampler {
    backend: Arc<dyn Backend>,
    max_tokens: usize,
}

impl LocalSampler {
    /// `max_tokens`: the most each vote may generate (less when the context is short).
    pub fn new(backend: Arc<dyn Backend>, max_tokens: usize) -> Self {
        Self {
            backend,
            max_tokens: max_tokens.max(1),
        }
    }

    async fn collect(mut events: EventStream) -> Result<String, JudgeError> {
        let mut text = String::new();
        while let Some(event) = events.recv().await {
            match event {
                GenerateEvent::Token(token) => text.push_str(&token.text),
                GenerateEvent::Finish(_) => return Ok(text),
                GenerateEvent::Error(err) => {
                    return Err(JudgeError::Engine(format!(
                        "judge generation failed: {err}"
                    )))
                }
            }
        }
        Err(JudgeError::Engine(
            "the engine stopped before the judge vote finished".into(),
        ))
    }

    async fn sample_n(
        &self,
        messages: Vec<Value>,
        n: usize,
        temperature: f32,
    ) -> Result<Vec<String>, JudgeError> {
        let prompt = self
            .backend
            .chat_prompt(&messages, None)
            .map_err(|e| JudgeError::Engine(format!("judge prompt: {e}")))?;
        let context = self.backend.info().context_length;
        let room = context.saturating_sub(prompt.len());
        if room < MIN_ANSWER_TOKENS {
            return Err(JudgeError::TooLong(format!(
                "{} prompt tokens leave {room} of the {context}-token context",
                prompt.len()
            )));
        }
        let mut streams = Vec::with_capacity(n);
        for _ in 0..n {
            let request = GenerateRequest {
                request_id: format!("judge-{}", uuid::Uuid::now_v7()),
                prompt_tokens: prompt.clone(),
                sampling: SamplingParams {
                    temperature,
                    ..SamplingParams::default()
                },
                stop: StopCriteria {
                    max_tokens: self.max_tokens.min(room),
                    ..StopCriteria::default()
                },
                top_logprobs: 0,
                adapter: AdapterChoice::BaseOnly,
                priority: Priority::Background,
                constraint: None,
            };
            // Submitted together so the engine batches the votes.
            let stream = self.backend.submit(request).map_err(|e| match e {
                SubmitError::ContextTooLong { .. } => JudgeError::TooLong(e.to_string()),
                other => JudgeError::Engine(format!("judge request refused: {other}")),
            })?;
            streams.push(Self::collect(stream));
        }
        futures::future::try_join_all(streams).await
    }
}

impl VoteSampler for LocalSampler {
    fn describe(&self) -> String {
        format!("local:{}", self.backend.info().id)
    }

    fn sample<'a>(
        &'a self,
        messages: Vec<Value>,
        n: usize,
        temperature: f32,
    ) -> BoxFuture<'a, Result<Vec<String>, JudgeError>> {
        self.sample_n(messages, n, temperature).boxed()
    }
}

/// The `local` judge: the served base model, `options.votes` votes per prompt.
pub fn local_judge(
    backend: Arc<dyn Backend>,
    options: LlmJudgeOptions,
) -> Result<Box<dyn Judge>, JudgeError> {
    let sampler = LocalSampler::new(backend, 512);
    Ok(Box::new(LlmJudge::new(
        "local",
        Box::new(sampler),
        options,
    )?))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::api::testing::{FakeBackend, FakeConfig, FakeReply};
    use crate::learn::judge::{JudgeInput, NextMessage};

    /// A fake engine that answers evaluative prompts with `eval[i]` and hint prompts with
    /// `hints[i]`, cycling.
    fn scripted(eval: &'static [&'static str], hints: &'static [&'static str]) -> FakeBackend {
        let (e, h) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        FakeBackend::new(FakeConfig {
            reply: FakeReply::Script(Arc::new(move |_, prompt: &str| {
                let (list, at) = if prompt.contains("[HINT]") {
                    (hints, &h)
                } else {
                    (eval, &e)
                };
                list[at.fetch_add(1, Ordering::SeqCst) % list.len()].to_string()
            })),
            ..FakeConfig::default()
        })
    }

    fn turn() -> JudgeInput {
        JudgeInput {
            messages: vec![serde_json::json!({"role": "user", "content": "Explain tides."})],
            response_text: "Tides are caused by the moon's gravity and many other things.".into(),
            next_state: vec![NextMessage::user("Shorter.")],
            ..JudgeInput::default()
        }
    }

    #[tokio::test]
    async fn votes_through_the_engine_on_the_base_model_in_the_background() {
        let backend = Arc::new(scripted(
            &[r"redo \boxed{-1}", r"\boxed{-1}", r"hmm \boxed{1}"],
            &[
                r"\boxed{1} [HINT]Explain tides in one sentence.[/HINT]",
                r"\boxed{0}",
            ],
        ));
        let judge = local_judge(backend.clone(), LlmJudgeOptions::default()).unwrap();
        assert_eq!(judge.name(), "local:fake-model");
        let verdict = judge.judge(&turn()).await.unwrap().unwrap();
        assert_eq!((verdict.source, verdict.score), ("local", -1));
        assert_eq!(verdict.votes.len(), 3);
        assert_eq!(verdict.hint_votes.len(), 3);
        assert_eq!(
            verdict.hint.as_deref(),
            Some("Explain tides in one sentence.")
        );
        let requests = backend.requests();
        assert_eq!(requests.len(), 6);
        for request in &requests {
            assert_eq!(request.adapter, AdapterChoice::BaseOnly);
            assert_eq!(request.priority, Priority::Background);
            assert_eq!(request.sampling.temperature, 0.6);
        }
        let prompts = backend.prompts();
        let body = prompts[0].messages[1]["content"].as_str().unwrap();
        assert!(body.contains("Explain tides.") && body.contains("Shorter."));
    }

    #[tokio::test]
    async fn unparseable_votes_abstain_and_engine_failures_are_errors() {
        let backend = Arc::new(scripted(&["I think it was fine."], &["no idea"]));
        let judge = local_judge(backend, LlmJudgeOptions::default()).unwrap();
        assert_eq!(judge.judge(&turn()).await.unwrap(), None);

        let failing = Arc::new(FakeBackend::new(FakeConfig {
            reply: FakeReply::Fixed(r"\boxed{1}".into()),
            fail_after_tokens: Some(2),
            ..FakeConfig::default()
        }));
        let judge = local_judge(failing, LlmJudgeOptions::default()).unwrap();
        let err = judge.judge(&turn()).await.unwrap_err();
        assert!(err.to_string().contains("fake engine failure"), "{err}");

        let tiny = Arc::new(FakeBackend::new(FakeConfig {
            context_length: 64,
            ..FakeConfig::default()
        }));
        let judge = local_judge(tiny, LlmJudgeOptions::default()).unwrap();
        assert_eq!(
            judge.judge(&turn()).await.unwrap(),
            None,
            "too long: abstain"
        );

        let no_next = JudgeInput {
            next_state: vec![],
            ..turn()
        };
        let backend = Arc::new(scripted(&[r"\boxed{1}"], &[r"\boxed{0}"]));
        let judge = local_judge(backend.clone(), LlmJudgeOptions::default()).unwrap();
        assert_eq!(judge.judge(&no_next).await.unwrap(), None);
        assert!(backend.requests().is_empty());
    }
}
