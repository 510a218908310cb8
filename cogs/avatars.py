"""/avatar: generate an agent's avatar with the image API (metered) or upload one (free)."""

from __future__ import annotations

import io

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.avatars.service import STYLE_MAX, AvatarResult
from bot.errors import InvalidInput
from bot.front.replies import COLOR_OK, actor_of, reply
from cogs._base import FeatureCog, agent_names

MB = 1_048_576


def _result_embed(title: str, result: AvatarResult) -> tuple[discord.Embed, discord.File]:
    if result.charged:
        text = f"Used {result.charged:,} tokens. {result.available:,} remaining."
    else:
        text = f"No tokens used. {result.available:,} remaining."
    embed = discord.Embed(
        title=title, description=f"**{result.agent.name}**\n{text}", color=COLOR_OK
    )
    embed.set_image(url="attachment://avatar.png")
    return embed, discord.File(io.BytesIO(result.png), filename="avatar.png")


class AvatarsCog(FeatureCog):
    avatar = app_commands.Group(name="avatar", description="Give an agent a face")

    @avatar.command(
        name="generate", description="Generate an avatar with AI (a flat price in tokens)"
    )
    @app_commands.describe(agent="The agent", style="Optional: a style, e.g. watercolor, pixel art")
    @app_commands.autocomplete(agent=agent_names)
    async def generate(
        self,
        interaction: discord.Interaction,
        agent: str,
        style: app_commands.Range[str, 0, STYLE_MAX] | None = None,
    ) -> None:
        interaction.extras["operation"] = "Avatar generation"
        actor = actor_of(interaction)
        await self.services.agents.get_editable(actor, agent)
        await self.services.avatars.precheck(actor)
        await interaction.response.defer(thinking=True)
        result = await self.services.avatars.generate(actor, agent, style)
        embed, file = _result_embed("✅ Avatar generated successfully!", result)
        await reply(interaction, embed=embed, file=file)

    @avatar.command(
        name="upload", description="Upload an avatar image (free): PNG, JPEG, WEBP or GIF"
    )
    @app_commands.describe(agent="The agent", image="The picture, up to 8 MB")
    @app_commands.autocomplete(agent=agent_names)
    async def upload(
        self, interaction: discord.Interaction, agent: str, image: discord.Attachment
    ) -> None:
        actor = actor_of(interaction)
        await self.services.agents.get_editable(actor, agent)
        limit = self.services.config.limits.max_avatar_bytes
        if image.size > limit:
            raise InvalidInput(
                f"That image is {image.size / MB:.1f} MB; "
                f"avatars can be at most {limit / MB:.0f} MB."
            )
        await interaction.response.defer(thinking=True)
        result = await self.services.avatars.upload(actor, agent, await image.read())
        embed, file = _result_embed("✅ Avatar uploaded!", result)
        await reply(interaction, embed=embed, file=file)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(AvatarsCog(bot))
