"""The composition root: settings validated once, the runtime that wires store, bus,
engine, audit and rights together, and the demo world. Imports everything below it, never
pdp.http or pdp.cli.
"""
