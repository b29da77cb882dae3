//! `hindsight chat`: talk to the model in the terminal, streaming its replies.

use std::io::{BufRead, Write};

use crate::engine::{
    Backend, GenerateEvent, GenerateRequest, LocalEngine, SamplingParams, StopCriteria,
};

use super::model_args::ModelArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A system message to start the conversation with.
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 for greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    #[arg(long)]
    pub seed: Option<u64>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let engine = LocalEngine::start(args.model.engine_options()?)?;
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(serde_json::json!({"role": "system", "content": system}));
    }
    eprintln!(
        "model {} loaded; type a message (Ctrl-D to quit)",
        engine.info().id
    );
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        messages.push(serde_json::json!({"role": "user", "content": line}));
        let prompt = engine.chat_prompt(&messages, None)?;
        let budget = engine.info().context_length.saturating_sub(prompt.len());
        let request = GenerateRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            prompt_tokens: prompt,
            sampling: SamplingParams {
                temperature: args.temperature,
                seed: args.seed,
                ..SamplingParams::default()
            },
            stop: StopCriteria {
                max_tokens: args.max_tokens.min(budget),
                ..StopCriteria::default()
            },
            top_logprobs: 0,
            adapter: Default::default(),
            priority: Default::default(),
            constraint: None,
        };
        let mut events = engine.submit(request)?;
        let mut reply = String::new();
        while let Some(event) = events.blocking_recv() {
            match event {
                GenerateEvent::Token(token) => {
                    print!("{}", token.text);
                    stdout.flush()?;
                    reply.push_str(&token.text);
                }
                GenerateEvent::Finish(_) => break,
                GenerateEvent::Error(err) => anyhow::bail!("generation failed: {err}"),
            }
        }
        println!();
        messages.push(serde_json::json!({"role": "assistant", "content": reply}));
    }
}
