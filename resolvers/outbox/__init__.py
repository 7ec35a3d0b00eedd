"""Outgoing events: derived from committed changes, kept in an outbox, delivered as webhooks."""
