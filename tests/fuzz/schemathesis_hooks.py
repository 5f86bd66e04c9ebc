"""Schemathesis hooks for chatq's contract test (tests/api/openapi.rs).

One check beyond schemathesis' own: a refused request (any 4xx) writes nothing. Before every
call the rows a request can create or delete are counted in the test's database; after a 4xx
the counts must be the same. Rows that workers write in the background (assistant messages,
batch lines turned into jobs, batch output files) are left out of the count, so only what the
request itself did is compared. Calls run one at a time (`--workers 1`), so no other request
interleaves.
"""

import os
import subprocess

import schemathesis

DATABASE_URL = os.environ["CHATQ_FUZZ_DATABASE_URL"]

# What an API request (not a worker) writes: one count per table.
COUNTS = """
select concat_ws(' ',
    (select count(*) from conversations),
    (select count(*) from messages where role = 'user'),
    (select count(*) from jobs where lane = 'interactive'),
    (select count(*) from feedback),
    (select count(*) from files where purpose not in ('batch_output', 'batch_errors')),
    (select count(*) from batches),
    (select count(*) from responses))
"""
TABLES = ["conversations", "user messages", "interactive jobs", "feedback", "files", "batches", "responses"]


# Methods that may write; GET and HEAD are not counted around.
WRITES = {"POST", "PUT", "PATCH", "DELETE"}

# One psql session for the whole run (a new process per call would cost more than the call).
_psql = subprocess.Popen(
    ["psql", "-X", "-A", "-t", "-q", DATABASE_URL],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
)


def counts() -> list[int]:
    _psql.stdin.write(COUNTS.strip().replace("\n", " ") + ";\n")
    _psql.stdin.flush()
    line = _psql.stdout.readline()
    if not line:
        raise RuntimeError("psql ended: is CHATQ_FUZZ_DATABASE_URL reachable?")
    return [int(n) for n in line.split()]


_before: dict[int, list[int]] = {}


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.method.upper() in WRITES:
        _before[id(case)] = counts()


@schemathesis.check
def refused_requests_write_nothing(ctx, response, case):
    before = _before.pop(id(case), None)
    if before is None or not 400 <= response.status_code < 500:
        return None
    after = counts()
    changed = [
        f"{name}: {b} -> {a}" for name, b, a in zip(TABLES, before, after) if a != b
    ]
    if changed:
        raise AssertionError(
            f"a request refused with {response.status_code} changed stored rows ({', '.join(changed)})"
        )
    return True
