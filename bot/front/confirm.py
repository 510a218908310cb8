"""Ask before losing paid work: an ephemeral question with Confirm and Cancel buttons.

Promises: only the member who asked can answer; Cancel, or no answer within
`CONFIRM_SECONDS`, changes nothing and says so; the buttons go away once answered. The
console answers from the command's `confirm:yes` option (the stand-in presses the
button); without it, the question expires at once, as an unanswered one would.
"""

from __future__ import annotations

import asyncio
from typing import Any

import discord

from bot.front.replies import COLOR_ERROR, reply

CONFIRM_SECONDS = 60.0


class ConfirmView(discord.ui.View):
    def __init__(self, user_id: int, timeout: float | None = None) -> None:
        super().__init__(timeout=CONFIRM_SECONDS if timeout is None else timeout)
        self.user_id = user_id
        self.value: bool | None = None  # None: no answer (timed out)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return interaction.user.id == self.user_id

    @discord.ui.button(label="Confirm", style=discord.ButtonStyle.danger)
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await self._answer(interaction, True)

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await self._answer(interaction, False)

    async def _answer(self, interaction: discord.Interaction, value: bool) -> None:
        self.value = value
        said = "Confirmed." if value else "Cancelled: nothing was changed."
        await interaction.response.edit_message(content=said, embed=None, view=None)
        self.stop()


async def confirmed(interaction: discord.Interaction, title: str, lost: list[str]) -> bool:
    """Ask `title`, listing what would be lost; True only if the member confirmed."""
    embed = discord.Embed(title=title, color=COLOR_ERROR)
    embed.description = "This cannot be undone. You would lose:\n" + "\n".join(
        f"• {line}" for line in lost
    )
    embed.set_footer(text=f"Confirm within {CONFIRM_SECONDS:.0f} seconds.")
    view = ConfirmView(interaction.user.id)
    await reply(interaction, embed=embed, view=view, ephemeral=True)
    try:
        # Our own deadline, not only the view's (which runs only once Discord's view
        # store holds it): no answer in time is a "no", wherever the view lives.
        await asyncio.wait_for(view.wait(), CONFIRM_SECONDS)
    except TimeoutError:
        view.stop()
    if view.value is None:
        try:
            await interaction.edit_original_response(
                content="⏱️ No answer in time: nothing was changed.", embed=None, view=None
            )
        except discord.HTTPException:
            pass  # the question is gone already; nothing changed either way
    return bool(view.value)


def press(view: Any, answer: str | None) -> Any:
    """For the stand-in: the button a console answer presses, or "expire" (no answer) or
    None (not a confirmation, or "wait": let its own timeout run)."""
    if not isinstance(view, ConfirmView) or answer == "wait":
        return None
    if answer is None:
        return "expire"
    yes = answer.strip().lower() in {"yes", "y", "true", "1", "confirm"}
    return view.confirm if yes else view.cancel
