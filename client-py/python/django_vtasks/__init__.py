"""django-vtasks: a fast, reliable task queue for Django 6 on Valkey (native module) or Postgres."""

__version__ = "0.1.0"


def __getattr__(name):
    # lazy: importing the package must not require configured settings
    if name in ("task", "VTask"):
        from . import tasks

        return getattr(tasks, name)
    raise AttributeError(name)
