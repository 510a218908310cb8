"""Billing: plans from payment providers' subscriptions and orders."""
