"""The official `openai` client (and plain HTTP for what it cannot send) against `lf-trainer serve`.

Usage: serve_openai.py BASE_URL MODEL [MODEL ...]   (the served ids: the base first, then adapters)

Checks, asserting as it goes: /health and /v1/models; greedy chat and text completions per model,
whole and streamed (chunks in OpenAI's shape, `[DONE]`, usage when asked) and equal; the guide's
/generate with exactly its fields; OpenAI-style 400s (malformed JSON, unknown model, max_tokens
beyond the context, empty messages, n = 2); 12 concurrent greedy streams over the models, each
equal to its single-request answer; a client that leaves mid-stream frees its sequence
(/metrics: running back to 0, one more cancelled sequence). Prints a JSON summary on stdout: the
greedy chat answer and its token count per model, for the caller to compare with `lf-trainer chat`,
and the greedy text completion per model, to compare with transformers (serve_hf_greedy.py).
"""
import json
import re
import sys
import threading
import time
import urllib.error
import urllib.request

import openai

BASE, MODELS = sys.argv[1], sys.argv[2:]
PROMPT = "tell me about the cat"
MAX = 8
client = openai.OpenAI(base_url=BASE + "/v1", api_key="unused", max_retries=0, timeout=120)


def http(method, path, body=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(BASE + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def wait_ready():
    deadline = time.monotonic() + 120  # a bound for a hang, not a speed target
    while time.monotonic() < deadline:
        try:
            status, body, _ = http("GET", "/health")
            if status == 200:
                health = json.loads(body)
                assert health == {"status": "healthy", "model_loaded": True}, health
                return
            assert set(json.loads(body)) == {"status", "model_loaded"}, body
        except urllib.error.URLError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server never became healthy")


def metric(name, labels=""):
    _, text, _ = http("GET", "/metrics")
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def chat(model, prompt=PROMPT, **kw):
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                       temperature=0, max_tokens=MAX, **kw)
    assert r.object == "chat.completion" and len(r.choices) == 1, r
    assert r.choices[0].message.role == "assistant" and r.choices[0].finish_reason in ("stop", "length"), r
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage
    return r.choices[0].message.content, r.usage.completion_tokens


def chat_stream(model, prompt=PROMPT):
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                            temperature=0, max_tokens=MAX, stream=True,
                                            stream_options={"include_usage": True})
    text, finishes, usage = "", [], None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk" and chunk.model == model, chunk
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == [], chunk
            continue
        delta = chunk.choices[0].delta
        text += delta.content or ""
        finishes.append(chunk.choices[0].finish_reason)
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1]), finishes
    assert usage is not None, "no usage chunk though include_usage was asked"
    return text, usage.completion_tokens


def expect_400(fn, code=None, param=None):
    try:
        fn()
    except openai.BadRequestError as e:
        err = e.body if isinstance(e.body, dict) else {}
        assert e.status_code == 400, e
        assert set(err) >= {"message", "type", "param", "code"}, err
        assert code is None or err["code"] == code, err
        assert param is None or err["param"] == param, err
        return
    raise AssertionError("expected a 400")


def main():
    wait_ready()
    listed = [m.id for m in client.models.list().data]
    assert listed == MODELS, listed

    summary = {"completions": {}}
    for model in MODELS:
        text, n = chat(model)
        assert chat_stream(model) == (text, n), (model, chat_stream(model), text, n)
        summary[model] = {"text": text, "completion_tokens": n}
        c = client.completions.create(model=model, prompt=PROMPT, temperature=0, max_tokens=MAX)
        summary["completions"][model] = {"text": c.choices[0].text, "completion_tokens": c.usage.completion_tokens}

    # Text completions, whole and streamed, and the guide's /generate on the same raw prompt (it
    # serves the first adapter, the trained model).
    trained = MODELS[1] if len(MODELS) > 1 else MODELS[0]
    c = client.completions.create(model=trained, prompt=PROMPT, temperature=0, max_tokens=6)
    assert c.object == "text_completion" and c.choices[0].finish_reason in ("stop", "length"), c
    streamed = "".join(ch.choices[0].text for ch in client.completions.create(
        model=trained, prompt=PROMPT, temperature=0, max_tokens=6, stream=True))
    assert streamed == c.choices[0].text, (streamed, c.choices[0].text)
    status, body, _ = http("POST", "/generate", {"prompt": PROMPT, "max_length": c.usage.prompt_tokens + 6,
                                                  "do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 0})
    g = json.loads(body)
    assert status == 200 and set(g) == {"generated_text", "prompt_tokens", "generated_tokens", "total_tokens"}, body
    assert g["generated_text"] == c.choices[0].text and g["generated_tokens"] == c.usage.completion_tokens, (g, c)
    assert g["total_tokens"] == g["prompt_tokens"] + g["generated_tokens"] == c.usage.total_tokens, (g, c.usage)

    # OpenAI-style errors; the server keeps answering after each.
    status, body, _ = http("POST", "/v1/chat/completions", raw=b'{"model": "x", "messages": [')
    err = json.loads(body)["error"]
    assert status == 400 and set(err) == {"message", "type", "param", "code"}, (status, body)
    status, body, _ = http("POST", "/generate", {"prompt": PROMPT, "max_length": 1})
    assert status == 400 and json.loads(body)["error"]["param"] == "max_length", body
    expect_400(lambda: chat("no-such-adapter"), code="model_not_found", param="model")
    expect_400(lambda: client.chat.completions.create(model=MODELS[0], messages=[{"role": "user", "content": PROMPT}],
                                                      max_tokens=10**6), code="context_length_exceeded")
    expect_400(lambda: client.chat.completions.create(model=MODELS[0], messages=[]), param="messages")
    expect_400(lambda: client.chat.completions.create(model=MODELS[0], messages=[{"role": "user", "content": PROMPT}],
                                                      n=2), param="n")
    assert chat(MODELS[0]) == (summary[MODELS[0]]["text"], summary[MODELS[0]]["completion_tokens"])

    # 12 concurrent greedy streams over the models: each equals its answer alone.
    jobs = [(MODELS[i % len(MODELS)], f"{PROMPT} {w}") for i, w in enumerate(
        "dog bird fish tree river stone cloud sun moon star red blue".split())]
    alone = [chat(m, p) for m, p in jobs]
    together = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def run(i):
        barrier.wait()
        together[i] = chat_stream(*jobs[i])
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone, [(j, a, b) for j, a, b in zip(jobs, alone, together) if a != b]

    # A client that leaves mid-stream frees its sequence.
    cancelled = 'lf_serve_sequences_finished_total{reason="cancelled"}'
    before = metric(cancelled)
    generated_before = metric("lf_serve_generated_tokens_total")
    long = 500  # nearly the whole context (512): freed early, not run out
    stream = client.completions.create(model=MODELS[-1], prompt=PROMPT, temperature=0, max_tokens=long, stream=True)
    seen = 0
    for _ in stream:
        seen += 1
        if seen == 3:
            break
    stream.close()
    deadline = time.monotonic() + 60  # a bound for a hang, not a speed target
    while metric(cancelled) < before + 1 or metric("lf_serve_running_sequences") != 0:
        assert time.monotonic() < deadline, "the abandoned sequence was never freed"
        time.sleep(0.05)
    produced = metric("lf_serve_generated_tokens_total") - generated_before
    assert produced < long, f"the abandoned sequence ran to its end ({produced} tokens)"
    summary["_cancelled_after_tokens"] = produced
    status, body, _ = http("GET", "/metrics")
    for name in ["lf_serve_requests_total", "lf_serve_prompt_tokens_total", "lf_serve_time_to_first_token_seconds_bucket",
                 "lf_serve_inter_token_latency_seconds_bucket", "lf_serve_queue_depth", "lf_serve_running_sequences"]:
        assert name in body, f"/metrics lacks {name}"
    assert 'endpoint="/v1/chat/completions",status="400"' in body, "400s are not counted"
    print(json.dumps(summary))


main()
