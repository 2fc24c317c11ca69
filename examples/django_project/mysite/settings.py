"""Settings of the example project: one app, no database."""

from __future__ import annotations

import os

# Set DJANGO_SECRET_KEY in any real deployment.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = ["greetings"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "mysite.urls"
WSGI_APPLICATION = "mysite.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}
TIME_ZONE = "UTC"
USE_TZ = True

# Where greetings.services finds Redis.
REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
