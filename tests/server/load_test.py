"""Load test: 64 concurrent streaming clients against `gptoss serve` (GPTOSS_URL, loopback),
greedy. Every stream must complete and equal the same request's output run alone
(non-batched): same token ids (the `return_token_ids` extension), text and ending; none lost. Prints TTFT and total latency percentiles. Bounded: 8 distinct
prompts x 8 copies, 16 new tokens each, 300 s overall."""

import asyncio
import os
import sys
import time

import openai

URL = os.environ["GPTOSS_URL"]
CLIENTS = 64
PROMPTS = [f"Tell me fact number {i} about the sea." for i in range(8)]
MAX_TOKENS = 16


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def alone(c, prompt):
    r = await c.chat.completions.create(
        model="m", messages=[{"role": "user", "content": prompt}],
        max_tokens=MAX_TOKENS, temperature=0, extra_body={"return_token_ids": True})
    m = r.choices[0].message
    return ((getattr(m, "reasoning_content", None) or ""), m.content or "",
            r.choices[0].finish_reason, r.usage.completion_tokens, r.choices[0].token_ids)


async def streamed(c, prompt):
    t0 = time.perf_counter()
    ttft = None
    reasoning, content, finish, tokens, ids = "", "", None, None, None
    stream = await c.chat.completions.create(
        model="m", messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS,
        temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"return_token_ids": True})
    async for chunk in stream:
        if ttft is None:
            ttft = time.perf_counter() - t0  # the first chunk comes with the first token
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for ch in chunk.choices:
            r = getattr(ch.delta, "reasoning_content", None) or ""
            t = ch.delta.content or ""
            reasoning += r
            content += t
            finish = ch.finish_reason or finish
            ids = getattr(ch, "token_ids", None) or ids
    total = time.perf_counter() - t0
    return (reasoning, content, finish, tokens, ids), ttft, total


async def main():
    c = openai.AsyncOpenAI(base_url=URL + "/v1", api_key="none", max_retries=0, timeout=300)
    expected = {}
    for p in PROMPTS:  # one at a time: the non-batched reference
        expected[p] = await alone(c, p)
    t0 = time.perf_counter()
    jobs = [streamed(c, PROMPTS[i % len(PROMPTS)]) for i in range(CLIENTS)]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    wall = time.perf_counter() - t0
    ok, ttfts, totals, tokens = 0, [], [], 0
    for i, r in enumerate(results):
        p = PROMPTS[i % len(PROMPTS)]
        if isinstance(r, BaseException):
            print(f"client {i}: {r!r}")
            continue
        got, ttft, total = r
        if got != expected[p] or got[2] is None or len(got[4] or []) != MAX_TOKENS:
            print(f"client {i}: got {got!r}\n   expected {expected[p]!r}")
            continue
        ok += 1
        ttfts.append(ttft)
        totals.append(total)
        tokens += got[3]
    print(f"{ok}/{CLIENTS} streams complete and identical to their non-batched greedy output")
    if ttfts:
        print("TTFT  s: p50 %.3f p90 %.3f p99 %.3f" % (pct(ttfts, 50), pct(ttfts, 90), pct(ttfts, 99)))
        print("total s: p50 %.3f p90 %.3f p99 %.3f" % (pct(totals, 50), pct(totals, 90), pct(totals, 99)))
        print(f"{tokens} tokens in {wall:.2f} s wall: {tokens / wall:.1f} generated tok/s")
    return 0 if ok == CLIENTS else 1


sys.exit(asyncio.run(asyncio.wait_for(main(), 300)))
