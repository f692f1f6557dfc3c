"""The shadow's queue (unit level): the hot path never waits, a full queue drops and
counts, and stopping never blocks."""

from __future__ import annotations

import threading
import time
from typing import Any

from pdp.engine.core import Decision, DecisionRequest
from pdp.engine.factindex import FactIndex
from pdp.engine.metrics import Metrics
from pdp.engine.policy_engine import read_policy
from pdp.engine.policy_sandbox import SandboxedPolicy
from pdp.engine.shadow import Shadow
from pdp.service.settings import DEFAULT_POLICY_DIR

REQUEST = DecisionRequest("u", "c", "name_contact", "read", "coaching")


def test_a_full_queue_drops_and_counts_and_stop_never_blocks() -> None:
    shadow = Shadow(SandboxedPolicy(read_policy(DEFAULT_POLICY_DIR)), {}, FactIndex(), Metrics(),
                    queue_size=1)
    release = threading.Event()
    answered = Decision(False, "unknown_subject", "v", 0)

    def slow(request: DecisionRequest, now: Any = None) -> Decision:
        release.wait(10)
        return answered

    shadow._decider.decide = slow  # type: ignore[method-assign]
    made = Decision(True, "allowed", "v", 0, "g")
    shadow.offer(REQUEST, None, made)  # type: ignore[arg-type]
    deadline = time.monotonic() + 5
    while shadow._queue.qsize() and time.monotonic() < deadline:  # the worker took it
        time.sleep(0.01)
    shadow.offer(REQUEST, None, made)  # type: ignore[arg-type]  # waits in the queue
    shadow.offer(REQUEST, None, made)  # type: ignore[arg-type]  # no room: dropped
    assert (shadow.queued, shadow.dropped) == (2, 1)
    # The queue is full and the worker held: a stop that waited for room would never end.
    stopping = threading.Thread(target=shadow.stop)
    stopping.start()
    stopping.join(5)
    assert not stopping.is_alive()
    shadow.offer(REQUEST, None, made)  # type: ignore[arg-type]  # stopped: ignored
    assert shadow.queued == 2
    release.set()
    shadow._thread.join(5)
    assert not shadow._thread.is_alive()
    # The one it was deciding when stopped counts; the one still queued is dropped.
    assert (shadow.evaluated, shadow.diverged) == (1, 1)
