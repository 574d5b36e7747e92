"""The WSGI side: the counting middleware and finding the lifecycles of a loaded app.

Imports ``_core`` only: no web framework, no server.
"""
