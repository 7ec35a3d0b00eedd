"""Read-only views for people: metrics rollups, CRO analytics, the support runbook's diagnosis."""
