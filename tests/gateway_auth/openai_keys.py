#!/usr/bin/env python3
"""Drives an infermq gateway with API keys through the `openai` package, unchanged: the key is
the client's `api_key` (sent as `Authorization: Bearer <key>`), against the toy decoder
`storyteller` and the classifier `iris`.

Usage: openai_keys.py --url 127.0.0.1:8000 --key K --iris-only-key K2 --tokens-key K3
  K: may use storyteller and iris; K2: iris only; K3: storyteller, tokens_per_minute = 5.
Exit status 0 when every check passed; each failure is printed and makes it 1.
"""
import argparse
import sys

import openai

failures = []


def check(condition, what):
    print(("ok   " if condition else "FAIL ") + what)
    if not condition:
        failures.append(what)


def raised(call, error_class, status, code=None, kind=None):
    """The API error a call raises: its class, status, and the error's code and type."""
    try:
        call()
    except openai.APIStatusError as e:
        error = e.body if isinstance(e.body, dict) else {}
        ok = isinstance(e, error_class) and e.status_code == status
        ok = ok and (code is None or error.get("code") == code)
        ok = ok and (kind is None or error.get("type") == kind)
        return ok, f"{type(e).__name__} {e.status_code} {error}", e
    return False, "no error", None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--iris-only-key", required=True)
    parser.add_argument("--tokens-key", required=True)
    args = parser.parse_args()

    def client(key):
        return openai.OpenAI(base_url=f"http://{args.url}/v1", api_key=key, max_retries=0)

    team = client(args.key)
    models = [m.id for m in team.models.list()]
    check(models == ["storyteller"], f"models.list with a key: {models}")
    answer = team.completions.create(model="storyteller", prompt="And God said", max_tokens=4)
    check(
        answer.usage.completion_tokens == 4 and len(answer.choices[0].text) > 0,
        f"a completion with a key: {answer.choices[0].text!r} {answer.usage}",
    )
    chat = team.chat.completions.create(
        model="storyteller",
        max_tokens=3,
        messages=[{"role": "user", "content": "Who made the light?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(chat)
    check(chunks[-1].usage.completion_tokens == 3, f"a streamed chat with a key: {chunks[-1].usage}")

    ok, seen, _ = raised(
        lambda: client("sk-not-a-key").models.list(),
        openai.AuthenticationError,
        401,
        code="invalid_api_key",
    )
    check(ok, f"an unknown key: {seen}")
    ok, seen, _ = raised(
        lambda: client("sk-not-a-key").completions.create(model="storyteller", prompt="x", max_tokens=1),
        openai.AuthenticationError,
        401,
    )
    check(ok, f"an unknown key, completions: {seen}")

    iris_only = client(args.iris_only_key)
    check([m.id for m in iris_only.models.list()] == [], "models.list lists only the key's models")
    ok, seen, _ = raised(
        lambda: iris_only.completions.create(model="storyteller", prompt="x", max_tokens=1),
        openai.PermissionDeniedError,
        403,
        code="permission_denied",
    )
    check(ok, f"a model the key may not use: {seen}")
    ok, seen, _ = raised(
        lambda: iris_only.models.retrieve("storyteller"), openai.PermissionDeniedError, 403
    )
    check(ok, f"models.retrieve of a model the key may not use: {seen}")

    few = client(args.tokens_key)
    first = few.completions.create(model="storyteller", prompt="And God said", max_tokens=4)
    check(first.usage.total_tokens > 5, f"the first generation is admitted: {first.usage}")
    ok, seen, error = raised(
        lambda: few.completions.create(model="storyteller", prompt="And", max_tokens=1),
        openai.RateLimitError,
        429,
        code="rate_limit_exceeded",
        kind="tokens",
    )
    check(ok, f"over tokens_per_minute: {seen}")
    retry = error.response.headers.get("retry-after") if error else None
    check(retry is not None and int(retry) >= 1, f"Retry-After: {retry}")

    if failures:
        print(f"{len(failures)} openai key checks failed")
        sys.exit(1)
    print("all openai key checks passed")


if __name__ == "__main__":
    main()
