"""django-vtasks: a fast, reliable task queue for Django 6 on Valkey (native module) or Postgres."""

# The same as client-py/pyproject.toml's version (tests/test_install.py checks it). A literal, not
# importlib.metadata: the package also runs from a source tree that is not installed (benchmarks).
__version__ = "4.0.0"


def __getattr__(name):
    # lazy: importing the package must not require configured settings
    if name in ("task", "VTask"):
        from . import tasks

        return getattr(tasks, name)
    if name in ("Retry", "TaskCancelled", "TimeLimitExceeded"):
        from . import exceptions

        return getattr(exceptions, name)
    raise AttributeError(name)
