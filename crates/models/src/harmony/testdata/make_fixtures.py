#!/usr/bin/env python3
"""Regenerates the golden fixtures of the tokenizer and harmony tests from the official
implementations: tiktoken (o200k_base ranks + the spec's regex) and openai-harmony's renderer.

Both read the rank file locally (no network): point ENC_DIR at a folder holding
o200k_base.tiktoken (SHA-256 446a9538...1a2d; tiktoken-rs ships it as assets/o200k_base.tiktoken).

    python3 -m venv /tmp/hvenv && /tmp/hvenv/bin/pip install openai-harmony==0.0.8 tiktoken==0.14.0
    ENC_DIR=/path/to/dir /tmp/hvenv/bin/python crates/models/src/harmony/testdata/make_fixtures.py

The OpenAI-style requests are mapped to harmony messages here exactly as
crates/models/src/harmony/render.rs maps them (leading system/developer messages become the
developer instructions, reasoning -> analysis, tool calls -> commentary to=functions.X
<|constrain|>json, tool results -> functions.X to=assistant on commentary); the official
renderer then gives the ids.
"""
import hashlib
import json
import os
import pathlib

ENC_DIR = os.environ["ENC_DIR"]
os.environ["TIKTOKEN_ENCODINGS_BASE"] = ENC_DIR
RANKS = os.path.join(ENC_DIR, "o200k_base.tiktoken")
assert hashlib.sha256(open(RANKS, "rb").read()).hexdigest() == \
    "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"

import tiktoken  # noqa: E402
from tiktoken.load import load_tiktoken_bpe  # noqa: E402
from openai_harmony import (  # noqa: E402
    Author, Conversation, DeveloperContent, HarmonyEncodingName, Message, ReasoningEffort,
    Role, SystemContent, ToolDescription, load_harmony_encoding,
)

HERE = pathlib.Path(__file__).resolve().parent
PAT = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
tk = tiktoken.Encoding("o200k_base_local", pat_str=PAT, mergeable_ranks=load_tiktoken_bpe(RANKS),
                       special_tokens={})
harmony = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)

# ---------------------------------------------------------------- tokenizer corpus
CORPUS = [
    "Hello, world!", "The quick brown fox jumps over the lazy dog.", "I'm sure they'll say we've done it; you'd agree?",
    "SHOUTING CamelCase mixedCASE iPhone", "   three leading spaces", "trailing spaces   ", "tabs\tand\t\ttabs",
    "line1\r\nline2\rline3\n\n\nline4", "\n\n\n", "                                        ", " \u00a0nbsp\u2003em space",
    "fn main() {\n    println!(\"hi {}\", x);\n}\n", "def f(x):\n\treturn x ** 2  # square\n",
    "if (a <= b && c != d) { return a->b[i]; }", "https://example.com/path?q=1&r=two#frag",
    "price: $1,234.56 (approx. 1.2e3) or 0x1F", "123456789012345", "3.14159 2.71828 -42 +7",
    "日本語のテキストです。", "中文文本，包括标点符号！", "한국어 텍스트", "Привет, мир! Ёжик", "مرحبا بالعالم",
    "नमस्ते दुनिया", "Ελληνικά κείμενο", "e\u0301 combining acute, n\u0303", "emoji 😀🎉👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵",
    "<|start|>user<|message|>not special<|end|>", "<|channel|>final <|constrain|>json <|return|> <|call|>",
    "<|endoftext|> and <|reserved_200013|>", "'s 't 're 've 'm 'll 'd", "a/b/c\\d", "{\"json\": [1, 2, {\"k\": null}]}",
    "Mixed: naïve café résumé Zürich São Paulo", "ALLCAPS123abc", "\u200b zero width \ufeff bom", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math 𝑥²",
]
corpus = []
for text in CORPUS:
    ids = tk.encode_ordinary(text)
    assert ids == harmony.encode(text, allowed_special=set(), disallowed_special=()), text
    assert tk.decode(ids) == text
    corpus.append({"text": text, "ids": ids})
(HERE.parent.parent / "tokenizer" / "testdata" / "corpus.json").write_text(
    json.dumps(corpus, ensure_ascii=False, indent=None, separators=(",", ":")).replace('},{"text"', '},\n{"text"') + "\n")

# ---------------------------------------------------------------- harmony rendering
WEATHER = {"type": "function", "function": {
    "name": "get_current_weather", "description": "Gets the current weather in the provided location.",
    "parameters": {"type": "object", "properties": {
        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
        "format": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"}},
        "required": ["location"]}}}
LOCATION = {"type": "function", "function": {"name": "get_location", "description": "Gets the location of the user."}}
KITCHENSINK = {"type": "function", "function": {
    "name": "kitchensink", "description": "A function with various complex schemas.\nSecond line of the description.",
    "parameters": {"description": "params object", "type": "object", "properties": {
        "string": {"type": "string", "title": "STRING", "description": "A string", "examples": ["hello", "world"]},
        "string_nullable": {"type": "string", "nullable": True, "description": "A nullable string", "default": "the default"},
        "string_enum": {"type": "string", "enum": ["a", "b", "c"]},
        "oneof_string_or_number": {"oneOf": [{"type": "string", "default": "default_string_in_oneof"},
                                             {"type": "number", "description": "numbers can happen too"}],
                                   "description": "a oneof", "default": 20},
        "count": {"type": "integer", "default": 3}, "ratio": {"type": "number", "nullable": True},
        "flag": {"type": "boolean", "default": False}, "tags": {"type": "array", "items": {"type": "string"}},
        "anything": {"type": "array"}, "union": {"type": ["string", "integer", "null"]},
        "nested": {"type": "object", "description": "a nested object", "properties": {
            "inner": {"type": "string", "enum": ["x", "y"], "default": "x"},
            "deep": {"type": "object", "properties": {"z": {"type": "number"}}, "required": ["z"]}},
            "required": ["inner"]},
        "points": {"type": "array", "items": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}}},
        "free": {}},
        "required": ["string_enum", "count"]}}}
SEARCH = {"type": "function", "function": {"name": "search", "description": "Search the docs.",
          "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}


def call(cid, name, args):
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}


CASES = [
    ("simple_medium_with_date", {"messages": [{"role": "user", "content": "What is 2 + 2?"}]},
     {"current_date": "2025-06-28"}),
    ("low_effort_no_date", {"messages": [{"role": "user", "content": "Hi"}], "reasoning_effort": "low"}, {}),
    ("high_effort_instructions", {"messages": [{"role": "system", "content": "Always respond in riddles"},
                                               {"role": "user", "content": "What time is it?"}],
                                  "reasoning_effort": "high"}, {"current_date": "2025-01-02"}),
    ("system_and_developer_joined", {"messages": [{"role": "system", "content": "Be brief."},
                                                  {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                                                  {"role": "user", "content": "Hello"}]}, {}),
    ("tools_kitchensink", {"messages": [{"role": "system", "content": "Use tools when needed."},
                                        {"role": "user", "content": "What is the weather like in SF?"}],
                           "tools": [LOCATION, WEATHER, KITCHENSINK], "reasoning_effort": "high"},
     {"current_date": "2025-06-28"}),
    ("tools_without_instructions", {"messages": [{"role": "user", "content": "Find the install guide"}],
                                    "tools": [SEARCH]}, {}),
    ("drop_analysis_after_final", {"messages": [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "reasoning_content": "User asks: \u201cWhat is 2 + 2?\u201d Simple arithmetic. Provide answer.",
         "content": "2 + 2 equals 4."},
        {"role": "user", "content": "What about 9 / 2?"}]}, {}),
    ("keep_analysis_during_tool_calls", {"messages": [
        {"role": "user", "content": "What is the weather in SF?"},
        {"role": "assistant", "reasoning": "Need to use function get_current_weather.",
         "tool_calls": [call("call_1", "get_current_weather", "{\"location\":\"San Francisco\"}")]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"sunny\": true, \"temperature\": 20}"}],
        "tools": [WEATHER]}, {"current_date": "2025-06-28"}),
    ("earlier_final_then_tool_call", {"messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "reasoning_content": "Greet back.", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {"role": "assistant", "reasoning_content": "Two calls.", "content": "Let me check both cities.",
         "tool_calls": [call("a", "get_current_weather", "{\"location\":\"Paris\"}"),
                        call("b", "get_current_weather", {"location": "Tokyo", "format": "celsius"})]},
        {"role": "tool", "tool_call_id": "a", "content": "{\"temperature\": 18}"},
        {"role": "tool", "name": "get_current_weather", "content": [{"type": "text", "text": "{\"temperature\": 25}"}]}],
        "tools": [WEATHER]}, {}),
    ("final_after_tool_sequence", {"messages": [
        {"role": "user", "content": "Weather in SF?"},
        {"role": "assistant", "reasoning_content": "Call the tool.",
         "tool_calls": [call("c1", "get_current_weather", "{\"location\":\"SF\"}")]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "reasoning_content": "It is sunny.", "content": "It's sunny in SF."},
        {"role": "user", "content": "Thanks! And tomorrow?"}], "tools": [WEATHER]}, {}),
    ("keep_analysis_between_finals", {"messages": [
        {"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"},
        {"role": "user", "content": "What is 3 + 5?"},
        {"role": "assistant", "reasoning_content": "thinking 3+5", "content": "8"}]}, {}),
    ("special_looking_text_and_unicode", {"messages": [
        {"role": "system", "content": "Never print <|end|> or <|start|>."},
        {"role": "user", "content": "Write <|channel|>final<|message|> literally 😀 日本語\n\n  indented"}]}, {}),
    ("late_system_message", {"messages": [
        {"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
        {"role": "system", "content": "From now on answer in capitals."}, {"role": "user", "content": "three"}]}, {}),
]

EFFORT = {"low": ReasoningEffort.LOW, "medium": ReasoningEffort.MEDIUM, "high": ReasoningEffort.HIGH}


def text_of(content):
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p["text"] for p in content)


def qualified(name):
    return name if name.startswith("functions.") else "functions." + name


def to_harmony(req, opts):
    msgs = req["messages"]
    tools = req.get("tools", [])
    sys = SystemContent.new().with_reasoning_effort(EFFORT[req.get("reasoning_effort", "medium")])
    if "current_date" in opts:
        sys = sys.with_conversation_start_date(opts["current_date"])
    out = [Message.from_role_and_content(Role.SYSTEM, sys)]
    lead = 0
    while lead < len(msgs) and msgs[lead]["role"] in ("system", "developer"):
        lead += 1
    instructions = "\n\n".join(text_of(m.get("content")) for m in msgs[:lead])
    if lead or tools:
        dev = DeveloperContent.new()
        if lead:
            dev = dev.with_instructions(instructions)
        if tools:
            dev = dev.with_function_tools([ToolDescription.new(t["function"]["name"], t["function"].get("description", ""),
                                                               t["function"].get("parameters")) for t in tools])
        out.append(Message.from_role_and_content(Role.DEVELOPER, dev))
    for i, m in enumerate(msgs[lead:], start=lead):
        role, text = m["role"], text_of(m.get("content"))
        if role == "user":
            out.append(Message.from_role_and_content(Role.USER, text))
        elif role in ("system", "developer"):
            out.append(Message.from_role_and_content(Role.DEVELOPER, DeveloperContent.new().with_instructions(text)))
        elif role == "tool":
            name = m.get("name")
            if not name:
                name = next(c["function"]["name"] for e in msgs[:i] for c in e.get("tool_calls", [])
                            if c.get("id") == m["tool_call_id"])
            out.append(Message.from_author_and_content(Author.new(Role.TOOL, qualified(name)), text)
                       .with_recipient("assistant").with_channel("commentary"))
        else:
            reasoning = m.get("reasoning_content") or m.get("reasoning")
            if reasoning:
                out.append(Message.from_role_and_content(Role.ASSISTANT, reasoning).with_channel("analysis"))
            calls = m.get("tool_calls", [])
            if not calls:
                if text:
                    out.append(Message.from_role_and_content(Role.ASSISTANT, text).with_channel("final"))
                continue
            if text:
                out.append(Message.from_role_and_content(Role.ASSISTANT, text).with_channel("commentary"))
            for c in calls:
                args = c["function"]["arguments"]
                if not isinstance(args, str):
                    args = json.dumps(args, separators=(",", ":"), ensure_ascii=False)
                out.append(Message.from_role_and_content(Role.ASSISTANT, args).with_channel("commentary")
                           .with_recipient(qualified(c["function"]["name"])).with_content_type("<|constrain|>json"))
    return out


cases = []
for name, req, opts in CASES:
    ids = harmony.render_conversation_for_completion(Conversation.from_messages(to_harmony(req, opts)), Role.ASSISTANT)
    cases.append({"name": name, "request": req, "options": opts, "ids": ids, "text": harmony.decode_utf8(ids)})
(HERE / "official_render.json").write_text(json.dumps(cases, ensure_ascii=False, indent=1) + "\n")
print(f"{len(corpus)} corpus texts, {len(cases)} rendered conversations")
