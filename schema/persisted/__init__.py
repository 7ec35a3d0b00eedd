"""Registered documents: the GraphQL documents frontends ship, known to the gateway by SHA-256."""

from __future__ import annotations

from pathlib import Path

PERSISTED_DIR = Path(__file__).resolve().parent


def load_registered_documents(folder: Path = PERSISTED_DIR) -> dict[str, str]:
    """Every `<name>.graphql` in the folder, by name."""
    return {
        path.stem: path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.graphql"))
    }
