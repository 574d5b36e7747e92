"""A realistic Flask app that needs a graceful shutdown; see app.py."""
