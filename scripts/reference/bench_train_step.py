"""The same LoRA training step in PyTorch (transformers + peft), for `hindsight bench train`.

Reads JSON on stdin: model_dir, samples (list of {prompt, response, behaviour, teacher, reward}),
micro_batch, lr, repeats. Runs the step Hindsight's trainer runs — teacher-forced log-probs of
the response tokens, PPO clipped surrogate against the behaviour log-probs with per-token
advantage r + clip(teacher − behaviour, −5, 5), token mean per sample, mean over samples,
grad-norm clip 1.0, AdamW — and prints {"seconds": [...], "torch": version}.
"""
import json
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

EPS_LOW, EPS_HIGH, RATIO_CAP, OPD_CLIP = 0.2, 0.28, 3.0, 5.0


def response_logprobs(model, rows):
    width = max(len(r["prompt"]) + len(r["response"]) for r in rows)
    r_max = max(len(r["response"]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    pos = torch.zeros(len(rows), r_max, dtype=torch.long)
    tgt = torch.zeros(len(rows), r_max, dtype=torch.long)
    resp_mask = torch.zeros(len(rows), r_max)
    for i, r in enumerate(rows):
        seq = r["prompt"] + r["response"]
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        n = len(r["response"])
        pos[i, :n] = torch.arange(len(r["prompt"]) - 1, len(r["prompt"]) - 1 + n)
        tgt[i, :n] = torch.tensor(r["response"])
        resp_mask[i, :n] = 1.0
    hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    picked = hidden.gather(1, pos.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    logits = model.get_output_embeddings()(picked).float()
    lp = logits.log_softmax(-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    return lp * resp_mask, resp_mask


def pad(rows, key, width):
    out = torch.zeros(len(rows), width)
    for i, r in enumerate(rows):
        out[i, : len(r[key])] = torch.tensor(r[key])
    return out


def step(model, optimizer, samples, micro_batch):
    optimizer.zero_grad()
    total = len(samples)
    for start in range(0, total, micro_batch):
        chunk = samples[start : start + micro_batch]
        new_lp, mask = response_logprobs(model, chunk)
        width = new_lp.shape[1]
        old = pad(chunk, "behaviour", width)
        teacher = pad(chunk, "teacher", width)
        reward = torch.tensor([r["reward"] for r in chunk]).unsqueeze(1)
        adv = (reward + (teacher - old).clamp(-OPD_CLIP, OPD_CLIP)) * mask
        ratio = ((new_lp - old) * mask).exp()
        surr = torch.minimum(ratio * adv, ratio.clamp(1 - EPS_LOW, 1 + EPS_HIGH) * adv)
        surr = torch.where(adv < 0, torch.maximum(surr, RATIO_CAP * adv), surr)
        per_sample = (-surr * mask).sum(1) / mask.sum(1).clamp_min(1)
        (per_sample.mean() * (len(chunk) / total)).backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()


def main():
    args = json.loads(sys.stdin.read())
    torch.set_num_threads(args.get("threads", torch.get_num_threads()))
    model = AutoModelForCausalLM.from_pretrained(args["model_dir"], torch_dtype=torch.float32)
    config = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    model = get_peft_model(model, config)
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=args["lr"], weight_decay=0.0
    )
    seconds = []
    for _ in range(args["repeats"]):
        t0 = time.perf_counter()
        step(model, optimizer, args["samples"], args["micro_batch"])
        seconds.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": seconds, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
