"""Total throughput of a running `gptoss serve` at several concurrency levels, with mixed
prompt and output lengths (streaming chat completions). Needs only httpx.

    python3 scripts/serve_throughput.py --url http://127.0.0.1:8000 --concurrency 1,16,64,256

Each level keeps C requests in flight until 2*C (at least 8) have finished. Prompts are
50..1000 words, max_tokens 32..256 (seeded, the same per level). Reports generated tokens/s,
prompt tokens/s, time to first token and request latency percentiles, as JSON lines."""

import argparse
import asyncio
import json
import random
import time

import httpx

WORDS = ("sea river mountain cloud engine token model server batch kernel memory "
         "bandwidth tensor expert router attention window sink cache page").split()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else None


async def one(client, url, prompt, max_tokens, stats):
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    ttft = None
    usage = None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            stats["errors"].append(f"{r.status_code}: {(await r.aread())[:200]!r}")
            return
        # SSE lines end at "\n" only (httpx's aiter_lines also splits at U+2028 and friends,
        # which random tokens do produce inside JSON strings).
        buf = b""
        async for part in r.aiter_bytes():
            buf += part
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8").rstrip("\r")
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if ttft is None and chunk.get("choices"):
                    ttft = time.perf_counter() - t0
                if chunk.get("usage"):
                    usage = chunk["usage"]
    stats["latency"].append(time.perf_counter() - t0)
    if ttft is not None:
        stats["ttft"].append(ttft)
    if usage:
        stats["completion"] += usage["completion_tokens"]
        stats["prompt"] += usage["prompt_tokens"]


async def level(url, c, seed):
    rng = random.Random(seed)
    n = max(2 * c, 8)
    jobs = [(" ".join(rng.choice(WORDS) for _ in range(rng.randint(50, 1000))),
             rng.randint(32, 256)) for _ in range(n)]
    stats = {"latency": [], "ttft": [], "completion": 0, "prompt": 0, "errors": []}
    sem = asyncio.Semaphore(c)
    limits = httpx.Limits(max_connections=c + 8, max_keepalive_connections=c + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def run(job):
            async with sem:
                await one(client, url, job[0], job[1], stats)
        t0 = time.perf_counter()
        await asyncio.gather(*(run(j) for j in jobs))
        wall = time.perf_counter() - t0
    return {
        "concurrency": c,
        "requests": n,
        "errors": len(stats["errors"]),
        "first_error": stats["errors"][0] if stats["errors"] else None,
        "wall_s": round(wall, 2),
        "total_tok_s": round((stats["completion"] + stats["prompt"]) / wall, 1),
        "generated_tok_s": round(stats["completion"] / wall, 1),
        "prompt_tok_s": round(stats["prompt"] / wall, 1),
        "generated_tokens": stats["completion"],
        "ttft_p50_s": pct(stats["ttft"], 50),
        "ttft_p99_s": pct(stats["ttft"], 99),
        "latency_p50_s": pct(stats["latency"], 50),
        "latency_p99_s": pct(stats["latency"], 99),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--concurrency", default="1,16,64,256")
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    for c in [int(x) for x in a.concurrency.split(",")]:
        print(json.dumps(asyncio.run(level(a.url, c, a.seed))), flush=True)


if __name__ == "__main__":
    main()
