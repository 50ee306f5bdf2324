"""gateway/core/events.py: the event intake's de-duplication window, its persistence and its listeners."""

from __future__ import annotations

from lookout.gateway.core.events import EventIntake
from lookout.protocols import messages

DAY = 86_400_000
T0 = 1_800_000_000_000


def ev(eid: str, ts: int = T0) -> dict:
    return {"id": eid, "seq": 1, "ts": ts, "kind": "fishing", "sev": "serious"}


def test_window_persistence_listeners_and_bounds(tmp_path):
    got: list[str] = []
    ei = EventIntake(tmp_path / "events.db", window_ms=7 * DAY, max_rows=3)

    def boom(e):
        raise RuntimeError("a broken listener must not stop the others")

    ei.add_listener(boom)
    ei.add_listener(lambda e: got.append(f"{e.device}/{e.msg['id']}"))
    assert ei.offer("s", "sen-1", ev("a"), T0) == "new"
    assert ei.offer("s", "sen-1", ev("a"), T0 + 1) == "duplicate"
    assert ei.offer("s", "sen-2", ev("a"), T0 + 2) == "new"  # ids are per device
    ei.close()
    ei = EventIntake(tmp_path / "events.db", window_ms=7 * DAY, max_rows=3)  # a gateway restart
    ei.add_listener(lambda e: got.append(f"{e.device}/{e.msg['id']}"))
    assert ei.offer("s", "sen-1", ev("a"), T0 + DAY) == "duplicate"
    # a real timestamp older than the window cannot be told from a replay; a node without a clock sends MS_MIN
    assert ei.offer("s", "sen-1", ev("old", T0 - 8 * DAY), T0 + DAY) == "stale"
    assert ei.offer("s", "sen-1", ev("noclock", messages.MS_MIN), T0 + DAY) == "new"
    assert ei.offer("s", "sen-1", ev("b", T0 + 2 * DAY), T0 + 2 * DAY) == "new"
    assert ei.prune(T0 + 8 * DAY) == 2  # "a" of both devices: older than the window (noclock/b kept)
    assert ei.offer("s", "sen-1", ev("a", T0 + 9 * DAY), T0 + 9 * DAY) == "new"  # forgotten: seen anew
    assert ei.offer("s", "sen-1", ev("c", T0 + 9 * DAY), T0 + 9 * DAY) == "new"
    assert got == ["sen-1/a", "sen-2/a", "sen-1/noclock", "sen-1/b", "sen-1/a", "sen-1/c"]
    assert ei.counts == {"new": 4, "duplicate": 1, "stale": 1}
    ei.close()


def test_row_bound_drops_the_oldest(tmp_path):
    ei = EventIntake(tmp_path / "events.db", window_ms=30 * DAY, max_rows=2)
    for i, eid in enumerate(("a", "b", "c")):
        assert ei.offer("s", "sen-1", ev(eid), T0 + i) == "new"
    assert ei.prune(T0 + 60_000) == 1
    assert [ei.offer("s", "sen-1", ev(eid), T0 + 60_001) for eid in ("b", "c", "a")] == \
        ["duplicate", "duplicate", "new"]
    ei.close()
