"""Reference outputs of HF transformers for tests/model_reference.rs.

Reads a JSON request on stdin:
  {"models": [{"dir": ..., "texts": [...], "prompts": [[ids]...], "generate": N}]}
and writes, per model: the token ids of each text, then for every prompt (texts first, then the
given id lists) the last position's logits, and with "generate" the greedy continuation of the
first prompt by `generate(do_sample=False)`.
"""
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
        results.append(out)
    json.dump({"models": results}, sys.stdout)


if __name__ == "__main__":
    main()
