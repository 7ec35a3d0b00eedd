"""The benchmark: `python -m tests.perf` (issue 6). Not collected by pytest.

The gateway against a hand-written baseline (and PostGraphile for the viewer read), served by
uvicorn, driven by wrk (or tests.perf.load) from another process, on PostgreSQL and SQLite.
Nothing here is named test_*.py on purpose: timing is a benchmark's job, not a test's.
"""
