"""The framework-neutral core: lifecycle, the one sequence, callbacks, plan, settings.

Imports nothing outside ``_core``: no WSGI, no web framework, no server.
"""
