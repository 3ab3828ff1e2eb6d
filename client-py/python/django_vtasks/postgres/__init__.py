"""App holding the migration of the Postgres queue schema (add it to INSTALLED_APPS)."""
