"""Server-side limits, quota, auth, faults and request counting of the simulator, seen through
the real SDK (and raw HTTP where the SDK cannot express the request)."""

from __future__ import annotations

import time

import httpx2
import openai
import pytest

RATE_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
)
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def test_simulator_rpm_61st_request_is_rate_limited(sim_factory, openai_client):
    sim = sim_factory(rpm=60, latency_s=0)
    client = openai_client(sim)
    for _ in range(60):
        client.chat.completions.create(**CHAT)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(**CHAT)
    err = e.value
    assert (err.status_code, err.type, err.code) == (429, "requests", "rate_limit_exceeded")
    assert "requests per min (RPM): Limit 60, Used 60, Requested 1" in err.body["message"]
    headers = err.response.headers
    assert 0 < float(headers["retry-after-ms"]) <= 60_000
    assert headers["retry-after"].isdigit() and 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == "60" and headers["x-ratelimit-remaining-requests"] == "0"
    stats = sim.stats()
    assert (stats["requests_total"], stats["429"], stats["429_rate_limit"]) == (61, 1, 1)
    other = openai_client(sim, api_key="sk-other-key")  # limits are per API key
    assert other.chat.completions.create(**CHAT).choices[0].message.content == "You said: hello"


def test_simulator_rate_limit_headers_on_every_response(sim_factory, openai_client):
    sim = sim_factory(rpm=100, tpm=10_000)
    client = openai_client(sim)
    ok = client.chat.completions.with_raw_response.create(**CHAT)
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.retrieve("resp_missing")
    unauthorised = httpx2.get(f"{sim.base_url}/assistants")
    streamed = client.chat.completions.with_raw_response.create(**CHAT, stream=True)
    list(streamed.parse())
    for headers in (ok.headers, missing.value.response.headers, unauthorised.headers, streamed.headers):
        assert all(h in headers for h in RATE_HEADERS), headers
        assert headers["x-request-id"].startswith("req_")
    assert ok.headers["x-ratelimit-limit-tokens"] == "10000"
    assert ok.headers["x-ratelimit-remaining-requests"] == "99"
    assert int(ok.headers["x-ratelimit-remaining-tokens"]) < 10_000


def test_simulator_tpm_limits_tokens(sim_factory, openai_client):
    client = openai_client(sim_factory(tpm=40))
    long = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 400}]}
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(**long)
    assert e.value.type == "tokens" and "Request too large for gpt-4o-mini" in e.value.body["message"]
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "y" * 40}]
    )  # ~20 tokens
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "y" * 40}])
    assert (e.value.type, e.value.code) == ("tokens", "rate_limit_exceeded")
    assert "tokens per min (TPM): Limit 40" in e.value.body["message"]
    assert int(e.value.response.headers["retry-after"]) >= 1


def test_simulator_quota_exhausted_is_not_retried(sim_factory, openai_client):
    sim = sim_factory(quota_exhausted=True)
    client = openai_client(sim, max_retries=2)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(**CHAT)
    assert (e.value.type, e.value.code) == ("insufficient_quota", "insufficient_quota")
    assert e.value.response.headers["x-should-retry"] == "false"
    assert sim.stats()["requests_total"] == 1  # the SDK honoured x-should-retry: false
    assert sim.stats()["429_quota"] == 1


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_simulator_quota_rule_answers_insufficient_quota(sim_factory, openai_client):
    rules = {"rules": [{"when": "(?i)expensive", "quota_exhausted": True}]}
    client = openai_client(sim_factory(rules=rules))
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "something expensive"}]
        )
    assert e.value.code == "insufficient_quota"
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="gpt-4o-mini", input="expensive again")
    a = client.beta.assistants.create(model="gpt-4o-mini")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "expensive"}])
    with pytest.raises(openai.RateLimitError) as e:
        client.beta.threads.runs.create(thread_id=thread.id, assistant_id=a.id)
    assert e.value.code == "insufficient_quota"
    assert client.beta.threads.runs.list(thread.id).data == []  # nothing was created
    assert client.chat.completions.create(**CHAT).choices[0].message.content == "You said: hello"


def test_simulator_auth_missing_or_rejected_key_is_401(sim_factory, openai_client, validate_against):
    sim = sim_factory(reject_keys=lambda key: key.startswith("sk-revoked"))
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}):
        r = httpx2.post(f"{sim.base_url}/chat/completions", json=CHAT, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        validate_against("ErrorResponse", r.json())
    with pytest.raises(openai.AuthenticationError) as e:
        openai_client(sim, api_key="sk-revoked-1").chat.completions.create(**CHAT)
    assert e.value.code == "invalid_api_key" and "sk-revoked" not in e.value.body["message"]
    default = sim_factory()
    with pytest.raises(openai.AuthenticationError):  # "sk-invalid" is rejected unless configured otherwise
        openai_client(default, api_key="sk-invalid").chat.completions.create(**CHAT)
    assert openai_client(default, api_key="sk-anything").chat.completions.create(**CHAT).choices


def _outcomes(base_url: str, n: int) -> list[str]:
    """The fate of n identical requests: a status code, or `dropped` when the connection was closed."""
    out = []
    with httpx2.Client(headers={"Authorization": "Bearer sk-test"}) as http:
        for _ in range(n):
            try:
                out.append(str(http.post(f"{base_url}/chat/completions", json=CHAT).status_code))
            except httpx2.TransportError:  # closed without an answer
                out.append("dropped")
    return out


def test_simulator_faults_are_reproducible_for_a_seed(sim_factory):
    first = _outcomes(sim_factory(fault_rate=0.4, seed=7, latency_s=0).base_url, 40)
    again = _outcomes(sim_factory(fault_rate=0.4, seed=7, latency_s=0).base_url, 40)
    other = _outcomes(sim_factory(fault_rate=0.4, seed=8, latency_s=0).base_url, 40)
    assert first == again
    assert first != other
    assert {"200", "500", "503", "dropped"} <= set(first)
    assert 6 <= sum(x != "200" for x in first) <= 28  # about 40 %


def test_simulator_dropped_connection_is_an_sdk_connection_error(sim_factory, openai_client):
    sim = sim_factory(fault_rate=1.0, seed=0, latency_s=0)
    client = openai_client(sim)
    seen = set()
    for _ in range(12):
        try:
            client.chat.completions.create(**CHAT)
        except openai.APIConnectionError:
            seen.add("dropped")
        except openai.InternalServerError as e:
            seen.add(str(e.status_code))
    assert seen == {"dropped", "500", "503"}
    stats = sim.stats()
    assert stats["requests_total"] == 12 and stats["faults"] == 12
    assert stats["dropped"] + stats["by_status"].get("500", 0) + stats["by_status"].get("503", 0) == 12


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_simulator_fault_rate_fails_runs_reproducibly(sim_factory):
    def fates(seed: int) -> list[str]:
        # Faults before processing only: a blind retry of a create whose answer was lost would make
        # a second run (that is what after-processing faults are for, tested apart).
        sim = sim_factory(fault_rate=0.5, seed=seed, latency_s=0.01, fault_after_share=0.0)
        headers = {"Authorization": "Bearer sk-test", "OpenAI-Beta": "assistants=v2"}
        with httpx2.Client(base_url=sim.base_url, headers=headers) as http:

            def call(method: str, path: str, **kw: object) -> dict:
                while True:  # retry request-level faults at once: only run fates matter here
                    try:
                        r = http.request(method, path, **kw)
                    except httpx2.TransportError:
                        continue
                    if r.status_code == 200:
                        return r.json()

            aid = call("POST", "/assistants", json={"model": "gpt-4o-mini"})["id"]
            runs = []
            for i in range(16):
                tid = call("POST", "/threads", json={"messages": [{"role": "user", "content": f"q{i}"}]})[
                    "id"
                ]
                runs.append((tid, call("POST", f"/threads/{tid}/runs", json={"assistant_id": aid})["id"]))
            time.sleep(0.1)
            out = []
            for tid, rid in runs:
                run = call("GET", f"/threads/{tid}/runs/{rid}")
                assert run["status"] in ("completed", "failed")
                if run["status"] == "failed":
                    assert run["last_error"]["code"] == "server_error" and run["failed_at"]
                out.append(run["status"])
            return out

    first, again = fates(3), fates(3)
    assert first == again and {"completed", "failed"} == set(first)


def test_simulator_stats_count_every_request_once(sim_factory, openai_client):
    sim = sim_factory(rpm=3)
    client = openai_client(sim)
    client.chat.completions.create(**CHAT)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_x")
    httpx2.get(f"{sim.base_url}/no/such/route", headers={"Authorization": "Bearer sk-test"})
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(**CHAT)
    stats = sim.stats()
    assert stats["requests_total"] == 4
    assert stats["by_route"] == {
        "POST /v1/chat/completions": 2,
        "GET /v1/responses/{response_id}": 1,
        "GET /v1/{unknown}": 1,
    }
    assert stats["by_status"] == {"200": 1, "404": 2, "429": 1}
    served = httpx2.get(sim.base_url.removesuffix("/v1") + "/_simulator/stats").json()
    assert served == stats  # the stats endpoint itself is not counted
    httpx2.post(sim.base_url.removesuffix("/v1") + "/_simulator/reset")
    assert sim.stats()["requests_total"] == 0
