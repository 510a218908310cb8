"""LemonSqueezy: checkouts, the customer portal, webhook events."""
