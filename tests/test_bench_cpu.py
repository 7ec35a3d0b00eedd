"""The benchmark's CPU per request counts every process of a server, a launcher's children too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from bench.gcwatch import cpu_seconds, tree_cpu_seconds

BURN = "import time\nend = time.process_time() + 30\nwhile time.process_time() < end: pass\n"


def test_a_launchers_busy_child_is_summed_with_it() -> None:
    # A shell waiting on a Python child that burns CPU: the shell itself uses next to none.
    launcher = subprocess.Popen(
        ["sh", "-c", f'{sys.executable} -c "$0"', BURN], start_new_session=True
    )
    try:
        time.sleep(1.0)
        own = cpu_seconds(launcher.pid)
        total = tree_cpu_seconds(launcher.pid)
        assert own is not None and total is not None
        assert own < 0.2 <= total
    finally:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()


def test_a_process_that_is_gone_has_no_cpu_time() -> None:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    assert tree_cpu_seconds(done.pid) is None
