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
# Answered 200 while serving and 503 once the server is going away.
readiness_path = "/-/ready"
# Seconds to keep serving after SIGTERM while load balancers notice the 503
# (0 here so that Ctrl+C and the README's demo stop at once; see kubernetes.yaml).
shutdown_delay = 0
