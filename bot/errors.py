"""Domain errors of the application. Each carries a sentence a member understands;
a cog shows `user_message` and nothing else (never raw exception text)."""

from __future__ import annotations

from ledger import InsufficientTokens, LedgerError

__all__ = [
    "AIMisconfigured",
    "AIUnavailable",
    "AIUnusable",
    "AgentLimitReached",
    "BotError",
    "ContentRejected",
    "InsufficientTokens",
    "InvalidInput",
    "LedgerError",
    "NotFound",
    "PermissionDenied",
]


class BotError(Exception):
    """Base of the errors a user may see. `user_message` is safe to show."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


class InvalidInput(BotError):
    """Bad input from the user: a name, a file, an option."""


class NotFound(BotError):
    """The agent, document or account asked for does not exist (or is not theirs)."""


class PermissionDenied(BotError):
    """The user may not do this here."""


class AgentLimitReached(BotError):
    def __init__(self, limit: int, plan: str, pro_agents: str = "unlimited agents") -> None:
        # pro_agents: the Pro plan's agents as configured ("unlimited agents", "20 agents")
        more = f"upgrade to Pro for {pro_agents}" if plan != "pro" else "make room"
        super().__init__(
            f"This account has reached the {plan} plan's limit of {limit} agents. "
            f"Delete one, or {more}."
        )
        self.limit = limit
        self.plan = plan


class ContentRejected(BotError):
    """The AI provider refused the prompt on content-policy grounds. Nothing was charged."""

    def __init__(self, what: str = "prompt") -> None:
        super().__init__(
            f"The AI service declined this {what} under its content policy. "
            "Please rephrase it and try again. Nothing was charged."
        )


class AIMisconfigured(BotError):
    """The AI service refused our key, its permissions or our model: not the member's
    problem, and no retry will help. The operator is told in the log."""

    def __init__(self) -> None:
        super().__init__(
            "The bot's AI service is not set up correctly; the operator has been told. "
            "Nothing was charged."
        )


class AIUnavailable(BotError):
    """Rate limit, 5xx, timeout, connection error, or an answer we cannot use."""

    def __init__(self) -> None:
        super().__init__(
            "The AI service is busy right now; nothing was charged. Please try again shortly."
        )


class AIUnusable(AIUnavailable):
    """The AI service answered with figures we cannot trust (usage missing, negative or not
    a whole number): we cannot know what the call cost, so it counts as failed."""

    def __init__(self) -> None:
        BotError.__init__(
            self,
            "The AI service sent an answer we could not use; nothing was charged. "
            "Please try again later.",
        )
