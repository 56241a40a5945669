"""Helpers for the test suite that are not tests themselves (the fault-injecting GCS proxy)."""
