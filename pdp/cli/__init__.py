"""The `pdp` command line. Beside pdp.http: neither imports the other.
"""
