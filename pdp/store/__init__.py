"""Persistence: the store protocols, the SQLAlchemy Core implementation (SQLite,
PostgreSQL), the Redis bus and the Alembic migrations. Imports only pdp.model.
"""
