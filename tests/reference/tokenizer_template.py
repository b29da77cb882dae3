"""Reference token ids, decodes and chat-template renders from transformers.

Reads one JSON request on stdin:
  {"tokenizers": {NAME: {"dir": D} | {"dir": D, "gguf_file": F}},
   "encode": [[NAME, text]], "decode": [[NAME, ids]],
   "render": [[NAME, {"messages": [...], "tools": [...]|null, "add_generation_prompt": bool}]]}
and prints {"encode": [ids], "decode": [text], "render": [text | {"error": message}],
"render_ids": [ids of each rendered text | null]}.
"""
import json
import sys

from transformers import AutoTokenizer

request = json.load(sys.stdin)
tokenizers = {
    name: AutoTokenizer.from_pretrained(spec["dir"], gguf_file=spec.get("gguf_file"))
    for name, spec in request["tokenizers"].items()
}


def render(tok, case):
    try:
        return tok.apply_chat_template(
            case["messages"], tools=case.get("tools"), tokenize=False,
            add_generation_prompt=case["add_generation_prompt"], **case.get("extra", {}),
        )
    except Exception as e:  # the Rust side must reject the same conversations
        return {"error": str(e)}


renders = [render(tokenizers[n], case) for n, case in request["render"]]
print(json.dumps({
    "encode": [tokenizers[n].encode(text, add_special_tokens=False) for n, text in request["encode"]],
    "decode": [tokenizers[n].decode(ids) for n, ids in request["decode"]],
    "render": renders,
    "render_ids": [
        tokenizers[n].encode(r, add_special_tokens=False) if isinstance(r, str) else None
        for (n, _), r in zip(request["render"], renders)
    ],
}, ensure_ascii=False))
