"""Floor control state machine: no audio, times in samples (16 kHz)."""

from __future__ import annotations

import pytest

from brug.talkgroups.floor import Floor, FloorError, Mode

MS = 16  # samples per ms at 16 kHz


def run(floor: Floor, t: int, cor: dict[str, bool], since: dict[str, int]) -> list[str]:
    return [f"{c.kind}:{c.port}" for c in floor.update(t, cor, since)]


def test_first_come_holds_and_second_is_blocked_once() -> None:
    f = Floor("P", ["a", "b", "c"])
    assert run(f, 0, {"a": True}, {"a": 0}) == ["floor:a"]
    assert f.routes() == {"b": ("a",), "c": ("a",)}
    ch = run(f, 20 * MS, {"a": True, "b": True}, {"a": 0, "b": 20 * MS})
    assert ch == ["blocked:b"]
    assert f.holder == "a"
    assert f.routes() == {"c": ("a",)}          # a busy terminal is not keyed
    assert run(f, 25 * MS, {"a": True, "b": True}, {"a": 0, "b": 20 * MS}) == []  # once per over
    # the holder releases while b still talks: b's over started against the floor and stays
    # blocked (no half sentence on the air); b gets the floor when it keys up again
    assert run(f, 30 * MS, {"a": False, "b": True}, {"a": 0, "b": 20 * MS}) == ["floor:None"]
    assert f.routes() == {} and f.blocked == {"b"}
    assert run(f, 40 * MS, {"a": False, "b": False}, {"a": 0, "b": 20 * MS}) == []
    assert run(f, 50 * MS, {"a": False, "b": True}, {"a": 0, "b": 50 * MS}) == ["floor:b"]
    assert f.routes() == {"a": ("b",), "c": ("b",)}


def test_a_preempted_holder_does_not_retake_the_floor_mid_over() -> None:
    f = Floor("P", ["a", "b", "c"], priorities={"b": 1})
    run(f, 0, {"a": True}, {"a": 0})
    assert run(f, 80, {"a": True, "b": True}, {"a": 0, "b": 80}) == \
        ["preempt:b", "floor:b", "blocked:a"]
    assert run(f, 160, {"a": True, "b": False}, {"a": 0, "b": 80}) == ["floor:None"]
    assert f.holder is None and f.routes() == {}
    assert run(f, 240, {"a": True, "c": True}, {"a": 0, "c": 240}) == ["floor:c"]
    assert f.routes() == {"b": ("c",)}          # a is still busy: not keyed


def test_same_tick_contention_priority_then_earlier_edge() -> None:
    f = Floor("P", ["a", "b"], priorities={"b": 1})
    assert run(f, 80, {"a": True, "b": True}, {"a": 10, "b": 70})[0] == "floor:b"
    g = Floor("P", ["a", "b"])
    assert run(g, 80, {"a": True, "b": True}, {"a": 70, "b": 10})[0] == "floor:b"


def test_higher_priority_preempts_lower_does_not() -> None:
    f = Floor("P", ["a", "b", "c"], priorities={"c": 5, "a": 1})
    run(f, 0, {"a": True}, {"a": 0})
    assert run(f, 80, {"a": True, "b": True}, {"a": 0, "b": 80}) == ["blocked:b"]
    ch = run(f, 160, {"a": True, "b": True, "c": True}, {"a": 0, "b": 80, "c": 160})
    assert ch[:2] == ["preempt:c", "floor:c"]
    assert "blocked:a" in ch
    assert f.holder == "c"
    assert f.routes() == {}      # a and b are busy: nobody to key


def test_tot_cuts_a_stuck_over_and_locks_it_out_until_cor_drops() -> None:
    f = Floor("P", ["a", "b"], tot_samples={"a": 1000})
    run(f, 0, {"a": True}, {"a": 0})
    assert run(f, 960, {"a": True}, {"a": 0}) == []
    assert run(f, 1040, {"a": True}, {"a": 0}) == ["tot:a", "floor:None"]
    assert f.routes() == {}
    assert run(f, 2000, {"a": True}, {"a": 0}) == []           # still stuck: stays out
    assert run(f, 2080, {"a": False}, {"a": 0}) == []
    assert run(f, 2160, {"a": True}, {"a": 2160}) == ["floor:a"]  # a new over is fine


def test_full_duplex_mixes_n_minus_one() -> None:
    f = Floor("P", ["a", "b", "c"], mode=Mode.FULL_DUPLEX)
    run(f, 0, {"a": True, "b": True}, {"a": 0, "b": 0})
    assert f.routes() == {"a": ("b",), "b": ("a",), "c": ("a", "b")}


def test_holder_leaving_the_patch_releases_the_floor() -> None:
    f = Floor("P", ["a", "b", "c"])
    run(f, 0, {"a": True}, {"a": 0})
    assert [c.kind for c in f.remove_member("a")] == ["floor"]
    assert f.holder is None and f.routes() == {}


@pytest.mark.parametrize("members", [["a"], [], ["a", "a"]])
def test_bad_patches_are_refused(members: list[str]) -> None:
    with pytest.raises(FloorError, match="patch 'P'"):
        Floor("P", members)
