"""Redis as the shared fact cache and the invalidation bus between replicas.

- Every committed write is published on `<prefix>:changes` with its facts_version and the
  changed facts, so every replica applies it at once without asking SQL. A replica that
  sees a gap in versions (a missed message, a reconnect) catches up from the store's
  change log instead.
- `<prefix>:snapshot` holds a consistent snapshot of all facts at one version, so a replica
  starting cold fills from Redis and reads only the newer changes from SQL.

Redis is an accelerator, never the source of truth: when it is down or empty, replicas
fall back to the store, and nothing is decided from facts not confirmed against the store
within the staleness bound.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import redis

from pdp.store.protocols import BusUnavailable, Change, ChangeRecord, StoredFact

log = logging.getLogger(__name__)



class RedisBus:
    def __init__(self, url: str, prefix: str = "pdp", timeout: float = 0.5) -> None:
        self.url = url
        self.prefix = prefix
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout,
                                           socket_connect_timeout=timeout,
                                           health_check_interval=5)
        self.channel = f"{prefix}:changes"
        self.policy_channel = f"{prefix}:policy"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = False

    # -- publishing (called after a commit) ---------------------------------------------

    def publish(self, version: int, changes: Sequence[Change]) -> None:
        """Tell every replica. Best effort: BusUnavailable when Redis cannot be reached."""
        message = orjson.dumps({"v": version,
                                "c": [[c.kind, c.id, c.data] for c in changes]})
        try:
            self._redis.publish(self.channel, message)
        except redis.RedisError as error:
            raise BusUnavailable(str(error)) from error

    def publish_policy(self, version: str) -> None:
        """Tell every replica that a policy version went live (each reloads its own
        policy directory, vetted as the first was). Best effort, as `publish`."""
        try:
            self._redis.publish(self.policy_channel, orjson.dumps({"version": version}))
        except redis.RedisError as error:
            raise BusUnavailable(str(error)) from error

    # -- the shared snapshot ------------------------------------------------------------

    def save_snapshot(self, version: int, facts: Sequence[StoredFact]) -> None:
        blob = orjson.dumps({"v": version, "f": [[f.kind, f.id, f.data, f.version]
                                                 for f in facts]})
        try:
            self._redis.set(f"{self.prefix}:snapshot", blob)
        except redis.RedisError as error:
            raise BusUnavailable(str(error)) from error

    def load_snapshot(self) -> tuple[int, list[StoredFact]] | None:
        try:
            blob = self._redis.get(f"{self.prefix}:snapshot")
        except redis.RedisError as error:
            raise BusUnavailable(str(error)) from error
        if not blob:
            return None
        value = orjson.loads(blob)
        return int(value["v"]), [StoredFact(k, i, d, v) for k, i, d, v in value["f"]]

    # -- listening ----------------------------------------------------------------------

    def listen(self, on_changes: Callable[[int, list[ChangeRecord]], None],
               on_connect: Callable[[], None],
               on_policy: Callable[[str], None] | None = None) -> None:
        """Start a thread that delivers published changes (and policy versions gone live,
        to `on_policy`); `on_connect` runs on every (re)connection, before messages, so
        the listener can catch up on what it missed."""
        self._thread = threading.Thread(target=self._listen,
                                        args=(on_changes, on_connect, on_policy),
                                        name="pdp-bus", daemon=True)
        self._thread.start()

    def _listen(self, on_changes: Callable[[int, list[ChangeRecord]], None],
                on_connect: Callable[[], None],
                on_policy: Callable[[str], None] | None) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            pubsub = self._redis.pubsub(
                ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel, self.policy_channel)
                self.connected = True
                backoff = 0.05
                on_connect()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is None or message["type"] != "message":
                        continue
                    value: Any = orjson.loads(message["data"])
                    if message["channel"] in (self.policy_channel,
                                              self.policy_channel.encode()):
                        if on_policy is not None:
                            on_policy(str(value["version"]))
                        continue
                    version = int(value["v"])
                    on_changes(version, [ChangeRecord(version, k, i, d)
                                         for k, i, d in value["c"]])
            except redis.RedisError as error:
                if self.connected:
                    log.warning("redis bus lost: %s", error)
                self.connected = False
            except Exception:
                log.exception("redis bus listener failed")
                self.connected = False
            finally:
                with contextlib.suppress(redis.RedisError):
                    pubsub.close()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 2.0)

    def ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._redis.close()

