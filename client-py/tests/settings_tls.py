"""Settings of test_pg_tls.py's Django subprocesses: the Postgres backend on a TLS-only server
(scripts/pg-tls-server in $VTASKS_TEST_TLS_DIR). Every TLS setting is given only in
DATABASES["default"]["OPTIONS"], as a Django project would: the user `vtcert` may log in only
with the client certificate, so a worker that dropped OPTIONS could not connect at all.
"""

import os
from pathlib import Path

from .settings import *  # noqa: F403
from .settings import _POSTGRES

_dir = Path(os.environ["VTASKS_TEST_TLS_DIR"])
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "postgres",
        "USER": "vtcert",
        "HOST": "localhost",  # the only name in the server's certificate (verify-full checks it)
        "PORT": (_dir / "port").read_text().strip(),
        "OPTIONS": {
            "sslmode": "verify-full",
            "sslrootcert": str(_dir / "tls" / "ca.crt"),
            "sslcert": str(_dir / "tls" / "client.crt"),
            "sslkey": str(_dir / "tls" / "client.key"),
            "connect_timeout": 5,
            "application_name": "vtasks-tls-test",
        },
    },
}
TASKS = {"default": _POSTGRES}
