// Client compatibility with the official `openai` Node SDK. Same environment as the Python
// suite (HINDSIGHT_BASE_URL, HINDSIGHT_API_KEY, HINDSIGHT_MODEL, HINDSIGHT_EXPECT_AUTH,
// HINDSIGHT_EXPECT_429, HINDSIGHT_EXPECT_TOOL_CALLS). Run: node --test tests/sdk/openai_node.test.mjs
import { test, before } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";

const baseURL = process.env.HINDSIGHT_BASE_URL;
const apiKey = process.env.HINDSIGHT_API_KEY ?? "none";
const flag = (name) => process.env[name] === "1";
const makeClient = (options = {}) => new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 120_000, ...options });
const client = makeClient();
let model;

const weatherTool = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Current weather in a city",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
};

const chat = (options = {}) =>
  client.chat.completions.create({
    model,
    messages: [{ role: "user", content: "Write one sentence about mountains." }],
    max_tokens: 24,
    ...options,
  });

before(async () => {
  assert.ok(baseURL, "HINDSIGHT_BASE_URL is required");
  model = process.env.HINDSIGHT_MODEL || (await client.models.list()).data[0].id;
});

test("models list and retrieve", async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.ok(ids.includes(model));
  const one = await client.models.retrieve(model);
  assert.equal(one.id, model);
});

test("create", async () => {
  const completion = await chat({ temperature: 0 });
  assert.match(completion.id, /^chatcmpl-/);
  assert.match(completion.system_fingerprint, /^hs-v\d+$/);
  const choice = completion.choices[0];
  assert.equal(choice.message.role, "assistant");
  assert.equal(typeof choice.message.content, "string");
  assert.ok(["stop", "length"].includes(choice.finish_reason));
  const u = completion.usage;
  assert.equal(u.total_tokens, u.prompt_tokens + u.completion_tokens);
});

test("stream concatenates to the same text", async () => {
  const options = { temperature: 0.7, seed: 4321 };
  const whole = await chat(options);
  const stream = await chat({ ...options, stream: true, stream_options: { include_usage: true } });
  let text = "";
  let chunks = 0;
  let usage = null;
  let finish = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      if (choice.delta.content) {
        text += choice.delta.content;
        chunks += 1;
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  assert.equal(text, whole.choices[0].message.content);
  assert.equal(finish, whole.choices[0].finish_reason);
  assert.ok(chunks > 1, "streamed token by token");
  assert.equal(usage.completion_tokens, whole.usage.completion_tokens);
});

test("n = 2", async () => {
  const completion = await chat({ n: 2, temperature: 0.9, seed: 11 });
  assert.deepEqual(completion.choices.map((c) => c.index), [0, 1]);
});

test("logprobs", async () => {
  const completion = await chat({ temperature: 0, logprobs: true, top_logprobs: 3, max_tokens: 8 });
  const content = completion.choices[0].logprobs.content;
  assert.equal(content.length, completion.usage.completion_tokens);
  for (const entry of content) {
    assert.ok(entry.logprob <= 0);
    assert.equal(entry.top_logprobs.length, 3);
    assert.deepEqual(entry.bytes, [...Buffer.from(entry.token, "utf8")]);
  }
});

test("tools", async () => {
  const messages = [{ role: "user", content: "What is the weather in Paris right now?" }];
  const completion = await chat({ messages, tools: [weatherTool], temperature: 0, max_tokens: 128 });
  const choice = completion.choices[0];
  if (flag("HINDSIGHT_EXPECT_TOOL_CALLS")) assert.equal(choice.finish_reason, "tool_calls");
  if (choice.finish_reason !== "tool_calls") return;
  const call = choice.message.tool_calls[0];
  assert.match(call.id, /^call_/);
  assert.equal(call.function.name, "get_weather");
  assert.equal(typeof JSON.parse(call.function.arguments), "object");
  // The SDK's stream helper accumulates tool-call deltas into the final message.
  const runner = client.chat.completions.stream({
    model, messages, tools: [weatherTool], temperature: 0, max_tokens: 128,
  });
  const final = await runner.finalChatCompletion();
  const streamedCall = final.choices[0].message.tool_calls[0];
  assert.equal(streamedCall.function.name, call.function.name);
  assert.deepEqual(JSON.parse(streamedCall.function.arguments), JSON.parse(call.function.arguments));
});

test("legacy completion", async () => {
  const completion = await client.completions.create({ model, prompt: "Once upon a time", max_tokens: 5, temperature: 0 });
  assert.equal(completion.object, "text_completion");
  assert.equal(typeof completion.choices[0].text, "string");
});

test("bad request", async () => {
  await assert.rejects(chat({ temperature: 5 }), (err) => {
    assert.ok(err instanceof OpenAI.BadRequestError);
    assert.equal(err.status, 400);
    assert.equal(err.param, "temperature");
    return true;
  });
});

test("not found", async () => {
  await assert.rejects(chat({ model: "no-such-model" }), (err) => {
    assert.ok(err instanceof OpenAI.NotFoundError);
    assert.equal(err.code, "model_not_found");
    return true;
  });
});

test("authentication", { skip: !flag("HINDSIGHT_EXPECT_AUTH") && "the server runs without keys" }, async () => {
  await assert.rejects(makeClient({ apiKey: "sk-wrong" }).models.list(), (err) => {
    assert.ok(err instanceof OpenAI.AuthenticationError);
    assert.equal(err.code, "invalid_api_key");
    return true;
  });
});

test("rate limit", { skip: !flag("HINDSIGHT_EXPECT_429") && "the server's queue is not small" }, async () => {
  const results = await Promise.allSettled(
    Array.from({ length: 16 }, () => chat({ max_tokens: 64, temperature: 0.7 })),
  );
  const refused = results.filter((r) => r.status === "rejected");
  assert.ok(refused.length > 0, "no request was refused");
  for (const r of refused) assert.ok(r.reason instanceof OpenAI.RateLimitError, String(r.reason));
});
