"""Fuzzing the control server with >= 10,000 random and mutated messages (hypothesis).

Every message is answered (an error reply with a stable code) or, when ZeroMQ itself cannot
carry it, dropped; the server keeps serving and the gateway's state is unchanged. Messages
are sent in batches of 100 on one DEALER socket so the whole run takes a few seconds. Names
in generated requests never match a real port, patch or profile, so no generated request
can legitimately change state; a valid-looking request must then fail on the name.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brug.gateway.control.commands import COMMANDS
from brug.gateway.control.local import LocalGateway, memory_gateway
from brug.gateway.control.protocol import ERROR_CODES, MAX_MESSAGE
from brug.gateway.control.server import ControlServer, ControlSettings

REAL = {"be1", "nl1", "lu1", "P", "mem-a", "mem-b"}
BATCH = 100
EXAMPLES = 100          # x BATCH = 10,000 messages
FIELDS = ["name", "members", "mode", "priorities", "patch", "port", "priority", "profile",
          "talkgroup", "rx_db", "tx_db", "rx", "tx", "seconds", "tone_hz", "ports", "x"]

names = st.text(min_size=0, max_size=12).filter(lambda s: s not in REAL)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=False), names)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
bodies = st.dictionaries(st.sampled_from(FIELDS), st.one_of(json_values, st.lists(names,
                                                                                  max_size=4)),
                         max_size=5)
types = st.one_of(st.sampled_from(sorted(COMMANDS)), st.text(max_size=20))
envelopes = st.fixed_dictionaries(
    {"id": st.one_of(st.text(min_size=1, max_size=20), st.integers(), st.none()),
     "type": types},
    optional={"version": st.one_of(st.just(1), st.integers(-3, 3), st.text(max_size=3)),
              "body": st.one_of(bodies, json_values), "junk": json_values})


def _mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    b = bytearray(data)
    for kind, pos, val in ops:
        if not b:
            break
        i = pos % len(b)
        if kind == 0:
            b[i] = val
        elif kind == 1:
            del b[i:i + 1 + val % 8]
        elif kind == 2:
            b[i:i] = bytes([val]) * (1 + val % 4)
        else:
            b = b[:i]
    return bytes(b)


mutated = st.builds(lambda env, ops: _mutate(json.dumps(env).encode(), ops), envelopes,
                    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10**6),
                                       st.integers(0, 255)), min_size=1, max_size=4))
messages = st.one_of(
    envelopes.map(lambda e: [json.dumps(e).encode()]),
    mutated.map(lambda m: [m]),
    st.binary(max_size=200).map(lambda b: [b]),
    st.lists(st.binary(max_size=40), min_size=2, max_size=4),            # extra frames
    st.integers(MAX_MESSAGE - 10, MAX_MESSAGE + 5000).map(
        lambda n: [(b'{"id":"big","type":"status","body":{"p":"' + b"x" * n + b'"}}')]),
)


def config(snap: dict[str, Any]) -> dict[str, Any]:
    """The parts of a snapshot a request could change."""
    keep = ("profile", "talkgroup", "patch", "rx_gain_db", "tx_gain_db", "rx_mute", "tx_mute")
    return {"ports": {n: {k: p[k] for k in keep} for n, p in snap["ports"].items()},
            "patches": {n: {k: p[k] for k in ("members", "mode", "priorities")}
                        for n, p in snap["patches"].items()}}


class Fuzz:
    def __init__(self, tmp: Path) -> None:
        self.gw: LocalGateway = memory_gateway(["be1", "nl1", "lu1"])
        self.gw.engine.create_patch("P", ["be1", "nl1"])
        self.gw.run()
        self.srv = ControlServer(self.gw, ControlSettings(
            rep="tcp://127.0.0.1:*", pub="tcp://127.0.0.1:*", rate_per_s=1e6, burst=1e6,
            audit_log=tmp / "audit.jsonl", state_file=tmp / "state.json"))
        self.srv.start()
        self.sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.srv.endpoint)
        self.before = config(self.snapshot())
        self.sent = self.answered = 0
        self.codes: dict[str, int] = {}

    def snapshot(self) -> dict[str, Any]:
        return self.gw.engine.submit(lambda e: e.snapshot()).result(2.0)

    def close(self) -> None:
        self.sock.close(0)
        self.srv.stop()
        self.gw.shutdown()


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    f = Fuzz(tmp_path_factory.mktemp("fuzz"))
    yield f
    f.close()


def expand(rng: random.Random, templates: list[bytes], n: int) -> list[list[bytes]]:
    """``n`` messages: random mutations of the templates, random bytes, random frames."""
    out: list[list[bytes]] = []
    while len(out) < n:
        k = rng.random()
        if k < 0.7:
            ops = [(rng.randrange(4), rng.randrange(10**6), rng.randrange(256))
                   for _ in range(rng.randrange(0, 4))]
            out.append([_mutate(rng.choice(templates), ops)])
        elif k < 0.9:
            out.append([rng.randbytes(rng.randrange(0, 300))])
        else:
            out.append([rng.randbytes(rng.randrange(0, 30)) for _ in range(rng.randrange(2, 5))])
    return out


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(rng=st.randoms(use_true_random=False),
       templates=st.lists(envelopes.map(lambda e: json.dumps(e).encode()), min_size=1,
                          max_size=4),
       drawn=st.lists(messages, max_size=4))
def test_fuzz_batch_is_answered_and_changes_nothing(fuzz: Fuzz, rng: random.Random,
                                                    templates: list[bytes],
                                                    drawn: list[list[bytes]]) -> None:
    batch = drawn + expand(rng, templates, BATCH - len(drawn))
    while fuzz.sock.poll(0):              # a failed example must not confuse the next one
        fuzz.sock.recv_multipart()
    for frames in batch:
        fuzz.sock.send_multipart(frames)
    fuzz.sent += len(batch)
    got = 0
    while got < len(batch) and fuzz.sock.poll(3000):
        reply = json.loads(fuzz.sock.recv_multipart()[-1])   # [b"", reply] after a delimiter
        got += 1
        assert set(reply) >= {"id", "type", "version"}
        if "error" in reply:
            assert reply["error"]["code"] in ERROR_CODES
            fuzz.codes[reply["error"]["code"]] = fuzz.codes.get(reply["error"]["code"], 0) + 1
        else:
            fuzz.codes["ok"] = fuzz.codes.get("ok", 0) + 1
    fuzz.answered += got
    assert got == len(batch)          # nothing here is too big for ZeroMQ: all answered


def test_fuzz_left_the_server_serving_and_the_state_unchanged(fuzz: Fuzz) -> None:
    assert fuzz.sent >= EXAMPLES * BATCH and fuzz.answered == fuzz.sent
    assert config(fuzz.snapshot()) == fuzz.before
    assert fuzz.gw.engine.running and fuzz.srv.errors.get("internal", 0) == 0
    fuzz.sock.send(json.dumps({"id": "after", "type": "status"}).encode())
    assert fuzz.sock.poll(2000)
    assert json.loads(fuzz.sock.recv())["result"]["running"]
    assert not (fuzz.srv.settings.state_file or Path("/nonexistent")).exists()
    assert {"bad_request", "unknown_type"} <= set(fuzz.codes)
