"""gunicorn settings for the example app, with graceful_gunicorn's on top."""

from graceful_gunicorn.conf import *  # noqa: F403 - the hooks graceful_gunicorn needs

bind = "127.0.0.1:8000"
workers = 2
worker_class = "gthread"
threads = 4
graceful_timeout = 30
wsgi_app = "example_app.app:app"

# graceful_gunicorn's own settings (also GRACEFUL_* environment variables)
shutdown_callback_timeout = 5
quick_shutdown_timeout = 2
