"""Fixtures and helpers of the admin and tool tests (kept apart from the core's conftest.py, which
loads this module as a pytest plugin: its fixtures need no import)."""

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

CLIENT_DIR = Path(__file__).resolve().parents[1]

ADMIN_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
]


@pytest.fixture
def admin_stack(transactional_db, settings):
    """The test settings plus the admin stack (apps, middleware, templates, urls) and its tables."""
    from django.core.management import call_command

    settings.INSTALLED_APPS = [a for a in ADMIN_APPS if a not in settings.INSTALLED_APPS] + list(
        settings.INSTALLED_APPS
    )
    settings.MIDDLEWARE = [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
    ]
    settings.TEMPLATES = [
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
    settings.ROOT_URLCONF = "tests.tools_urls"
    # tables of the added apps (kept for the rest of the session; migrate is then a no-op)
    call_command("migrate", verbosity=0, run_syncdb=True)
    yield settings


@pytest.fixture
def superuser_client(admin_stack, client):
    from django.contrib.auth import get_user_model

    # transactional tests do not roll the added apps' tables back: a fresh name every time
    name = f"admin-{uuid.uuid4().hex[:8]}"
    user = get_user_model().objects.create_superuser(name, f"{name}@example.com", "pw")
    client.force_login(user)
    return client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(extra: dict | None = None) -> dict:
    from django.db import connections

    env = dict(os.environ)
    env["VTASKS_TEST_DB_NAME"] = connections["default"].settings_dict["NAME"]
    env["PYTHONPATH"] = str(CLIENT_DIR) + os.pathsep + env.get("PYTHONPATH", "")
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env.update(extra or {})
    return env


class Proc:
    """A subprocess whose output goes to a file; stopped by PID."""

    def __init__(self, args, log_path, env=None, stdin=None):
        self.log_path = Path(log_path)
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            args, cwd=CLIENT_DIR, env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=stdin
        )

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"process did not exit in {timeout}s:\n{self.output()}") from None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def procs():
    started: list[Proc] = []

    def start(*args, **kwargs):
        p = Proc(*args, **kwargs)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()


PYTHON = sys.executable
