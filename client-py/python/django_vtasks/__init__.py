"""django-vtasks: a fast, reliable task queue for Django 6 on Valkey (native module) or Postgres."""


def __getattr__(name):
    # lazy: importing the package must not require configured settings
    if name in ("task", "VTask"):
        from . import tasks

        return getattr(tasks, name)
    if name == "__version__":
        # one definition of the version: client-py/pyproject.toml (see CHANGELOG.md for the policy)
        from importlib.metadata import version

        return version("django-vtasks")
    raise AttributeError(name)
