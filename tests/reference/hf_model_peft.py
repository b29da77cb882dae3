"""Reference for tests/lora_training.rs: loads our PEFT adapter with the real `peft` package.

Reads {"model": DIR, "adapter": DIR, "prompts": [[ids]...]} on stdin and writes
{"adapted": [last-position logits per prompt]} computed by PeftModel.from_pretrained.
"""
import json
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def main():
    request = json.load(sys.stdin)
    torch.set_grad_enabled(False)
    base = AutoModelForCausalLM.from_pretrained(request["model"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, request["adapter"])
    model.eval()
    adapted = [model(input_ids=torch.tensor([ids])).logits[0, -1].tolist() for ids in request["prompts"]]
    json.dump({"adapted": adapted}, sys.stdout)


if __name__ == "__main__":
    main()
