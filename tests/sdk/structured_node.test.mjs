// Structured output, forced tool calls and the Responses API with the official `openai` Node SDK.
// Same environment as openai_node.test.mjs (HINDSIGHT_BASE_URL, HINDSIGHT_API_KEY,
// HINDSIGHT_MODEL). The tiny default model answers poorly: only protocol and validity are checked.
// Run: node --test tests/sdk/structured_node.test.mjs
import { test, before } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";

const baseURL = process.env.HINDSIGHT_BASE_URL;
const apiKey = process.env.HINDSIGHT_API_KEY ?? "none";
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 180_000 });
let model;

const personSchema = {
  type: "object",
  properties: {
    name: { type: "string", maxLength: 24 },
    age: { type: "integer", minimum: 0, maximum: 120 },
    city: { type: "string", maxLength: 24 },
  },
  required: ["name", "age", "city"],
  additionalProperties: false,
};

const weatherParameters = {
  type: "object",
  properties: {
    city: { type: "string", maxLength: 32 },
    unit: { type: "string", enum: ["celsius", "fahrenheit"] },
  },
  required: ["city", "unit"],
  additionalProperties: false,
};

// Just enough JSON Schema for the flat object schemas above (no validator package needed).
function validate(value, schema, where = "$") {
  const fail = (why) => assert.fail(`${where}: ${why} in ${JSON.stringify(value)}`);
  switch (schema.type) {
    case "object": {
      if (typeof value !== "object" || value === null || Array.isArray(value)) fail("not an object");
      for (const key of schema.required ?? []) if (!(key in value)) fail(`missing ${key}`);
      for (const [key, v] of Object.entries(value)) {
        const sub = schema.properties?.[key];
        if (!sub) {
          if (schema.additionalProperties === false) fail(`unexpected ${key}`);
          continue;
        }
        validate(v, sub, `${where}.${key}`);
      }
      break;
    }
    case "string":
      if (typeof value !== "string") fail("not a string");
      if (schema.maxLength !== undefined && [...value].length > schema.maxLength) fail("too long");
      break;
    case "integer":
      if (!Number.isInteger(value)) fail("not an integer");
      if (schema.minimum !== undefined && value < schema.minimum) fail("below minimum");
      if (schema.maximum !== undefined && value > schema.maximum) fail("above maximum");
      break;
    default:
      throw new Error(`unsupported schema type ${schema.type}`);
  }
  if (schema.enum && !schema.enum.includes(value)) fail("not in enum");
}

function parseObject(text, what = "content") {
  let value;
  try {
    value = JSON.parse(text);
  } catch (err) {
    assert.fail(`${what} is not JSON (${err.message}): ${JSON.stringify(text)}`);
  }
  assert.equal(typeof value, "object", `${what} is not an object: ${text}`);
  return value;
}

// A response without what differs between two runs (ids, timestamps).
function shape(response) {
  const data = JSON.parse(JSON.stringify(response));
  for (const key of ["id", "created_at", "completed_at", "output_text"]) delete data[key];
  // How much of the prompt the prefix cache held differs between two runs.
  if (data.usage) delete data.usage.input_tokens_details;
  for (const item of data.output ?? []) {
    delete item.id;
    delete item.call_id;
  }
  for (const [key, v] of Object.entries(data)) if (v === null) delete data[key];
  return data;
}

const squeeze = (types) => types.filter((t, i) => i === 0 || types[i - 1] !== t);

before(async () => {
  assert.ok(baseURL, "HINDSIGHT_BASE_URL is required");
  model = process.env.HINDSIGHT_MODEL || (await client.models.list()).data[0].id;
});

test("json_schema strict: 5/5 valid", async () => {
  const prompts = [
    "Alice is 30 and lives in Paris. Extract her details.",
    "Invent a person.",
    "Bob, 45, from Lyon.",
    "Describe a famous painter.",
    "Who are you?",
  ];
  for (const prompt of prompts) {
    const completion = await client.chat.completions.create({
      model,
      messages: [{ role: "user", content: prompt }],
      response_format: { type: "json_schema", json_schema: { name: "person", schema: personSchema, strict: true } },
      temperature: 0,
      max_tokens: 160,
    });
    const choice = completion.choices[0];
    assert.equal(choice.finish_reason, "stop", choice.message.content);
    validate(parseObject(choice.message.content), personSchema);
  }
});

test("forced tool call: required and named", async () => {
  const tools = [{ type: "function", function: { name: "get_weather", description: "Current weather in a city", parameters: weatherParameters, strict: true } }];
  for (const tool_choice of ["required", { type: "function", function: { name: "get_weather" } }]) {
    const completion = await client.chat.completions.create({
      model,
      messages: [{ role: "user", content: "Tell me about Paris." }],
      tools,
      tool_choice,
      parallel_tool_calls: false,
      temperature: 0,
      max_tokens: 128,
    });
    const choice = completion.choices[0];
    assert.equal(choice.finish_reason, "tool_calls", choice.message.content);
    assert.equal(choice.message.tool_calls.length, 1);
    const call = choice.message.tool_calls[0];
    assert.match(call.id, /^call_/);
    assert.equal(call.function.name, "get_weather");
    validate(parseObject(call.function.arguments, "arguments"), weatherParameters);
  }
  // The stream helper reassembles the call from deltas.
  const runner = client.chat.completions.stream({
    model,
    messages: [{ role: "user", content: "Is it cold in Oslo?" }],
    tools,
    tool_choice: "required",
    parallel_tool_calls: false,
    temperature: 0,
    max_tokens: 128,
  });
  const final = await runner.finalChatCompletion();
  assert.equal(final.choices[0].finish_reason, "tool_calls");
  const streamed = final.choices[0].message.tool_calls[0];
  assert.equal(streamed.function.name, "get_weather");
  validate(parseObject(streamed.function.arguments, "streamed arguments"), weatherParameters);
});

test("responses.create: streamed equals non-streamed", async () => {
  const options = { model, input: "Say hello.", temperature: 0, max_output_tokens: 96 };
  const whole = await client.responses.create(options);
  assert.match(whole.id, /^resp_/);
  assert.equal(whole.object, "response");
  assert.equal(whole.status, "completed", `pick a prompt the model finishes: ${whole.output_text}`);
  assert.equal(typeof whole.output_text, "string");
  const stream = await client.responses.create({ ...options, stream: true });
  const events = [];
  for await (const event of stream) events.push(event);
  const types = events.map((e) => e.type);
  assert.deepEqual(squeeze(types), [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
  ]);
  assert.deepEqual(events.map((e) => e.sequence_number), events.map((_, i) => i));
  const text = events.filter((e) => e.type === "response.output_text.delta").map((e) => e.delta).join("");
  const final = events.at(-1).response;
  assert.equal(final.id, events[0].response.id);
  assert.equal(text, whole.output_text);
  assert.deepEqual(shape(final), shape(whole));
});

test("responses: previous_response_id chain", async () => {
  const base = { model, temperature: 0 };
  const first = await client.responses.create({ ...base, input: "My name is Ada and I like owls.", max_output_tokens: 24 });
  const alone = await client.responses.create({ ...base, input: "What is my name?", max_output_tokens: 8 });
  const chained = await client.responses.create({
    ...base,
    input: "What is my name?",
    previous_response_id: first.id,
    max_output_tokens: 8,
  });
  assert.equal(chained.previous_response_id, first.id);
  assert.ok(
    chained.usage.input_tokens >= alone.usage.input_tokens + first.usage.output_tokens,
    `the chained prompt (${chained.usage.input_tokens} tokens) holds the first turn (alone: ${alone.usage.input_tokens}, first reply: ${first.usage.output_tokens})`,
  );
  const stored = await client.responses.retrieve(chained.id);
  assert.equal(stored.id, chained.id);
  assert.equal(stored.previous_response_id, first.id);
  assert.equal(stored.output_text, chained.output_text);
  await client.responses.delete(chained.id);
  await assert.rejects(client.responses.retrieve(chained.id), (err) => {
    assert.ok(err instanceof OpenAI.NotFoundError, String(err));
    return true;
  });
});
