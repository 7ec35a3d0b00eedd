"""Saved queries: named GraphQL documents in the repo, run by id (all dashboards may run)."""

from __future__ import annotations

from pathlib import Path

SAVED_DIR = Path(__file__).resolve().parent


def load_saved_queries(folder: Path = SAVED_DIR) -> dict[str, str]:
    """Every `<id>.graphql` in the folder, by id."""
    return {
        path.stem: path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.graphql"))
    }
