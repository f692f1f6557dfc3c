"""The HTTP layer: the FastAPI app, one module per resource, the wire shapes, the access
table and the one exception-to-status mapping. Only this package knows status codes.
"""
