"""Policy text that tries to escape the Polar sandbox: shared by tests/test_policy_vet.py
and tests/test_playground.py."""

# The escape of the issue, verbatim in spirit: from a string to os.system.
RCE = ('decision(r, _c, _a, "allowed", "g") if c in r.user_id.__class__.__base__'
       '.__subclasses__() and c.__name__ = "_wrap_close" and _x = c.__init__.__globals__'
       '.get("system").__call__("id > {out}; printenv PDP_API_KEYS >> {out}");\n')
