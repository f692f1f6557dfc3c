"""The decision log: an append-only, hash-chained record of every decision and read,
with retention holds, verification and export. Imports pdp.engine and below.
"""
