"""Autopilot: targeting derived from creatives and a brief (docs/contract.md §7)."""
