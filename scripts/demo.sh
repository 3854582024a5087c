#!/usr/bin/env bash
# Sets up a fresh Debian machine (as root), starts the whole stack (sim engine, no GPU) and sends
# a sample streaming request with curl and one with the openai SDK. The stack is stopped at the
# end unless KEEP_RUNNING=1, in which case it stays up until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
port=${EDGE_PORT:-8000}
log=$(mktemp -t aftershock-up.XXXXXX)
.venv/bin/aftershock up --edge-port "$port" >"$log" 2>&1 &
up=$!
trap 'kill -INT $up 2>/dev/null; wait $up 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 120); do
  grep -q "Aftershock is up" "$log" && break
  kill -0 $up 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.5
done
grep -A10 "Aftershock is up" "$log"
echo
echo "== curl -N (streaming chat completion, Server-Sent Events)"
curl -sN "http://127.0.0.1:$port/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model": "sim-small", "stream": true, "max_tokens": 12, "seed": 42,
       "messages": [{"role": "user", "content": "Tell me about aftershocks."}]}'
echo
echo "== openai SDK (streamed, then one response)"
.venv/bin/python - "$port" <<'PY'
import sys
import openai

client = openai.OpenAI(base_url=f"http://127.0.0.1:{sys.argv[1]}/v1", api_key="local")
stream = client.chat.completions.create(
    model="sim-small", messages=[{"role": "user", "content": "Hello!"}], max_tokens=16, stream=True, seed=1
)
print("stream:", "".join(c.choices[0].delta.content or "" for c in stream if c.choices))
resp = client.chat.completions.create(model="sim-large", messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
print("reply: ", resp.choices[0].message.content, "| usage:", resp.usage.model_dump())
PY
if [ "${KEEP_RUNNING:-0}" = "1" ]; then
  echo "Stack is running on http://127.0.0.1:$port (Ctrl-C stops it)"
  wait $up
fi
