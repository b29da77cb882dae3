"""Reference outputs of HF transformers for tests/model_reference.rs.

Reads a JSON request on stdin:
  {"models": [{"dir": ..., "texts": [...], "prompts": [[ids]...], "generate": N}]}
and writes, per model: the token ids of each text, then for every prompt (texts first, then the
given id lists) the last position's logits, and with "generate" the greedy continuation of the
first prompt by `generate(do_sample=False)`.

With "rope": {"text", "length", "positions", "variants": [{"max_position_embeddings",
"rope_parameters"}]}, the text's first `length` tokens run once per variant with the model's
rotary embedding rebuilt from a config changed as the variant says (what `from_pretrained`
with those config kwargs builds); per variant: the logits at `positions`, the inverse
frequencies the forward used (dynamic NTK recomputes them from the sequence length) and the
attention scaling.
"""
import copy
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    request = json.load(sys.stdin)
    torch.set_grad_enabled(False)
    results = []
    for spec in request["models"]:
        # With "gguf_file", transformers dequantizes the GGUF itself: the reference never
        # sees our importer's output.
        source = {"gguf_file": spec["gguf_file"]} if spec.get("gguf_file") else {}
        model = AutoModelForCausalLM.from_pretrained(spec["dir"], dtype=torch.float32, **source)
        model.eval()
        prompts = []
        if spec.get("texts"):
            tok = AutoTokenizer.from_pretrained(spec["dir"], **source)
            prompts += [tok(t)["input_ids"] for t in spec["texts"]]
        prompts += spec.get("prompts", [])
        out = {"prompts": prompts, "last_logits": []}
        for ids in prompts:
            logits = model(torch.tensor([ids])).logits[0, -1]
            out["last_logits"].append(logits.tolist())
        if spec.get("generate"):
            ids = torch.tensor([prompts[0]])
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=spec["generate"], pad_token_id=0)
            out["generated"] = gen[0, len(prompts[0]):].tolist()
        if spec.get("rope"):
            tok = AutoTokenizer.from_pretrained(spec["dir"], **source)
            out["rope"] = rope_variants(model, tok, spec["rope"])
        results.append(out)
    json.dump({"models": results}, sys.stdout)


def rope_variants(model, tok, spec):
    ids = tok(spec["text"])["input_ids"][: spec["length"]]
    assert len(ids) == spec["length"], f"the text has only {len(ids)} tokens"
    original = model.model.rotary_emb
    theta = model.config.rope_parameters["rope_theta"]
    variants = []
    for variant in spec["variants"]:
        config = copy.deepcopy(model.config)
        config.max_position_embeddings = variant["max_position_embeddings"]
        config.rope_parameters = {"rope_theta": theta, **variant["rope_parameters"]}
        config.standardize_rope_params()
        config.validate_rope()
        rotary = type(original)(config=config)
        model.model.rotary_emb = rotary
        logits = model(torch.tensor([ids])).logits[0]
        variants.append({
            "logits": [logits[p].tolist() for p in spec["positions"]],
            "inv_freq": rotary.inv_freq.tolist(),
            "attention_scaling": float(rotary.attention_scaling),
        })
    model.model.rotary_emb = original
    return {"prompt": ids, "variants": variants}


if __name__ == "__main__":
    main()
