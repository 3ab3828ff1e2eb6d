"""The demo shop's tasks. Each one appends a line to RUN_DIR/events.log so the demo can show
what ran, in which order."""

import asyncio
import os
import time

from django.conf import settings
from django.tasks import task


def record(*words):
    line = " ".join(str(w) for w in (f"{time.time():.3f}", *words))
    with open(settings.RUN_DIR / "events.log", "a") as f:
        f.write(line + "\n")


@task
def place_order(order_id, amount):
    """A plain sync task: runs on the worker's thread pool."""
    record("order", order_id)
    return {"order": order_id, "total": round(amount * 1.2, 2)}


@task(priority=90)
async def send_receipt(order_id):
    """An async, high-priority task: jumps ahead of the queued orders."""
    record("receipt", order_id)
    await asyncio.sleep(0.005)
    return f"receipt for order {order_id} sent"


@task  # on queue "emails": VTASKS_ROUTES (settings) sends it there
def send_newsletter(user_id):
    record("newsletter", user_id)


@task
def charge_card(order_id):
    """Always fails: fail-fast, so it lands in the dead-letter queue with its traceback."""
    record("charge-failed", order_id)
    raise RuntimeError(f"card declined for order {order_id}")


@task
def heartbeat():
    record("heartbeat", os.getpid())


@task
def nightly_report():
    record("nightly-report")


@task
def pack_item(order_id, item):
    """A member of the shipping group: the items are packed in parallel."""
    record("pack", order_id, item)
    return item


@task
def ship_order(packed, order_id):
    """The group's callback: the broker runs it once every item is packed, with their list."""
    record("ship", order_id, *packed)
    return f"order {order_id} shipped with {', '.join(packed)}"


@task
def notify_customer(message):
    """The chain's last step: gets ship_order's return value."""
    record("notify", message.replace(" ", "_"))
    return f"customer told: {message}"
