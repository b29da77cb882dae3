//! Teacher-forced log-probabilities of responses (training and evaluation path).

use tch::{Kind, Tensor};

use super::error::ModelError;
use super::transformer::Transformer;

/// Log-probabilities of each response token given its prompt and the response so far:
/// ([B, Rmax] f32, [B, Rmax] f32 mask of real tokens). Rows are right-padded; autograd
/// follows the caller's mode (so gradients reach a trainable adapter).
pub fn response_logprobs(
    model: &Transformer,
    batch: &[(Vec<u32>, Vec<u32>)],
    use_adapter: bool,
) -> Result<(Tensor, Tensor), ModelError> {
    if batch.is_empty() {
        return Err(ModelError::InvalidRequest("empty batch".into()));
    }
    let max_len = batch
        .iter()
        .map(|(p, r)| p.len() + r.len())
        .max()
        .unwrap_or(0);
    let r_max = batch.iter().map(|(_, r)| r.len()).max().unwrap_or(0).max(1);
    let (b, t) = (batch.len(), max_len);
    let mut ids = vec![0i64; b * t];
    let mut mask = vec![0i64; b * t];
    // For response token j of row i: the position whose logits predict it, and its id.
    let mut positions = vec![0i64; b * r_max];
    let mut targets = vec![0i64; b * r_max];
    let mut resp_mask = vec![0f32; b * r_max];
    for (i, (prompt, response)) in batch.iter().enumerate() {
        if prompt.is_empty() {
            return Err(ModelError::InvalidRequest(format!(
                "row {i}: the prompt must not be empty"
            )));
        }
        model.check_tokens(prompt)?;
        model.check_tokens(response)?;
        for (k, &tok) in prompt.iter().chain(response.iter()).enumerate() {
            ids[i * t + k] = tok as i64;
            mask[i * t + k] = 1;
        }
        for (j, &tok) in response.iter().enumerate() {
            positions[i * r_max + j] = (i * t + prompt.len() + j - 1) as i64;
            targets[i * r_max + j] = tok as i64;
            resp_mask[i * r_max + j] = 1.0;
        }
    }
    let dev = model.device();
    let shape = [b as i64, t as i64];
    let ids = Tensor::from_slice(&ids).view(shape).to_device(dev);
    let mask = Tensor::from_slice(&mask).view(shape).to_device(dev);
    let hidden = model.forward_hidden(&ids, &mask, use_adapter)?;
    // Only the positions that predict response tokens go through lm_head and log_softmax.
    let h = hidden.view([(b * t) as i64, -1]);
    let picked = h.index_select(0, &Tensor::from_slice(&positions).to_device(dev));
    let logprobs = model.logits(&picked).log_softmax(-1, Kind::Float);
    let targets = Tensor::from_slice(&targets).to_device(dev).view([-1, 1]);
    let token_lp = logprobs
        .gather(1, &targets, false)
        .view([b as i64, r_max as i64]);
    let resp_mask = Tensor::from_slice(&resp_mask)
        .to_device(dev)
        .view([b as i64, r_max as i64]);
    Ok((token_lp * &resp_mask, resp_mask))
}
