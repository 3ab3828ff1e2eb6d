"""The admin's models: placeholders for tasks that live in a broker, never in a table.

They are declared here (the app's models module) rather than in ``admin.py`` so that ``migrate``
creates their content types and permissions: Django's post_migrate handlers skip every app
without a models module. All are unmanaged (no table, no migration needed). Each state group has
only the permissions that mean something on its admin page:

- ``QueuedTask`` (ready and delayed): view, change (= cancel), delete.
- ``RunningTask`` (in flight under a worker's lease): view, change (= cancel: ask it to stop);
  running tasks cannot be deleted.
- ``FailedTask`` (the dead-letter queue): view, change (= retry), delete.
- ``Schedule`` (the periodic schedules the brokers hold): view, change (= pause, resume, run
  now).
- ``Dashboard``: none of its own; the dashboard opens for anyone who may view one of the three.
"""

from django.db import models


class BrokerTask(models.Model):
    """A task as the admin addresses it: its id (the broker holds everything else)."""

    id = models.CharField(primary_key=True, max_length=1024)

    class Meta:
        abstract = True
        managed = False

    def __str__(self) -> str:
        return f"{self._meta.verbose_name} {self.id}"


class QueuedTask(BrokerTask):
    class Meta:
        managed = False
        app_label = "django_vtasks"
        verbose_name = "queued task"
        verbose_name_plural = "queued tasks"
        default_permissions = ("view", "change", "delete")


class RunningTask(BrokerTask):
    class Meta:
        managed = False
        app_label = "django_vtasks"
        verbose_name = "running task"
        verbose_name_plural = "running tasks"
        default_permissions = ("view", "change")


class FailedTask(BrokerTask):
    class Meta:
        managed = False
        app_label = "django_vtasks"
        verbose_name = "failed task"
        verbose_name_plural = "failed tasks"
        default_permissions = ("view", "change", "delete")


class Dashboard(models.Model):
    """Placeholder so the admin lists the dashboard page; nothing is stored."""

    class Meta:
        managed = False
        app_label = "django_vtasks"
        verbose_name = "dashboard"
        verbose_name_plural = "dashboard"
        default_permissions = ()


class Schedule(models.Model):
    """A periodic schedule as the admin addresses it (VTASKS_SCHEDULE says which exist; the
    broker holds them). ``view`` lists them; ``change`` pauses, resumes and runs them now."""

    name = models.CharField(primary_key=True, max_length=1024)

    class Meta:
        managed = False
        app_label = "django_vtasks"
        verbose_name = "schedule"
        verbose_name_plural = "schedules"
        default_permissions = ("view", "change")

    def __str__(self) -> str:
        return f"schedule {self.name}"
