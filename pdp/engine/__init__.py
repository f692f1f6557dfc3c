"""The decision engine: the policy adapter (the only module importing oso), the safe
subset, the fact index, policy input records, the decision core and the decider, search,
explain, policy suites, coverage, the live policy and its shadow. Imports pdp.store and
pdp.model only.
"""
