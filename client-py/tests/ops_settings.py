"""Settings of the real-browser admin test's runserver: the test settings plus the admin stack,
static files and tests.ops_urls (admin + metrics)."""

from tests.settings import *  # noqa: F403 - these settings extend the test settings
from tests.settings import INSTALLED_APPS as _BASE_APPS
from tests.tools_helpers import ADMIN_APPS

INSTALLED_APPS = ADMIN_APPS + ["django.contrib.staticfiles"] + _BASE_APPS
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
ROOT_URLCONF = "tests.ops_urls"
STATIC_URL = "static/"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
