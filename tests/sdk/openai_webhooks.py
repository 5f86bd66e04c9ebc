"""Verifies chatq's webhook deliveries with the official `openai` package, unpatched.

Run by tests/api/webhooks.rs with WEBHOOK_SECRET (the endpoint's `whsec_…` secret) and
DELIVERIES: a JSON list of deliveries as a receiver captured them, each {"headers": {...},
"body": "<the raw body>", "type": "<expected event type>", "data_id": "<expected data.id>"}.
`client.webhooks.unwrap` must verify each signature and parse each body; a tampered body, another
secret and a stale timestamp must be refused. Exits non-zero on the first failed check.
"""

import base64
import json
import os
import sys
import time

from openai import InvalidWebhookSignatureError, OpenAI

SECRET = os.environ["WEBHOOK_SECRET"]
DELIVERIES = json.loads(os.environ["DELIVERIES"])


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def refused(body, headers, secret, what):
    try:
        client.webhooks.unwrap(body, headers, secret=secret)
    except InvalidWebhookSignatureError:
        check(True, what)
        return
    check(False, what)


client = OpenAI()
check(len(DELIVERIES) > 0, "there are deliveries to verify")
for delivery in DELIVERIES:
    headers, body = delivery["headers"], delivery["body"]
    event = client.webhooks.unwrap(body, headers, secret=SECRET)
    check(event.type == delivery["type"], f"{headers['webhook-id']} is a {delivery['type']} event ({event.type})")
    check(event.id == headers["webhook-id"], "the event's id is its webhook-id")
    check(event.data.id == delivery["data_id"], f"data.id names {delivery['data_id']} ({event.data.id})")
    check(abs(event.created_at - time.time()) < 600, "created_at is a recent Unix time")
    refused(body.replace("}", " }", 1), headers, SECRET, "a tampered body is refused")
    other = "whsec_" + base64.b64encode(b"another secret, 32 bytes long...").decode()
    refused(body, headers, other, "another secret is refused")
    stale = dict(headers, **{"webhook-timestamp": str(int(time.time()) - 3600)})
    refused(body, stale, SECRET, "a stale timestamp is refused")

print("all webhook checks passed")
