"""Governance through the real stack and the openai SDK: keys, tenants, limits, kills, reload, audit."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import openai
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"

HI = [{"role": "user", "content": "hi"}]
STORY = [{"role": "user", "content": "Tell me a long story."}]


def body_of(error: openai.APIStatusError) -> dict[str, object]:
    assert error.response.headers["content-type"].startswith("application/json")
    payload = error.response.json()
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    return payload["error"]


def refused(call, kind: type[openai.APIStatusError]) -> openai.APIStatusError:
    with pytest.raises(kind) as caught:
        call()
    return caught.value


def test_every_bad_key_is_401_invalid_api_key(stack) -> None:
    for name in (None, "expired", "disabled"):
        client = (
            stack.client(name)
            if name
            else openai.OpenAI(base_url=stack.base_url + "/v1", api_key="pk-nope", max_retries=0)
        )
        error = refused(lambda c=client: c.chat.completions.create(model=CHAT, messages=HI), openai.AuthenticationError)
        assert error.status_code == 401
        assert body_of(error)["code"] == "invalid_api_key"
        assert body_of(error)["type"] == "invalid_request_error"
        assert "sha256" not in error.response.text and "pk-nope" not in error.response.text
    with stack.http(key=None) as http:
        response = http.get("/v1/models")
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        assert http.get("/health").status_code == 200 and http.get("/ready").status_code == 200


def test_disabled_tenant_is_403(stack) -> None:
    error = refused(
        lambda: stack.client("frozen").chat.completions.create(model=CHAT, messages=HI), openai.PermissionDeniedError
    )
    assert body_of(error)["code"] == "tenant_disabled"


def test_a_model_not_allowed_reads_exactly_like_one_that_does_not_exist(stack) -> None:
    client = stack.client("globex")
    hidden = refused(lambda: client.embeddings.create(model=EMBED, input="x"), openai.NotFoundError)
    missing = refused(lambda: client.embeddings.create(model="no-such-model", input="x"), openai.NotFoundError)
    assert body_of(hidden) == {
        **body_of(missing),
        "message": body_of(missing)["message"].replace("no-such-model", EMBED),
    }
    assert [m.id for m in client.models.list()] == [CHAT]
    assert refused(lambda: client.models.retrieve(EMBED), openai.NotFoundError).status_code == 404
    assert {m.id for m in stack.client("acme").models.list()} == {CHAT, EMBED}


def test_parameter_policy_and_field_allow_list(stack) -> None:
    client = stack.client("strict")
    over = refused(
        lambda: client.chat.completions.create(model=CHAT, messages=HI, max_tokens=100), openai.BadRequestError
    )
    assert body_of(over)["param"] == "max_tokens" and "8" in body_of(over)["message"]
    extra = refused(
        lambda: client.chat.completions.create(model=CHAT, messages=HI, extra_body={"ignore_eos": True}),
        openai.BadRequestError,
    )
    assert body_of(extra)["param"] == "ignore_eos" and body_of(extra)["code"] == "unknown_parameter"
    salt = refused(
        lambda: client.chat.completions.create(model=CHAT, messages=HI, extra_body={"cache_salt": "probe"}),
        openai.BadRequestError,
    )
    assert body_of(salt)["param"] == "cache_salt"
    many = refused(lambda: client.chat.completions.create(model=CHAT, messages=HI, n=2), openai.BadRequestError)
    assert body_of(many)["param"] == "n"


def test_requests_per_minute_429_with_headers_on_streams_too(stack) -> None:
    client = stack.client("strict")  # 3 requests per minute; the refusals above were never admitted
    raw = client.chat.completions.with_raw_response.create(model=CHAT, messages=HI, max_tokens=4)
    assert raw.headers["x-ratelimit-limit-requests"] == "3"
    assert raw.headers["x-ratelimit-remaining-requests"] == "2"
    assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
    assert raw.parse().usage.completion_tokens <= 4
    with client.chat.completions.with_streaming_response.create(
        model=CHAT, messages=HI, max_tokens=4, stream=True
    ) as streamed:
        assert streamed.headers["x-ratelimit-remaining-requests"] == "1"
        assert [line for line in streamed.iter_lines() if line][-1] == "data: [DONE]"
    client.chat.completions.create(model=CHAT, messages=HI, max_tokens=4)
    error = refused(
        lambda: client.chat.completions.create(model=CHAT, messages=HI, max_tokens=4), openai.RateLimitError
    )
    assert body_of(error)["code"] == "rate_limit_exceeded" and body_of(error)["type"] == "rate_limit_error"
    assert 1 <= int(error.response.headers["retry-after"]) <= 20
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert error.response.headers["x-ratelimit-limit-requests"] == "3"


def test_budget_exhaustion_is_insufficient_quota(stack) -> None:
    client = stack.client("thrifty")  # 300 tokens a day
    served = 0
    for _ in range(20):
        try:
            client.chat.completions.create(model=CHAT, messages=HI, max_tokens=10)
            served += 1
        except openai.RateLimitError as error:
            assert body_of(error)["code"] == "insufficient_quota" and body_of(error)["type"] == "insufficient_quota"
            assert error.response.headers["x-should-retry"] == "false"
            break
    else:
        pytest.fail("the daily budget never ran out")
    assert served >= 1
    usage = {(row["tenant"]): row for row in stack.admin("GET", "/admin/v1/usage")[1]["usage"]}
    row = usage["thrifty"]
    assert row["requests"] == served and 0 < row["prompt_tokens"] + row["completion_tokens"] <= 300


def _stream_until_cut(stack, key: str, lines_out: list[str], started: threading.Event) -> None:
    with stack.http(key=key, timeout=120) as http:
        body = {"model": CHAT, "messages": STORY, "max_tokens": 1500, "ignore_eos": True, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line:
                    lines_out.append(line)
                    started.set()


@pytest.mark.parametrize(("scope", "key", "target"), [("model", "acme", CHAT), ("key", "acme-kill", "key-acme-kill")])
def test_kill_switch_ends_live_streams_within_a_second(stack, scope: str, key: str, target: str) -> None:
    lines: list[str] = []
    started = threading.Event()
    reader = threading.Thread(target=_stream_until_cut, args=(stack, key, lines, started))
    reader.start()
    try:
        assert started.wait(60)
        status, _ = stack.admin("POST", "/admin/v1/disable", {"scope": scope, "id": target, "reason": "e2e"})
        assert status == 200
        killed_at = time.monotonic()
        reader.join(10)
        assert not reader.is_alive()
        assert time.monotonic() - killed_at < 1.5
        assert lines[-1] == "data: [DONE]"
        error = json.loads(lines[-2].removeprefix("data: "))["error"]
        assert error["code"] == "disabled_by_operator"
        after = refused(
            lambda: stack.client(key).chat.completions.create(model=CHAT, messages=HI, max_tokens=2),
            openai.InternalServerError,
        )
        assert after.status_code == 503 and after.response.headers["x-should-retry"] == "false"
        assert stack.admin("GET", "/admin/v1/kills")[1]["disabled"][f"{scope}:{target}"]["reason"] == "e2e"
    finally:
        stack.admin("POST", "/admin/v1/enable", {"scope": scope, "id": target})
        reader.join(30)
    deadline = time.monotonic() + 1.0  # re-enabling reaches every ingress within a second, too
    while True:
        try:
            assert stack.client(key).chat.completions.create(model=CHAT, messages=HI, max_tokens=2).choices
            break
        except openai.InternalServerError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_hot_reload_adds_and_removes_a_key(stack) -> None:
    paddock = str(ROOT / ".venv/bin/paddock")
    out = subprocess.run(
        [paddock, "keys", "create", "--tenant", "globex", "--id", "key-hot", "--append", str(stack.governance_file)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    key = next(word for word in out.split() if word.startswith("pk-"))
    assert key not in stack.governance_file.read_text()
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key=key, max_retries=0)
    deadline = time.monotonic() + 5
    while True:
        try:
            assert [m.id for m in client.models.list()] == [CHAT]
            break
        except openai.AuthenticationError:
            assert time.monotonic() < deadline, "the new key was not picked up"
            time.sleep(0.2)
    data = yaml.safe_load(stack.governance_file.read_text())
    for tenant in data["tenants"]:
        tenant["keys"] = [k for k in tenant["keys"] if k["id"] != "key-hot"]
    tmp = stack.governance_file.with_suffix(".new")
    tmp.write_text(yaml.safe_dump(data))
    tmp.replace(stack.governance_file)  # atomic, like a Secret's symlink swap
    deadline = time.monotonic() + 5
    while True:
        try:
            client.models.list()
            assert time.monotonic() < deadline, "the removed key still works"
            time.sleep(0.2)
        except openai.AuthenticationError:
            break


def test_admin_api_needs_its_own_token(stack) -> None:
    import httpx

    stack.client("acme").models.list()  # one admitted and one refused call, whatever ran before
    with stack.http(key=None) as api:
        assert api.get("/v1/models", headers={"authorization": "Bearer pk-not-a-key"}).status_code == 401
    stack.client("acme").chat.completions.create(model=CHAT, messages=HI, max_tokens=2)
    with httpx.Client(base_url=stack.admin_url) as http:
        assert http.get("/admin/v1/kills").status_code == 401
        tenant_key = {"authorization": f"Bearer {stack.keys['acme']}"}
        assert http.post("/admin/v1/disable", json={"scope": "all"}, headers=tenant_key).status_code == 401
        assert http.get("/metrics").status_code == 401  # metrics are on the metrics port, not here
    with httpx.Client(base_url=stack.metrics_url) as http:
        metrics = http.get("/metrics").text  # the governance counters, for the dashboards
        assert 'paddock_governance_decisions_total{decision="allow",reason="admitted"}' in metrics
        assert 'paddock_governance_decisions_total{decision="deny",reason="invalid_api_key"}' in metrics
        assert "paddock_governance_decision_seconds_bucket" in metrics
    deadline = time.monotonic() + 5  # last use is recorded as the request settles, after its response
    while not (keys := {k["id"]: k for k in stack.admin("GET", "/admin/v1/keys")[1]["keys"]})["key-acme"]["last_used"]:
        assert time.monotonic() < deadline, "no last use recorded"
        time.sleep(0.1)
    assert keys["key-acme"]["tenant"] == "acme"
    assert "hash" not in json.dumps(keys)


def test_audit_records_and_verify(stack, tmp_path: Path) -> None:
    secret = "pk-" + "s" * 40
    stack.client("globex").chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": f"my key is {secret}; say hi"}], max_tokens=3
    )
    deadline = time.monotonic() + 5  # the outcome is written as the response ends
    while True:
        records = stack.audit_records()
        admitted = [r for r in records if r.get("phase") == "admitted" and r.get("tenant") == "globex"]
        completed = {r["request_id"]: r for r in records if r.get("phase") == "completed"}
        if admitted and admitted[-1]["request_id"] in completed:
            break
        assert time.monotonic() < deadline, "no outcome record"
        time.sleep(0.1)
    assert secret not in json.dumps(records) and "[REDACTED]" in admitted[-1]["prompt"]
    done = completed[admitted[-1]["request_id"]]
    assert done["status"] == 200 and done["completion_tokens"] >= 1 and done["prompt_tokens"] >= 1
    assert any(r.get("event") == "admin" and r.get("action") == "disable" for r in records)
    assert any(r.get("phase") == "refused" and r.get("reason") == "invalid_api_key" for r in records)
    request_id = admitted[-1]["request_id"]
    deadline = time.monotonic() + 10  # the same records go to stdout, for log shipping
    while not any(request_id in line and '"phase":"completed"' in line.replace(" ", "") for line in stack.log):
        assert time.monotonic() < deadline, "audit record not on stdout"
        time.sleep(0.2)

    audit_dir = stack.state_dir / "audit"
    live = sorted(audit_dir.glob("audit-*+000000.jsonl"))[0]  # a writer's first segment (one, unless rotated)
    paddock = str(ROOT / ".venv/bin/paddock")

    def verify(path: Path, *options: str) -> subprocess.CompletedProcess[str]:
        # the stack writes without an audit key: intact chains exit 3 (UNAUTHENTICATED) unless allowed
        argv = [paddock, "audit", "verify", "--allow-open", "--allow-unauthenticated", *options, str(path)]
        return subprocess.run(argv, capture_output=True, text=True)

    assert verify(audit_dir).returncode == 0, verify(audit_dir).stdout
    shipped = tmp_path / "stdout.log"  # what a log shipper collects from `paddock serve`'s output
    shipped.write_text("".join(list(stack.log)))
    result = verify(shipped, "--shipped")
    assert result.returncode == 0 and "stdout:" in result.stdout, result.stdout
    lines = shipped.read_text().splitlines(keepends=True)
    chained = [i for i, line in enumerate(lines) if '"phase":"completed"' in line and '"hash":"' in line]
    cut = chained[0]  # a record with more of its chain after it, lost on the way (or deleted from the log store)
    assert len(chained) > 1
    lost = tmp_path / "lost.log"
    lost.write_text("".join(lines[:cut] + lines[cut + 1 :]))
    result = verify(lost, "--shipped")
    assert result.returncode == 1 and "lost in shipping or deleted" in result.stdout, result.stdout
    lines = live.read_text().splitlines(keepends=True)
    edited, reordered, truncated = (tmp_path / n for n in ("edited.jsonl", "reordered.jsonl", "truncated.jsonl"))
    record = json.loads(lines[1])
    record["latency_s"] = record.get("latency_s", 0) + 1  # one edited field
    edited.write_text("".join([lines[0], json.dumps(record) + "\n", *lines[2:]]))
    reordered.write_text("".join([lines[0], lines[2], lines[1], *lines[3:]]))
    truncated.write_text("".join(lines[:-2]))
    assert verify(edited).returncode == 1
    assert verify(reordered).returncode == 1
    no_allow = subprocess.run([paddock, "audit", "verify", str(truncated)], capture_output=True, text=True)
    assert no_allow.returncode == 1


def test_failed_authentication_is_throttled_per_real_client(stack) -> None:
    attacker = {"x-forwarded-for": "203.0.113.9"}  # 127.0.0.1 is a trusted proxy in the e2e stack
    statuses = []
    with stack.http(key=None) as http:
        for i in range(25):
            response = http.get("/v1/models", headers={**attacker, "authorization": f"Bearer pk-guess{i}"})
            statuses.append(response.status_code)
        blocked = http.get("/v1/models", headers={**attacker, "authorization": "Bearer pk-guess-more"})
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
        valid = http.get("/v1/models", headers={**attacker, "authorization": f"Bearer {stack.keys['acme']}"})
        assert valid.status_code == 200  # the key is checked first: a throttled address never locks out a tenant
        bystander = http.get(
            "/v1/models", headers={"x-forwarded-for": "198.51.100.7", "authorization": f"Bearer {stack.keys['acme']}"}
        )
        assert bystander.status_code == 200
    assert statuses[:20] == [401] * 20 and set(statuses[20:]) == {429}


def test_body_too_large_is_413_and_audited(stack) -> None:
    huge = "x" * (9 * 1024 * 1024)  # over ingress.max_body_bytes (8 MiB)
    error = refused(
        lambda: stack.client("acme").chat.completions.create(model=CHAT, messages=[{"role": "user", "content": huge}]),
        openai.APIStatusError,
    )
    assert error.status_code == 413 and body_of(error)["code"] == "payload_too_large"
    deadline = time.monotonic() + 5
    while not any(r.get("reason") == "payload_too_large" for r in stack.audit_records()):
        assert time.monotonic() < deadline, "no audit record for the refused request"
        time.sleep(0.1)
