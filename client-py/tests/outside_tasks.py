"""Tasks in a module that is not in an installed app (tests/ itself is not an app): a worker
must refuse them without importing this module, whose import has a visible side effect."""

import os

from django.tasks import task

if os.environ.get("VTASKS_TEST_MARKER"):
    with open(os.environ["VTASKS_TEST_MARKER"], "a") as f:
        f.write("imported\n")


@task
def touch(path):
    with open(path, "a") as f:
        f.write("ran\n")


def plain_function(path):
    return path
