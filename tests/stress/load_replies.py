"""How a member would read the answer to one interaction, for the load and multi-process
suites: a success, the designed refusal, the designed "AI busy" message, or an error.

Shared by the in-process load test and the multi-process worker (a child process), so
both judge replies by the very same rule.
"""

from __future__ import annotations

from bot.front.standin import Sent

INSUFFICIENT = "❌ Insufficient Tokens"
AI_BUSY = "The AI service is busy right now; nothing was charged."
CHAT_OK = "tokens used,"  # the footer of a chat answer: "-# N tokens used, M remaining"
AVATAR_OK = "✅ Avatar generated successfully!"


def outcome(kind: str, sent: list[Sent]) -> str:
    """'ok', 'insufficient', 'ai_busy', or 'error' (anything a member should never see)."""
    body = "\n".join(s.text() for s in sent if s.kind != "defer")
    if INSUFFICIENT in body:
        return "insufficient"
    if AI_BUSY in body:
        return "ai_busy"
    success = CHAT_OK if kind == "chat" else AVATAR_OK
    if success in body and "❌" not in body:
        return "ok"
    return "error"


def shown(sent: list[Sent]) -> str:
    """What the member read, on one line (for failure messages and reports)."""
    return " | ".join(f"{s.kind}: {s.text()}" for s in sent)[:500]
