"""`python -m tests.perf`: see tests/perf/run.py for the flags."""

from tests.perf.run import main

if __name__ == "__main__":
    raise SystemExit(main())
