"""What the tests share: real server processes (servers), an in-process app (asgi), the
test world written through the API (world), PostgreSQL databases (pg), Redis servers and
replicas (replicas), webhook receivers (webhooks), random and small fact worlds for the
engine (random_worlds, small_world).

Test modules import from here, never from one another or from `tests/conftest.py`
(tests/test_layout.py checks it); conftest.py only declares fixtures."""
