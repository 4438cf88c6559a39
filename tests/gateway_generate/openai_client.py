#!/usr/bin/env python3
"""Drives an infermq gateway's OpenAI-compatible routes with the `openai` package, unchanged
(base_url = the gateway + "/v1"), against the toy decoder `storyteller` (greedy references in
tests/llm/reference.json), a decoder without a chat template (`plain`) and a model that does
not generate (`iris`).

Usage: openai_client.py --url 127.0.0.1:8000 --reference tests/llm/reference.json
Exit status 0 when every check passed; each failure is printed and makes it 1.
"""
import argparse
import json
import sys

import openai

failures = []


def check(condition, what):
    print(("ok   " if condition else "FAIL ") + what)
    if not condition:
        failures.append(what)


def refused(call, status, param=None, code=None, contains=None):
    """The API error a call raises: its status, and the error's param, code and message."""
    try:
        call()
    except openai.APIStatusError as e:
        error = e.body if isinstance(e.body, dict) else {}
        ok = e.status_code == status
        ok = ok and (param is None or error.get("param") == param)
        ok = ok and (code is None or error.get("code") == code)
        ok = ok and (contains is None or contains in error.get("message", ""))
        return ok, f"{e.status_code} {error}"
    return False, "no error"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--reference", required=True)
    args = parser.parse_args()
    cases = json.load(open(args.reference))["cases"]
    client = openai.OpenAI(base_url=f"http://{args.url}/v1", api_key="unused", max_retries=0)

    models = [m.id for m in client.models.list()]
    check(models == ["plain", "storyteller"], f"models.list: the decoders only {models}")
    model = client.models.retrieve("storyteller")
    check(model.id == "storyteller" and model.owned_by == "infermq", f"models.retrieve {model}")
    ok, seen = refused(lambda: client.models.retrieve("iris"), 404, code="model_not_found")
    check(ok, f"models.retrieve of a model that does not generate: {seen}")

    for case in cases[:2]:
        prompt, expected = case["prompt"], case["text"]
        tokens = len(case["output_ids"])
        answer = client.completions.create(
            model="storyteller", prompt=prompt, max_tokens=case["max_tokens"]
        )
        choice = answer.choices[0]
        check(choice.text == expected, f"completion {prompt!r}: {choice.text!r}")
        check(choice.finish_reason == "stop", f"completion finish_reason (eos): {choice.finish_reason}")
        check(answer.object == "text_completion" and answer.id.startswith("cmpl-"), f"completion id {answer.id}")
        usage = answer.usage
        check(
            usage.completion_tokens == tokens
            and usage.total_tokens == usage.prompt_tokens + tokens
            and usage.prompt_tokens == len(case["prompt_ids"]),
            f"completion usage {usage}",
        )
        chunks = list(
            client.completions.create(
                model="storyteller",
                prompt=prompt,
                max_tokens=case["max_tokens"],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        check(text == expected, f"completion stream {prompt!r}: {text!r}")
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        check(finishes[-1] == "stop" and all(f is None for f in finishes[:-1]), f"stream finish_reason {finishes}")
        check(
            chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == tokens,
            f"stream usage chunk {chunks[-1]}",
        )
        check(len({c.id for c in chunks}) == 1, "one id for every chunk")

    # max_tokens: OpenAI's default of 16 for completions, "length" when reached.
    answer = client.completions.create(model="storyteller", prompt="And")
    check(answer.usage.completion_tokens == 16, f"default max_tokens 16: {answer.usage}")
    check(answer.choices[0].finish_reason == "length", f"length: {answer.choices[0].finish_reason}")
    # A seed makes sampling repeat; stop strings end the text before them.
    sampled = [
        client.completions.create(model="storyteller", prompt="And", max_tokens=12, temperature=1.0, seed=-7)
        .choices[0]
        .text
        for _ in range(2)
    ]
    check(sampled[0] == sampled[1], f"seeded sampling repeats: {sampled}")
    reference = cases[1]
    stopped = client.completions.create(model="storyteller", prompt=reference["prompt"], max_tokens=40, stop=[","])
    check(
        stopped.choices[0].text == reference["text"].split(",")[0] and stopped.choices[0].finish_reason == "stop",
        f"stop: {stopped.choices[0].text!r} {stopped.choices[0].finish_reason}",
    )

    # Chat: the messages rendered with the model's chat template, then generated as a prompt.
    messages = [{"role": "system", "content": "Genesis"}, {"role": "user", "content": "And God said"}]
    rendered = "system: Genesis\nuser: And God said\nassistant:"
    expected = client.completions.create(model="storyteller", prompt=rendered, max_tokens=12).choices[0].text
    chat = client.chat.completions.create(model="storyteller", messages=messages, max_tokens=12)
    message = chat.choices[0].message
    check(message.role == "assistant" and message.content == expected, f"chat: {message.content!r} vs {expected!r}")
    check(chat.object == "chat.completion" and chat.id.startswith("chatcmpl-"), f"chat id {chat.id}")
    check(chat.usage.completion_tokens == 12 and chat.choices[0].finish_reason == "length", f"chat usage {chat.usage}")
    chunks = list(
        client.chat.completions.create(model="storyteller", messages=messages, max_completion_tokens=12, stream=True)
    )
    check(chunks[0].choices[0].delta.role == "assistant", f"chat stream opens with the role: {chunks[0]}")
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    check(content == expected, f"chat stream: {content!r}")
    check(chunks[-1].choices[0].finish_reason == "length", f"chat stream finish: {chunks[-1]}")
    check(chunks[-1].object == "chat.completion.chunk", "chat chunks")

    # Errors, in the API's shape, raised by the client as it raises OpenAI's.
    for what, call, status, param, code, contains in [
        ("n=2", lambda: client.chat.completions.create(model="storyteller", messages=messages, n=2), 400, "n", None, None),
        ("unknown model", lambda: client.completions.create(model="ghost", prompt="x"), 404, None, "model_not_found", "ghost"),
        ("context", lambda: client.completions.create(model="storyteller", prompt="x", max_tokens=1000), 400, "max_tokens", None, "context length"),
        ("top_p", lambda: client.completions.create(model="storyteller", prompt="x", top_p=0), 400, "top_p", None, "top_p"),
        ("no template", lambda: client.chat.completions.create(model="plain", messages=messages), 400, "messages", None, "no chat template"),
        ("image", lambda: client.chat.completions.create(model="storyteller", messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), 400, "messages", None, "text only"),
        ("unknown field", lambda: client.completions.create(model="storyteller", prompt="x", extra_body={"best_effort": True}), 400, "best_effort", None, "Unrecognized"),
        ("stream error", lambda: list(client.completions.create(model="storyteller", prompt="x", max_tokens=1000, stream=True)), 400, "max_tokens", None, None),
    ]:
        ok, seen = refused(call, status, param, code, contains)
        check(ok, f"error {what}: {seen}")

    if failures:
        print(f"{len(failures)} openai checks failed")
        sys.exit(1)
    print("all openai checks passed")


if __name__ == "__main__":
    main()
