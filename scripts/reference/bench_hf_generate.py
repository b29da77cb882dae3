"""HF transformers generate() on the same model and prompt, for `hindsight bench engine`.

Prints one JSON object: prefill and batch-1 decode tokens/s (greedy) for f32 and bf16, and the
process's peak RSS after each.
"""
import json
import resource
import sys
import time

import torch
from transformers import AutoModelForCausalLM


def peak_rss_mb():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork + exec, so it would report
    # the parent benchmark's peak whenever that is higher than this process's own.
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(model_dir, prompt_ids, new_tokens, dtype):
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=dtype)
    model.eval()
    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, do_sample=False)  # warm-up
        t0 = time.perf_counter()
        model(ids)
        prefill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(
            ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
        )
        total_s = time.perf_counter() - t0
    generated = out.shape[1] - ids.shape[1]
    decode_s = max(total_s - prefill_s, 1e-9)
    return {
        "prefill_tok_s": len(prompt_ids) / prefill_s,
        "decode_tok_s": (generated - 1) / decode_s,
        "generated": int(generated),
        "peak_rss_mb": peak_rss_mb(),
    }


def main():
    args = json.loads(sys.stdin.read())
    torch.set_num_threads(args.get("threads", torch.get_num_threads()))
    result = {"torch": torch.__version__}
    for name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        if name in args.get("dtypes", ["f32", "bf16"]):
            result[name] = measure(args["model_dir"], args["prompt_ids"], args["new_tokens"], dtype)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
