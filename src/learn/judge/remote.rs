//! Votes from any OpenAI-compatible chat-completions server (vLLM, Ollama, a hosted API).
//!
//! `https://` judges use rustls with the Mozilla roots built in (no system certificate store
//! needed); a judge behind a private CA adds that CA with `ca_cert`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::{json, Value};

use super::llm::VoteSampler;
use super::JudgeError;

/// Error bodies are cut to this many characters in messages.
const MAX_ERROR_BODY: usize = 500;

#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiSamplerConfig {
    /// The API base ("http://host:8000/v1") or the full ".../chat/completions" URL.
    pub url: String,
    pub model: String,
    pub api_key: Option<String>,
    /// Per HTTP request, connection included.
    pub timeout: Duration,
    pub max_tokens: u32,
    /// A PEM file of CA certificates trusted besides the public roots, for an `https://` judge
    /// whose certificate a private CA signed.
    pub ca_cert: Option<PathBuf>,
}

impl OpenAiSamplerConfig {
    pub fn new(url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            model: model.into(),
            api_key: None,
            timeout: Duration::from_secs(120),
            max_tokens: 1024,
            ca_cert: None,
        }
    }
}

/// The error and its causes, ": "-separated.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

/// The certificates of a PEM file; an error naming the file when it cannot be read, is not PEM
/// or holds no certificate.
fn read_ca_certs(path: &Path) -> Result<Vec<reqwest::Certificate>, JudgeError> {
    let problem = |what: String| {
        JudgeError::Config(format!("judge CA certificate {}: {what}", path.display()))
    };
    let pem = std::fs::read(path).map_err(|e| problem(format!("cannot read it: {e}")))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        problem(format!(
            "not a valid PEM certificate file: {}",
            error_chain(&e)
        ))
    })?;
    if certs.is_empty() {
        return Err(problem(
            "contains no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

// Whether the server returns `n` choices per request: learned from its first answer.
const N_UNKNOWN: u8 = 0;
const N_HONOURED: u8 = 1;
const N_IGNORED: u8 = 2;

pub struct OpenAiSampler {
    base: String,
    endpoint: String,
    model: String,
    api_key: Option<String>,
    max_tokens: u32,
    client: reqwest::Client,
    honours_n: AtomicU8,
}

impl OpenAiSampler {
    pub fn new(config: OpenAiSamplerConfig) -> Result<Self, JudgeError> {
        let url = config.url.trim().trim_end_matches('/');
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| JudgeError::Config(format!("judge URL {url:?} is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(JudgeError::Config(format!(
                "judge URL {url:?} must start with http:// or https://"
            )));
        }
        if config.model.trim().is_empty() {
            return Err(JudgeError::Config("the judge model name is empty".into()));
        }
        if config.max_tokens == 0 || config.timeout.is_zero() {
            return Err(JudgeError::Config(
                "judge max_tokens and timeout must be positive".into(),
            ));
        }
        let endpoint = if url.ends_with("/chat/completions") {
            url.to_string()
        } else {
            format!("{url}/chat/completions")
        };
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)));
        if let Some(path) = &config.ca_cert {
            for cert in read_ca_certs(path)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| {
            let chain = error_chain(&e);
            JudgeError::Config(match &config.ca_cert {
                // The certificates are parsed as X.509 only here.
                Some(path) => format!(
                    "judge CA certificate {}: not a usable CA certificate: {chain}",
                    path.display()
                ),
                None => format!("HTTP client: {chain}"),
            })
        })?;
        Ok(Self {
            base: url.to_string(),
            endpoint,
            model: config.model.trim().to_string(),
            api_key: config.api_key.filter(|k| !k.trim().is_empty()),
            max_tokens: config.max_tokens,
            client,
            honours_n: AtomicU8::new(N_UNKNOWN),
        })
    }

    fn http_error(&self, err: reqwest::Error) -> JudgeError {
        let url = self.endpoint.clone();
        if err.is_timeout() {
            return JudgeError::Timeout { url };
        }
        let mut message = error_chain(&err);
        // rustls says "invalid peer certificate: UnknownIssuer" (or NotValidForName, Expired…).
        if message.to_ascii_lowercase().contains("certificate") {
            message.push_str(
                " (TLS certificate problem: the judge's certificate was not accepted; if a \
                 private CA signed it, give that CA's PEM with --judge-ca-cert)",
            );
        }
        JudgeError::Http { url, message }
    }

    /// One chat-completions request asking for `n` choices; their texts.
    async fn request(
        &self,
        messages: &[Value],
        n: usize,
        temperature: f32,
    ) -> Result<Vec<String>, JudgeError> {
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            // f32 → shortest decimal → f64, so 0.6 goes out as 0.6, not 0.6000000238.
            "temperature": temperature.to_string().parse::<f64>().unwrap_or(0.6),
            "max_tokens": self.max_tokens,
        });
        if n > 1 {
            body["n"] = json!(n);
        }
        let mut request = self.client.post(&self.endpoint).json(&body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| self.http_error(e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.http_error(e))?;
        if !status.is_success() {
            return Err(JudgeError::Status {
                url: self.endpoint.clone(),
                status: status.as_u16(),
                body: text.chars().take(MAX_ERROR_BODY).collect(),
            });
        }
        let invalid = |message: String| JudgeError::InvalidResponse {
            url: self.endpoint.clone(),
            message,
        };
        let value: Value = serde_json::from_str(&text).map_err(|e| {
            let start: String = text.chars().take(200).collect();
            invalid(format!("not JSON ({e}): {start}"))
        })?;
        let choices = value["choices"]
            .as_array()
            .ok_or_else(|| invalid("no `choices` array".into()))?;
        if choices.is_empty() {
            return Err(invalid("`choices` is empty".into()));
        }
        Ok(choices
            .iter()
            .map(|c| {
                c["message"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect())
    }

    async fn sample_n(
        &self,
        messages: Vec<Value>,
        n: usize,
        temperature: f32,
    ) -> Result<Vec<String>, JudgeError> {
        let mut texts = Vec::with_capacity(n);
        if n > 1 && self.honours_n.load(Ordering::Relaxed) != N_IGNORED {
            match self.request(&messages, n, temperature).await {
                Ok(choices) => {
                    let honoured = choices.len() >= n;
                    let state = if honoured { N_HONOURED } else { N_IGNORED };
                    self.honours_n.store(state, Ordering::Relaxed);
                    texts.extend(choices.into_iter().take(n));
                }
                // Some servers refuse `n` > 1 outright: fall back to one request per vote.
                Err(JudgeError::Status {
                    status: 400 | 422, ..
                }) if self.honours_n.load(Ordering::Relaxed) == N_UNKNOWN => {
                    self.honours_n.store(N_IGNORED, Ordering::Relaxed);
                }
                Err(err) => return Err(err),
            }
        }
        let missing = n - texts.len();
        let singles = (0..missing).map(|_| self.request(&messages, 1, temperature));
        for choices in futures::future::try_join_all(singles).await? {
            texts.extend(choices.into_iter().take(1));
        }
        Ok(texts)
    }
}

impl VoteSampler for OpenAiSampler {
    fn describe(&self) -> String {
        format!("openai:{}@{}", self.model, self.base)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configurations_are_refused_clearly() {
        let err = |url: &str, model: &str| {
            OpenAiSampler::new(OpenAiSamplerConfig::new(url, model))
                .err()
                .map(|e| e.to_string())
        };
        assert!(err("not a url", "m").unwrap().contains("is not a URL"));
        assert!(err("ftp://host/v1", "m").unwrap().contains("http://"));
        assert!(err("http://host/v1", " ").unwrap().contains("model"));
        let sampler = OpenAiSampler::new(OpenAiSamplerConfig::new("http://h:1/v1/", "m")).unwrap();
        assert_eq!(sampler.endpoint, "http://h:1/v1/chat/completions");
        assert_eq!(sampler.describe(), "openai:m@http://h:1/v1");
        let full = OpenAiSampler::new(OpenAiSamplerConfig::new(
            "http://h:1/v1/chat/completions",
            "m",
        ))
        .unwrap();
        assert_eq!(full.endpoint, "http://h:1/v1/chat/completions");
    }
}
