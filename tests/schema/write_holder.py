"""Another process holding a SQLite file: run by tests/schema/test_sqlite_reads.py.

    python write_holder.py write PATH USER_ID CREDITS   # an open write transaction
    python write_holder.py exclusive PATH               # the file locked for everyone else

`write` sets the user's stored balance in a write transaction (BEGIN IMMEDIATE), says `held`,
then commits or rolls back as the next line of stdin says, and says `done`. `exclusive` takes
the file in exclusive locking mode (no other connection can even read it), says `held`, and
lets go when a line arrives, saying `released`.
"""

from __future__ import annotations

import sqlite3
import sys


def main(argv: list[str]) -> None:
    mode, path = argv[0], argv[1]
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)
    if mode == "write":
        user_id, credits = int(argv[2]), int(argv[3])
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(
            "UPDATE users SET credits_available = ? WHERE id = ?", (credits, user_id)
        )
        print("held", flush=True)
        decision = sys.stdin.readline().strip()
        connection.execute("COMMIT" if decision == "commit" else "ROLLBACK")
        print("done", flush=True)
    elif mode == "exclusive":
        connection.execute("PRAGMA locking_mode=EXCLUSIVE")
        connection.execute("BEGIN EXCLUSIVE")
        print("held", flush=True)
        sys.stdin.readline()
        connection.execute("ROLLBACK")
        connection.close()
        print("released", flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    sys.stdin.readline()  # until the test closes stdin: the process ends when the test says


if __name__ == "__main__":
    main(sys.argv[1:])
