#!/usr/bin/env bash
# Calls against a running `hindsight serve`. BASE and KEY may be overridden.
set -euo pipefail
BASE=${BASE:-http://127.0.0.1:8080}
KEY=${KEY:-none}
AUTH=(-H "Authorization: Bearer $KEY")
MODEL=$(curl -sf "${AUTH[@]}" "$BASE/v1/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')

echo "--- model: $MODEL"
curl -sf "$BASE/healthz"; echo
curl -sf "$BASE/readyz"; echo

echo "--- chat completion"
curl -sf "${AUTH[@]}" "$BASE/v1/chat/completions" -H 'Content-Type: application/json' \
  -H 'X-Session-Id: curl-demo' \
  -d "{\"model\": \"$MODEL\", \"messages\": [{\"role\": \"user\", \"content\": \"Say hi in five words.\"}], \"max_tokens\": 32}"
echo

echo "--- streamed (token by token, ends with data: [DONE])"
curl -sfN "${AUTH[@]}" "$BASE/v1/chat/completions" -H 'Content-Type: application/json' \
  -d "{\"model\": \"$MODEL\", \"messages\": [{\"role\": \"user\", \"content\": \"Count to five.\"}], \"max_tokens\": 32, \"stream\": true, \"stream_options\": {\"include_usage\": true}}"

echo "--- tools"
curl -sf "${AUTH[@]}" "$BASE/v1/chat/completions" -H 'Content-Type: application/json' -d @- <<JSON
{"model": "$MODEL", "max_tokens": 128,
 "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
 "tools": [{"type": "function", "function": {"name": "get_weather",
   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]}
JSON
echo

echo "--- legacy completion"
curl -sf "${AUTH[@]}" "$BASE/v1/completions" -H 'Content-Type: application/json' \
  -d "{\"model\": \"$MODEL\", \"prompt\": \"The capital of France is\", \"max_tokens\": 8, \"temperature\": 0}"
echo

echo "--- an error in OpenAI's envelope"
curl -s "${AUTH[@]}" "$BASE/v1/chat/completions" -H 'Content-Type: application/json' \
  -d "{\"model\": \"$MODEL\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"temperature\": 7}"
echo
