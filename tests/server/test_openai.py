"""`gptoss serve` through the official openai package.

Started by crates/cli/tests/serve.rs, which passes the servers' URLs and the expected script
texts in the environment: GPTOSS_CPU_URL (cpu backend, tiny synthetic model, API key
GPTOSS_TEST_KEY), GPTOSS_TOOL_URL and GPTOSS_ANSWER_URL (the "script" backend: reasoning then a
get_weather call, or reasoning then a final answer).
"""

import json
import os
import time

import http.client
import urllib.error
import urllib.parse
import urllib.request

import openai
import pytest

CPU = os.environ["GPTOSS_CPU_URL"]
TOOL = os.environ["GPTOSS_TOOL_URL"]
ANSWER_URL = os.environ["GPTOSS_ANSWER_URL"]
SMALL = os.environ["GPTOSS_SMALL_URL"]  # cpu, --max-batch 1 --queue 1, no key
KEY = os.environ["GPTOSS_TEST_KEY"]
REASONING = os.environ["EXPECT_REASONING"]
ARGS = os.environ["EXPECT_ARGS"]
ANSWER_REASONING = os.environ["EXPECT_ANSWER_REASONING"]
ANSWER = os.environ["EXPECT_ANSWER"]

AUTH = {"Authorization": f"Bearer {KEY}"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["location"],
        },
    },
}
RESP_WEATHER = {"type": "function", **WEATHER["function"]}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


class Resp:
    def __init__(self, status, body, headers=None):
        self.status_code = status
        self.text = body.decode("utf-8", "replace")
        self.headers = headers or {}

    def json(self):
        return json.loads(self.text)


def raw(method, url, json_body=None, content=None, headers=None):
    """A plain HTTP request (stdlib only); returns status and body, errors included."""
    data = content if content is not None else (
        json.dumps(json_body).encode() if json_body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return Resp(r.status, r.read(), r.headers)
    except urllib.error.HTTPError as e:
        return Resp(e.code, e.read(), e.headers)


def post(url, json=None, content=None, headers=None):
    return raw("POST", url, json_body=json, content=content, headers=headers)


def get(url, headers=None):
    return raw("GET", url, headers=headers)


def client(url, key=KEY):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)


def model_id(url):
    return client(url).models.list().data[0].id


def no_markup(*texts):
    for t in texts:
        assert t is None or "<|" not in t, t


# ---------------------------------------------------------------- cpu: plain API behaviour


def test_models_lists_the_served_model():
    models = client(CPU).models.list().data
    assert len(models) == 1
    assert models[0].object == "model" and models[0].id


def test_chat_plain_and_streamed_agree():
    c = client(CPU)
    mid = model_id(CPU)
    r = c.chat.completions.create(model=mid, messages=ASK, max_tokens=12, temperature=0)
    ch = r.choices[0]
    assert ch.finish_reason in ("length", "stop")
    assert 0 < r.usage.completion_tokens <= 12
    n = post(CPU + "/tokenize", json={"messages": ASK}, headers=AUTH).json()["count"]
    assert r.usage.prompt_tokens == n
    reasoning = getattr(ch.message, "reasoning_content", None) or ""
    no_markup(ch.message.content, reasoning)

    content, sreasoning, finish, usage = "", "", None, None
    for chunk in c.chat.completions.create(
        model=mid, messages=ASK, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            content += choice.delta.content or ""
            sreasoning += getattr(choice.delta, "reasoning_content", None) or ""
            finish = choice.finish_reason or finish
    assert content == (ch.message.content or "")
    assert sreasoning == reasoning
    assert finish == ch.finish_reason
    assert usage is not None and usage.completion_tokens == r.usage.completion_tokens


def test_responses_plain_and_streamed_agree():
    c = client(CPU)
    mid = model_id(CPU)
    r = c.responses.create(model=mid, input="Say hello", max_output_tokens=12, temperature=0)
    assert r.usage.output_tokens > 0 and r.usage.input_tokens > 0
    text = r.output_text
    no_markup(text)
    types, deltas, done = [], "", None
    for ev in c.responses.create(
        model=mid, input="Say hello", max_output_tokens=12, temperature=0, stream=True
    ):
        types.append(ev.type)
        if ev.type == "response.output_text.delta":
            deltas += ev.delta
        if ev.type in ("response.completed", "response.incomplete"):
            done = ev.response
    assert types[0] == "response.created"
    assert types[-1] in ("response.completed", "response.incomplete")
    assert deltas == text
    assert done.usage.output_tokens == r.usage.output_tokens


def test_tokenize_and_detokenize_round_trip():
    t = post(CPU + "/tokenize", json={"prompt": "Hello world"}, headers=AUTH).json()
    assert t["count"] == len(t["tokens"]) == 2
    d = post(CPU + "/detokenize", json={"tokens": t["tokens"]}, headers=AUTH).json()
    assert d["prompt"] == "Hello world"
    bad = post(CPU + "/detokenize", json={"tokens": [999999999]}, headers=AUTH)
    assert bad.status_code == 400


def open_stream(url, max_tokens):
    """Starts a streamed chat and reads its first chunk (the engine is working on it)."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=json.dumps({
        "messages": ASK, "max_tokens": max_tokens, "stream": True, "temperature": 0,
    }), headers={"Content-Type": "application/json", **AUTH})
    r = conn.getresponse()
    assert r.status == 200
    assert r.readline().startswith(b"data: {")
    return conn


def test_queue_full_is_429_with_retry_after_and_serving_goes_on():
    busy = open_stream(SMALL, 1900)  # the only slot (--max-batch 1)
    u = urllib.parse.urlparse(SMALL)
    waiting = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    waiting.request("POST", "/v1/chat/completions", body=json.dumps({
        "messages": ASK, "max_tokens": 2, "temperature": 0}),
        headers={"Content-Type": "application/json"})
    deadline = time.time() + 10
    while "gptoss_queue_depth{model" not in (m := get(SMALL + "/metrics").text) or \
            float([l for l in m.splitlines() if l.startswith("gptoss_queue_depth{")][0].split()[-1]) < 1:
        assert time.time() < deadline, "the second request never queued"
        time.sleep(0.05)
    r = post(SMALL + "/v1/chat/completions", json={"messages": ASK, "max_tokens": 2})
    e = error_of(r, 429)
    assert e["type"] == "rate_limit_error"
    assert int(r.headers["Retry-After"]) >= 1
    busy.close()  # frees the slot: the queued request runs
    assert waiting.getresponse().status == 200
    waiting.close()
    ok = client(SMALL, key="none").chat.completions.create(
        model="m", messages=ASK, max_tokens=2, temperature=0)
    assert ok.usage.completion_tokens == 2


def test_metrics_are_prometheus_text():
    m = get(CPU + "/metrics", headers=AUTH)
    assert m.status_code == 200
    for name in ("gptoss_queue_depth", "gptoss_running_requests",
                 "gptoss_generation_tokens_per_second",
                 "gptoss_time_to_first_token_seconds_sum", "gptoss_kv_cache_usage_ratio",
                 "gptoss_kv_cache_pages_used", "gptoss_kv_cache_pages_reserved",
                 "gptoss_kv_cache_pages_total", "gptoss_engine_steps_total"):
        assert f"\n{name}{{" in m.text or m.text.startswith(name), name
    total = [l for l in m.text.splitlines() if l.startswith("gptoss_requests_total")]
    assert float(total[0].split()[-1]) >= 1
    # --max-context 2048 x --max-batch 64, capped at 65536 positions, in pages of 16.
    assert metric("gptoss_kv_cache_pages_total") == 65536 / 16


# ---------------------------------------------------------------- cpu: errors


def error_of(resp, status):
    assert resp.status_code == status, resp.text
    e = resp.json()["error"]
    assert e["message"] and e["type"]
    assert set(e) >= {"message", "type", "param", "code"}
    return e


def test_malformed_json_is_400():
    r = post(CPU + "/v1/chat/completions", content=b'{"messages": [', headers=AUTH)
    assert error_of(r, 400)["code"] == "invalid_json"


def test_wrong_types_are_400():
    c = client(CPU)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="m", messages="hello")
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="m", messages=ASK, temperature="hot")
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="m", messages=ASK, temperature=-1)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="m", messages=ASK, n=2)
    with pytest.raises(openai.BadRequestError):
        c.responses.create(model="m", input=[{"type": "bogus"}])
    r = post(CPU + "/v1/responses", json={"input": 5}, headers=AUTH)
    error_of(r, 400)


def test_oversized_body_is_413():
    big = {"messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}
    r = post(CPU + "/v1/chat/completions", json=big, headers=AUTH)
    error_of(r, 413)


def test_wrong_api_key_is_401():
    with pytest.raises(openai.AuthenticationError):
        client(CPU, key="wrong").models.list()
    r = post(CPU + "/v1/chat/completions", json={"messages": ASK})
    error_of(r, 401)
    assert get(CPU + "/health").status_code == 200  # health needs no key


def test_prompt_over_the_context_is_400_and_serving_goes_on():
    c = client(CPU)
    long = [{"role": "user", "content": "hello " * 3000}]
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="m", messages=long, max_tokens=4)
    assert "context" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="m", messages=ASK, max_tokens=100000)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="m", messages=ASK, max_tokens=2**64 - 1)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="m", messages=ASK, max_tokens=2**70)
    r = c.chat.completions.create(model="m", messages=ASK, max_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3


def test_unknown_route_is_404():
    error_of(get(CPU + "/v1/nothing", headers=AUTH), 404)


def metric(name):
    m = get(CPU + "/metrics", headers=AUTH).text
    return float([l for l in m.splitlines() if l.startswith(name + "{")][0].split()[-1])


def test_disconnected_stream_is_cancelled():
    before = metric("gptoss_generation_tokens_total")
    conn = open_stream(CPU, 1900)
    # Running: its prompt + 1900 positions are set aside in the paged KV cache.
    assert metric("gptoss_kv_cache_pages_reserved") >= 1900 / 16
    conn.close()
    deadline = time.time() + 30
    while metric("gptoss_running_requests") != 0:
        assert time.time() < deadline, "the engine kept generating for a client that left"
        time.sleep(0.1)
    generated = metric("gptoss_generation_tokens_total") - before
    assert 1 <= generated < 1900, generated
    # Its pages went back.
    assert metric("gptoss_kv_cache_pages_reserved") == 0
    assert metric("gptoss_kv_cache_pages_used") == 0
    assert metric("gptoss_kv_cache_usage_ratio") == 0


# ---------------------------------------------------------------- script: harmony mapping


def test_chat_tool_call_plain():
    r = client(TOOL).chat.completions.create(model="m", messages=ASK, tools=[WEATHER])
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls"
    assert ch.message.reasoning_content == REASONING
    assert not ch.message.content
    (call,) = ch.message.tool_calls
    assert call.id and call.type == "function"
    assert call.function.name == "get_weather"
    assert call.function.arguments == ARGS
    assert json.loads(call.function.arguments)["location"] == "Paris, France"


def test_chat_tool_call_streamed():
    reasoning, content, calls, finish = "", "", {}, None
    for chunk in client(TOOL).chat.completions.create(
        model="m", messages=ASK, tools=[WEATHER], stream=True
    ):
        for ch in chunk.choices:
            d = ch.delta
            reasoning += getattr(d, "reasoning_content", None) or ""
            content += d.content or ""
            for tc in d.tool_calls or []:
                c = calls.setdefault(tc.index, {"id": None, "name": "", "args": ""})
                c["id"] = tc.id or c["id"]
                c["name"] += (tc.function.name or "") if tc.function else ""
                c["args"] += (tc.function.arguments or "") if tc.function else ""
            finish = ch.finish_reason or finish
    assert reasoning == REASONING
    assert content == ""
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["id"] and calls[0]["name"] == "get_weather" and calls[0]["args"] == ARGS


def follow_up():
    return ASK + [
        {"role": "assistant", "content": None, "reasoning_content": REASONING,
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": ARGS}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21, "sky": "sunny"}'},
    ]


def test_reasoning_sent_back_reaches_the_prompt():
    with_reasoning = post(CPU + "/tokenize", json={"messages": follow_up()}, headers=AUTH).json()
    plain = follow_up()
    del plain[1]["reasoning_content"]
    without = post(CPU + "/tokenize", json={"messages": plain}, headers=AUTH).json()
    assert with_reasoning["count"] > without["count"]
    text = post(CPU + "/detokenize", json={"tokens": with_reasoning["tokens"]}, headers=AUTH).json()
    assert REASONING in text["prompt"]


def test_chat_answer_after_tool_result_plain_and_streamed():
    c = client(ANSWER_URL)
    r = c.chat.completions.create(model="m", messages=follow_up(), tools=[WEATHER])
    m = r.choices[0].message
    assert r.choices[0].finish_reason == "stop"
    assert m.content == ANSWER and m.reasoning_content == ANSWER_REASONING
    assert not m.tool_calls
    content, reasoning = "", ""
    for chunk in c.chat.completions.create(
        model="m", messages=follow_up(), tools=[WEATHER], stream=True
    ):
        for ch in chunk.choices:
            content += ch.delta.content or ""
            reasoning += getattr(ch.delta, "reasoning_content", None) or ""
    assert content == ANSWER and reasoning == ANSWER_REASONING


def test_stop_strings_cut_the_answer_in_both_modes():
    c = client(ANSWER_URL)
    cut = ANSWER.split(" sunny")[0]
    r = c.chat.completions.create(model="m", messages=follow_up(), stop=[" sunny"])
    assert r.choices[0].message.content == cut
    assert r.choices[0].finish_reason == "stop"
    text = ""
    for chunk in c.chat.completions.create(model="m", messages=follow_up(), stop=" sunny",
                                           stream=True):
        for ch in chunk.choices:
            text += ch.delta.content or ""
    assert text == cut


def test_max_tokens_cuts_with_length():
    r = client(ANSWER_URL).chat.completions.create(model="m", messages=follow_up(), max_tokens=3)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3
    r = client(ANSWER_URL).responses.create(model="m", input="hi", max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"


def test_responses_tool_call_plain_and_streamed():
    c = client(TOOL)
    r = c.responses.create(model="m", input="Weather in Paris?", tools=[RESP_WEATHER],
                           reasoning={"effort": "low"})
    kinds = [o.type for o in r.output]
    assert kinds == ["reasoning", "function_call"]
    assert r.output[0].content[0].text == REASONING
    fc = r.output[1]
    assert fc.name == "get_weather" and fc.arguments == ARGS and fc.call_id
    assert r.output_text == ""

    types, reasoning, args, done_args, final = [], "", "", None, None
    for ev in c.responses.create(model="m", input="Weather in Paris?", tools=[RESP_WEATHER],
                                 stream=True):
        types.append(ev.type)
        if ev.type == "response.reasoning_text.delta":
            reasoning += ev.delta
        elif ev.type == "response.function_call_arguments.delta":
            args += ev.delta
        elif ev.type == "response.function_call_arguments.done":
            done_args = ev.arguments
        elif ev.type == "response.completed":
            final = ev.response
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "response.output_item.added" in types and "response.output_item.done" in types
    assert reasoning == REASONING and args == ARGS and done_args == ARGS
    assert final.usage.output_tokens > 0
    assert [o.type for o in final.output] == ["reasoning", "function_call"]


def test_responses_answer_after_function_output_plain_and_streamed():
    c = client(ANSWER_URL)
    items = [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "call_9", "name": "get_weather", "arguments": ARGS},
        {"type": "function_call_output", "call_id": "call_9", "output": '{"temp": 21}'},
    ]
    r = c.responses.create(model="m", input=items, tools=[RESP_WEATHER],
                           instructions="Answer briefly.")
    assert r.output_text == ANSWER
    assert r.output[0].type == "reasoning" and r.output[0].content[0].text == ANSWER_REASONING
    assert r.status == "completed"
    text = ""
    for ev in c.responses.create(model="m", input=items, tools=[RESP_WEATHER], stream=True):
        if ev.type == "response.output_text.delta":
            text += ev.delta
    assert text == ANSWER
    # previous_response_id continues a stored conversation; an unknown one is a 404.
    again = c.responses.create(model="m", input="Thanks! And tomorrow?", previous_response_id=r.id,
                               tools=[RESP_WEATHER])
    assert again.output_text == ANSWER
    fresh = c.responses.create(model="m", input="Thanks! And tomorrow?", tools=[RESP_WEATHER])
    # The stored conversation (question, call, result, answer) is in the prompt.
    assert again.usage.input_tokens > fresh.usage.input_tokens + 40
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model="m", input="hi", previous_response_id="resp_missing")


# ---------------------------------------------------------------- script: tool_choice enforced
# "required" and a named function constrain decoding to a call (crates/server/src/tool_choice.rs).
# On the tool server the script's own call is allowed and passes unchanged; on the answer server
# the script wants a final answer, and the constraint turns the message after the reasoning into
# a call instead (whose arguments are whatever the scripted model writes then).

TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current local time in a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}
RESP_TIME = {"type": "function", **TIME["function"]}


def chat_named(name):
    return {"type": "function", "function": {"name": name}}


def resp_named(name):
    return {"type": "function", "name": name}


def chat_reply(url, stream, **kw):
    """One chat completion, plain or streamed: (reasoning, content, [(name, args)], finish)."""
    c = client(url)
    if not stream:
        ch = c.chat.completions.create(model="m", messages=ASK, **kw).choices[0]
        m = ch.message
        calls = [(t.function.name, t.function.arguments) for t in m.tool_calls or []]
        assert all(t.id for t in m.tool_calls or [])
        return (getattr(m, "reasoning_content", None) or "", m.content or "", calls,
                ch.finish_reason)
    reasoning, content, calls, finish = "", "", {}, None
    for chunk in c.chat.completions.create(model="m", messages=ASK, stream=True, **kw):
        for ch in chunk.choices:
            d = ch.delta
            reasoning += getattr(d, "reasoning_content", None) or ""
            content += d.content or ""
            for tc in d.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": None, "name": "", "args": ""})
                call["id"] = tc.id or call["id"]
                call["name"] += (tc.function.name or "") if tc.function else ""
                call["args"] += (tc.function.arguments or "") if tc.function else ""
            finish = ch.finish_reason or finish
    assert list(calls) == list(range(len(calls)))
    assert all(c["id"] for c in calls.values())
    return reasoning, content, [(c["name"], c["args"]) for c in calls.values()], finish


def resp_reply(url, stream, **kw):
    """One response, plain or streamed: (output item types, reasoning, text, [(name, args)])."""
    c = client(url)
    if not stream:
        r = c.responses.create(model="m", input="Weather in Paris?", **kw)
        assert r.status == "completed"
    else:
        r, args, done_args = None, "", []
        for ev in c.responses.create(model="m", input="Weather in Paris?", stream=True, **kw):
            if ev.type == "response.function_call_arguments.delta":
                args += ev.delta
            elif ev.type == "response.function_call_arguments.done":
                done_args.append(ev.arguments)
            elif ev.type in ("response.completed", "response.incomplete"):
                r = ev.response
        assert r is not None and r.status == "completed"
        assert done_args == [args] == [o.arguments for o in r.output if o.type == "function_call"]
    reasoning = "".join(p.text for o in r.output if o.type == "reasoning" for p in o.content)
    calls = [(o.name, o.arguments) for o in r.output if o.type == "function_call"]
    assert all(o.call_id for o in r.output if o.type == "function_call")
    return [o.type for o in r.output], reasoning, r.output_text, calls


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("choice", ["required", chat_named("get_weather")])
def test_chat_tool_choice_keeps_the_models_own_call(stream, choice):
    got = chat_reply(TOOL, stream, tools=[TIME, WEATHER], tool_choice=choice)
    assert got == (REASONING, "", [("get_weather", ARGS)], "tool_calls")


@pytest.mark.parametrize("stream", [False, True])
def test_chat_named_tool_choice_overrides_the_models_pick(stream):
    reasoning, content, calls, finish = chat_reply(
        TOOL, stream, tools=[WEATHER, TIME], tool_choice=chat_named("get_time"),
        temperature=0, max_tokens=100)
    assert reasoning == REASONING and content == ""
    assert [name for name, _ in calls] == ["get_time"]
    assert finish == "tool_calls"


def test_chat_tool_choice_forces_a_call_on_a_model_that_answers():
    # The same request with "auto" gets the scripted answer and no call.
    kw = dict(tools=[WEATHER], temperature=0, max_tokens=100)
    assert chat_reply(ANSWER_URL, False, tool_choice="auto", **kw) == (
        ANSWER_REASONING, ANSWER, [], "stop")
    for choice in ["required", chat_named("get_weather")]:
        plain = chat_reply(ANSWER_URL, False, tool_choice=choice, **kw)
        reasoning, content, calls, finish = plain
        assert reasoning == ANSWER_REASONING
        assert content == ""
        assert [name for name, _ in calls] == ["get_weather"]
        assert calls[0][1] and "<|" not in calls[0][1]
        assert finish == "tool_calls"
        # Streamed: the same call, the same arguments (greedy).
        assert chat_reply(ANSWER_URL, True, tool_choice=choice, **kw) == plain


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("choice", ["required", resp_named("get_weather")])
def test_responses_tool_choice_keeps_the_models_own_call(stream, choice):
    got = resp_reply(TOOL, stream, tools=[RESP_TIME, RESP_WEATHER], tool_choice=choice)
    assert got == (["reasoning", "function_call"], REASONING, "", [("get_weather", ARGS)])


@pytest.mark.parametrize("stream", [False, True])
def test_responses_named_tool_choice_overrides_the_models_pick(stream):
    kinds, reasoning, text, calls = resp_reply(
        TOOL, stream, tools=[RESP_WEATHER, RESP_TIME], tool_choice=resp_named("get_time"),
        temperature=0, max_output_tokens=100)
    assert kinds == ["reasoning", "function_call"]
    assert reasoning == REASONING and text == ""
    assert [name for name, _ in calls] == ["get_time"]


def test_responses_tool_choice_forces_a_call_on_a_model_that_answers():
    kw = dict(tools=[RESP_WEATHER], temperature=0, max_output_tokens=100)
    kinds, _, text, calls = resp_reply(ANSWER_URL, False, tool_choice="auto", **kw)
    assert kinds == ["reasoning", "message"] and text == ANSWER and calls == []
    for choice in ["required", resp_named("get_weather")]:
        plain = resp_reply(ANSWER_URL, False, tool_choice=choice, **kw)
        kinds, reasoning, text, calls = plain
        assert kinds == ["reasoning", "function_call"]
        assert reasoning == ANSWER_REASONING and text == ""
        assert [name for name, _ in calls] == ["get_weather"]
        assert calls[0][1] and "<|" not in calls[0][1]
        assert resp_reply(ANSWER_URL, True, tool_choice=choice, **kw) == plain


@pytest.mark.parametrize("stream", [False, True])
def test_responses_echo_the_requests_tools_and_tool_choice(stream):
    c = client(TOOL)
    kw = dict(model="m", input="Weather in Paris?", tools=[RESP_WEATHER],
              tool_choice=resp_named("get_weather"))
    if stream:
        r = [ev.response for ev in c.responses.create(stream=True, **kw)
             if ev.type == "response.completed"][0]
    else:
        r = c.responses.create(**kw)
    assert [t.name for t in r.tools] == ["get_weather"]
    assert r.tool_choice.type == "function" and r.tool_choice.name == "get_weather"
    r = c.responses.create(model="m", input="Weather in Paris?")
    assert r.tool_choice == "auto" and r.tools == []
