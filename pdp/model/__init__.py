"""The vocabulary of the domain: closed vocabularies, fact models, callers and their roles,
the clock, the fields a policy may read, and the domain's errors. Imports nothing of pdp.
"""
