"""The worker skips building django.tasks INFO records only when no handler would print them
(Django's default logging with DEBUG False); a project that prints them keeps them."""

import logging
import subprocess
import uuid

import pytest
from django.test import override_settings
from django.utils.log import RequireDebugTrue

from django_vtasks.worker.unprinted_logs import printable
from tests.tools_helpers import PYTHON, subprocess_env


@pytest.fixture
def tree():
    """A logger tree shaped like Django's DEFAULT_LOGGING: ``<top>`` at INFO with a console
    handler filtered by RequireDebugTrue, not propagating (so pytest's own capture handlers on
    the root logger stay out of it), and ``<top>.tasks`` below it."""
    top = logging.getLogger(f"vt_logs_{uuid.uuid4().hex[:6]}")
    top.setLevel(logging.INFO)
    top.propagate = False
    console = logging.StreamHandler()
    console.addFilter(RequireDebugTrue())
    top.addHandler(console)
    yield f"{top.name}.tasks"
    top.removeHandler(console)


def printable_here(name: str, level: int) -> bool:
    """printable() without the handlers pytest's log capture attaches to a non-propagating
    logger while a test runs (they would "print" everything)."""
    top = logging.getLogger(name.split(".")[0])
    captured = [h for h in top.handlers if type(h).__name__ == "LogCaptureHandler"]
    for h in captured:
        top.removeHandler(h)
    try:
        return printable(name, level)
    finally:
        for h in captured:
            top.addHandler(h)


def test_debug_decides_under_the_default_shape(tree):
    with override_settings(DEBUG=False):
        assert not printable_here(tree, logging.INFO)
    with override_settings(DEBUG=True):
        assert printable_here(tree, logging.INFO)


def test_a_projects_own_handler_keeps_the_records(tree):
    logger = logging.getLogger(tree)
    handler = logging.StreamHandler()
    logger.addHandler(handler)
    try:
        with override_settings(DEBUG=False):
            assert printable_here(tree, logging.INFO)
        handler.setLevel(logging.WARNING)
        with override_settings(DEBUG=False):
            assert not printable_here(tree, logging.INFO)
            assert printable_here(tree, logging.ERROR)
    finally:
        logger.removeHandler(handler)


@pytest.mark.django_db
def test_worker_process_skips_them_and_still_logs_failures():
    code = (
        "import django, logging; django.setup()\n"
        "from django_vtasks.worker.unprinted_logs import skip_unprinted_task_logs\n"
        "from django.tasks.signals import task_started, task_finished\n"
        "assert skip_unprinted_task_logs() is True\n"
        "assert skip_unprinted_task_logs() is False  # once\n"
        "t = logging.getLogger('django.tasks')\n"
        "assert not t.isEnabledFor(logging.INFO) and t.isEnabledFor(logging.ERROR)\n"
        "assert task_started.receivers and task_finished.receivers  # the signals are untouched\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, timeout=60, env=subprocess_env()
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
