"""Webhook routes of the sidecar, one module per payment provider."""
