"""Compiled reads by key on SQLite run on the loop's own read-only connections
(gateway.local_reads): the same answers as graphql-core, one snapshot per request, every
committed write seen, no uncommitted one, never blocked by a writer, and a file that cannot be
read that way falls back to the normal path.

Other processes are real ones: tests/schema/write_holder.py holds the file.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from graphql import parse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event

from gateway.app import create_app
from gateway.compiled import execution
from gateway.compiled.plan import compile_operation
from gateway.runtime import Runtime
from schema.context import Principal
from tests.conftest import StatementCounter
from tests.factories import make_user
from tests.gateway.gateway_process import serve
from tests.schema.conftest import JWT_SECRET, user_token
from tests.schema.test_compiled import SCHEMA, Document, both, context_for, seed, selection_set

HOLDER = Path(__file__).with_name("write_holder.py")
VIEWER = "query Q { viewer { id tier credits { available nextExpiry } } }"
GRANTS = "query Q { viewer { credits { available grants { id remaining expiresAt } } } }"


@pytest.fixture
def backend() -> str:
    # The local reads are SQLite's; PostgreSQL's compiled reads are covered by test_compiled.
    return "sqlite"


def path_of(runtime: Runtime) -> str:
    return runtime.db.engine.url.database or ""


class Checkouts:
    """Counts the pool's checkouts: a read on the local connections takes none."""

    def __init__(self, runtime: Runtime) -> None:
        self.count = 0
        self._engine = runtime.db.engine.sync_engine
        event.listen(self._engine, "checkout", self._on_checkout)

    def _on_checkout(self, *_: Any) -> None:
        self.count += 1

    def close(self) -> None:
        event.remove(self._engine, "checkout", self._on_checkout)


@pytest.fixture
def checkouts(runtime: Runtime) -> Iterator[Checkouts]:
    counter = Checkouts(runtime)
    yield counter
    counter.close()


@pytest.fixture
async def http(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime, executor="both")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway.test"
    ) as client:
        yield client


async def viewer_read(http: httpx.AsyncClient, user_id: int, query: str = VIEWER) -> Any:
    headers = {"Authorization": f"Bearer {user_token(user_id)}"}
    response = await http.post("/graphql", json={"query": query}, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    return body["data"]["viewer"]


class Holder:
    """tests/schema/write_holder.py as a process of its own."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(HOLDER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    async def says(self, expected: str) -> None:
        line = await asyncio.to_thread(self.process.stdout.readline)  # type: ignore[union-attr]
        assert line.strip() == expected, (line, self.process.poll())

    async def tell(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def end(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(timeout=30) == 0


@st.composite
def user_documents(draw: st.DrawFn, emails: list[str], ids: list[int]) -> tuple[str, str]:
    """A viewer or user(id/email) read with a random User selection; the root's role."""
    doc = Document()
    body = draw(selection_set("User", doc, 2))
    root = draw(st.sampled_from(["viewer", "id", "email"]))
    if root == "viewer":
        field, role = "viewer", "viewer"
    elif root == "id":
        field, role = f'user(id: "{draw(st.sampled_from(ids))}")', "support"
    else:
        email = draw(st.sampled_from(emails))
        # As support types them: any case, stray spaces.
        email = draw(st.sampled_from([email, email.upper(), f"  {email} "]))
        field, role = f'user(email: "{email}")', "support"
    return doc.text(f"{field} {body}"), role


@pytest.mark.slow
async def test_reads_on_loop_answer_as_graphql_core_on_the_local_reads(runtime, clock) -> None:
    emails, ids = await seed(runtime, clock)
    loop = asyncio.get_running_loop()
    local = []

    async def check(query: str, role: str) -> None:
        principal = Principal(role=role, name="p", user_id=ids[1] if role == "viewer" else None)
        plan = compile_operation(SCHEMA, parse(query), "Q")
        assert plan is not None, query
        counter = Checkouts(runtime)
        try:
            compiled = await execution.execute(plan, context_for(runtime, principal), {})
        finally:
            counter.close()
        if plan.reads_on_loop:
            assert counter.count == 0, query  # no pool connection: read on the loop
            local.append(query)
        _, result = await both(runtime, principal, query, {})
        if result.errors:
            assert compiled is None, (query, result.errors)
        else:
            assert orjson.dumps(compiled) == orjson.dumps(result.data), query

    @settings(
        max_examples=80,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(document=user_documents(emails, ids))
    def run(document: tuple[str, str]) -> None:
        asyncio.run_coroutine_threadsafe(check(*document), loop).result()

    await asyncio.to_thread(run)
    assert len(local) > 20


async def test_reads_on_loop_take_no_pool_connection_and_count_their_statements(
    runtime, make_key, checkouts
) -> None:
    user = await make_user(runtime, credits_granted=5)
    support = await make_key("support")
    # Not "both": graphql-core would read too; only the compiled plans are counted here.
    app = create_app(runtime)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway.test"
    ) as plain:
        by_email = {"query": f'{{ user(email: "{user.email.upper()}") {{ id tier }} }}'}
        as_support = {"Authorization": f"Bearer {support}"}
        # The key is looked up once, then cached: that read is not the plan's.
        assert (await plain.post("/graphql", json=by_email, headers=as_support)).is_success
        counter = StatementCounter(runtime.db)
        checkouts.count = 0
        try:
            for _ in range(3):
                assert (await viewer_read(plain, user.id))["credits"]["available"] == 5
                response = await plain.post("/graphql", json=by_email, headers=as_support)
                assert response.json() == {"data": {"user": {"id": str(user.id), "tier": "free"}}}
        finally:
            counter.close()
    # One statement per read, as on the pool, and no pool connection taken.
    assert counter.count == 6
    assert all("FROM users" in s for s in counter.statements)
    assert checkouts.count == 0
    # A page of a user's history is not a point read: that plan reads on the pool.
    plan = compile_operation(
        SCHEMA, parse("query Q { viewer { creditEvents { pageInfo { hasNextPage } } } }"), "Q"
    )
    assert plan is not None
    principal = Principal(role="viewer", name="u", user_id=user.id)
    assert await execution.execute(plan, context_for(runtime, principal), {}) is not None
    assert not plan.reads_on_loop
    assert checkouts.count == 1


async def test_a_request_reads_in_one_snapshot(runtime, clock) -> None:
    user = await make_user(runtime, credits_granted=5, expires_at=clock.now.replace(year=2999))
    path = path_of(runtime)
    writer = sqlite3.connect(path, timeout=30, isolation_level=None)
    written: list[str] = []

    def commit_between_statements(*args: Any) -> None:
        # Another connection commits right after the plan's first statement (the user's row):
        # its second (the grants) must not see it.
        if not written and "FROM users" in str(args[2]):
            writer.execute("UPDATE credit_grants SET remaining = 4 WHERE user_id = ?", (user.id,))
            written.append("grants")

    engine = runtime.db.engine.sync_engine
    event.listen(engine, "after_cursor_execute", commit_between_statements)
    try:
        plan = compile_operation(SCHEMA, parse(GRANTS), "Q")
        assert plan is not None and plan.reads_on_loop
        principal = Principal(role="viewer", name="u", user_id=user.id)
        data = await execution.execute(plan, context_for(runtime, principal), {})
    finally:
        event.remove(engine, "after_cursor_execute", commit_between_statements)
        writer.close()
    assert written == ["grants"]
    assert data is not None
    assert [g["remaining"] for g in data["viewer"]["credits"]["grants"]] == [5]
    # The next request begins after that commit: it sees it.
    data = await execution.execute(plan, context_for(runtime, principal), {})
    assert data is not None
    assert [g["remaining"] for g in data["viewer"]["credits"]["grants"]] == [4]


async def test_a_write_committed_by_another_process_is_seen_by_the_next_request(
    runtime, http
) -> None:
    user = await make_user(runtime, credits_granted=5)
    # The local connection is opened and kept: the next request reuses it.
    assert (await viewer_read(http, user.id))["credits"]["available"] == 5
    holder = Holder("write", path_of(runtime), str(user.id), "41")
    try:
        await holder.says("held")
        await holder.tell("commit")
        await holder.says("done")
        answers = await asyncio.gather(*(viewer_read(http, user.id) for _ in range(8)))
    finally:
        holder.end()
    assert {a["credits"]["available"] for a in answers} == {41}


async def test_an_open_write_transaction_neither_blocks_reads_nor_shows_in_them(
    runtime, http, checkouts
) -> None:
    user = await make_user(runtime, credits_granted=5)
    assert (await viewer_read(http, user.id))["credits"]["available"] == 5
    holder = Holder("write", path_of(runtime), str(user.id), "77")
    try:
        await holder.says("held")
        started = time.monotonic()
        answers = await asyncio.gather(*(viewer_read(http, user.id) for _ in range(16)))
        # Far below the busy timeout (30 s) a blocked reader would wait.
        assert time.monotonic() - started < 5
        assert {a["credits"]["available"] for a in answers} == {5}
        await holder.tell("rollback")
        await holder.says("done")
        assert (await viewer_read(http, user.id))["credits"]["available"] == 5
    finally:
        holder.end()
    holder = Holder("write", path_of(runtime), str(user.id), "77")
    try:
        await holder.says("held")
        assert (await viewer_read(http, user.id))["credits"]["available"] == 5
        await holder.tell("commit")
        await holder.says("done")
        assert (await viewer_read(http, user.id))["credits"]["available"] == 77
    finally:
        holder.end()


async def test_a_locked_file_falls_back_to_the_pool_without_a_500(runtime, http) -> None:
    user = await make_user(runtime, credits_granted=5)
    # Nobody else has the file open, so another process can take it in exclusive mode.
    await runtime.db.engine.dispose()
    assert runtime.db.local_reads is not None
    runtime.db.local_reads.close()
    holder = Holder("exclusive", path_of(runtime))
    try:
        await holder.says("held")
        request = asyncio.create_task(viewer_read(http, user.id))
        # The local read fails at once (busy); the fallback waits on aiosqlite's thread, so
        # the loop keeps running meanwhile.
        started = time.monotonic()
        await asyncio.sleep(0.5)
        assert time.monotonic() - started < 1.5
        assert not request.done()
        await holder.tell("release")
        await holder.says("released")
        answer = await asyncio.wait_for(request, timeout=30)
    finally:
        holder.end()
    assert answer["credits"]["available"] == 5
    # And the local reads open a fresh connection for the next request.
    assert (await viewer_read(http, user.id))["credits"]["available"] == 5


async def test_a_file_the_local_reads_cannot_open_falls_back(runtime, http, tmp_path) -> None:
    user = await make_user(runtime, credits_granted=5)
    assert runtime.db.local_reads is not None
    runtime.db.local_reads.close()
    # The pool's connections keep the file open; a new read-only open finds no file there.
    path, moved = path_of(runtime), str(tmp_path / "moved.db")
    os.replace(path, moved)
    try:
        answer = await viewer_read(http, user.id)
    finally:
        os.replace(moved, path)
    assert answer["credits"]["available"] == 5


async def test_two_gateway_processes_read_every_write_the_other_committed(
    database_url, tmp_path
) -> None:
    # Real uvicorn processes on one file: grants through one, reads through the other.
    with (
        serve(database_url, tmp_path / "writer.log", JWT_SECRET=JWT_SECRET) as writer,
        serve(database_url, tmp_path / "reader.log", JWT_SECRET=JWT_SECRET) as reader,
    ):
        support = writer.create_key("support", "two-processes")
        created = writer.cli("user", "create", "two@example.com")
        assert created.returncode == 0, created.stderr
        shown = writer.cli("user", "show", "two@example.com", "--json")
        token = user_token(orjson.loads(shown.stdout)["user_id"])
        viewer = {"query": "{ viewer { credits { available } } }"}

        async with httpx.AsyncClient(timeout=30) as client:

            async def read() -> int:
                response = await client.post(
                    f"{reader.base}/graphql",
                    json=viewer,
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert response.status_code == 200, response.text
                return response.json()["data"]["viewer"]["credits"]["available"]

            start = await read()
            done = asyncio.Event()

            async def keep_reading() -> list[int]:
                seen = []
                while not done.is_set():
                    seen.append(await read())
                return seen

            readers = [asyncio.create_task(keep_reading()) for _ in range(8)]
            try:
                for n in range(1, 11):
                    granted = await client.post(
                        f"{writer.base}/graphql",
                        json={
                            "query": "mutation ($i: GrantCreditsInput!) { grantCredits(input: $i)"
                            " { __typename } }",
                            "variables": {
                                "i": {"email": "two@example.com", "amount": 1, "reason": "t"}
                            },
                        },
                        headers={"Authorization": f"Bearer {support}"},
                    )
                    assert granted.json()["data"]["grantCredits"]["__typename"] == "CreditChange"
                    # Committed before this read began: the other process shows it.
                    assert await read() == start + n
            finally:
                done.set()
                histories = await asyncio.gather(*readers)
    for seen in histories:
        assert seen, "each reader read while the grants went on"
        # Every answer is a committed state, and no reader goes back in time.
        assert seen == sorted(seen)
        assert set(seen) <= set(range(start, start + 11))
