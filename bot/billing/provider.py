"""What a payment provider module offers the rest of the application."""

from __future__ import annotations

from typing import Protocol

from bot.billing.states import BillingEvent


class InvalidEvent(ValueError):
    """A signed body that is not an event of the provider at all (answered 400)."""


class Provider(Protocol):
    name: str

    def verify(self, body: bytes, signature: str) -> bool:
        """The body is signed by the provider (constant-time comparison)."""
        ...

    def parse(self, body: bytes) -> BillingEvent:
        """The event in neutral form; InvalidEvent if it is not one. An event whose
        fields are missing or mistyped comes back with `invalid` set, to be kept."""
        ...
