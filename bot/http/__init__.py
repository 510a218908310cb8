"""The aiohttp sidecar: webhooks, health, avatars."""
