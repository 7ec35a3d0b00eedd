"""The benchmark: `python -m bench` (issue 6). Not collected by pytest.

The gateway against a hand-written baseline (and PostGraphile for the viewer read), served by
uvicorn, driven by wrk (or bench.load) from another process, on PostgreSQL and SQLite.
Nothing here is named test_*.py on purpose: timing is a benchmark's job, not a test's.
"""
