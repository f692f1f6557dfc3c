"""The rights procedure and supervision: the grant lifecycle and agreements,
misuse monitoring, events and their webhooks, the monthly report. Imports pdp.audit and
below.
"""
