"""/agent: create, list, show, edit and delete agents."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.agents import NAME_MAX, PROMPT_MAX, AgentSummary
from bot.core.repository import Agent
from bot.front.confirm import confirmed
from bot.front.replies import COLOR_OK, actor_of, reply
from cogs._base import FeatureCog, agent_names


class PersonaModal(discord.ui.Modal):
    """A long text field for the persona: slash options are one line only."""

    def __init__(self, cog: AgentsCog, name: str, current: str | None = None) -> None:
        super().__init__(title=f"Persona of {name}"[:45])
        self.cog = cog
        self.agent_name = name
        self.editing = current is not None
        self.prompt: discord.ui.TextInput[PersonaModal] = discord.ui.TextInput(
            label="Persona (system prompt)",
            custom_id="prompt",
            style=discord.TextStyle.long,
            default=current,
            max_length=PROMPT_MAX,
            placeholder="You are a patient astronomer who explains things simply.",
        )
        self.add_item(self.prompt)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        if self.editing:
            await self.cog.finish_edit(interaction, self.agent_name, self.prompt.value)
        else:
            await self.cog.finish_create(interaction, self.agent_name, self.prompt.value)

    # The item is BaseView's third argument, which Modal's own override leaves out.
    async def on_error(
        self,
        interaction: discord.Interaction[Any],
        error: Exception,
        item: discord.ui.Item[Any] | None = None,
        /,
    ) -> None:
        await interaction.client.tree.on_error(
            interaction,
            app_commands.CommandInvokeError(self.cog.agent, error),  # type: ignore[arg-type]
        )


def agent_embed(agent: Agent, avatar_url: str | None) -> discord.Embed:
    embed = discord.Embed(title=agent.name, description=agent.prompt[:4000], color=COLOR_OK)
    embed.add_field(name="Creator", value=f"<@{agent.creator_id}>")
    embed.add_field(
        name="Avatar",
        value={"generated": "AI-generated", "uploaded": "uploaded"}.get(
            agent.avatar_source or "", "none yet (`/avatar generate` or `/avatar upload`)"
        ),
    )
    if avatar_url:
        embed.set_thumbnail(url=avatar_url)
    return embed


class AgentsCog(FeatureCog):
    agent = app_commands.Group(name="agent", description="Create and manage AI agents")

    @agent.command(name="create", description="Create an agent (a persona with a system prompt)")
    @app_commands.describe(
        name="1 to 32 letters, digits or spaces",
        prompt="Its persona; leave empty to write it in a form",
    )
    async def create(
        self,
        interaction: discord.Interaction,
        name: app_commands.Range[str, 1, NAME_MAX],
        prompt: str | None = None,
    ) -> None:
        if prompt is None:
            await interaction.response.send_modal(PersonaModal(self, name))
            return
        await self.finish_create(interaction, name, prompt)

    async def finish_create(self, interaction: discord.Interaction, name: str, prompt: str) -> None:
        agent = await self.services.agents.create(actor_of(interaction), name, prompt)
        await reply(
            interaction,
            f"✅ Created **{agent.name}**. Give it a face with `/avatar generate` or "
            "`/avatar upload`, then talk to it with `/chat`.",
        )

    @agent.command(name="list", description="The agents of this server (or yours, in DMs)")
    async def list_(self, interaction: discord.Interaction) -> None:
        agents = await self.services.agents.list(actor_of(interaction))
        if not agents:
            await reply(
                interaction, "No agents yet. Create one with `/agent create`.", ephemeral=True
            )
            return
        lines = [f"• **{a.name}**: {' '.join(a.prompt.split())[:80]}" for a in agents]
        embed = discord.Embed(title=f"Agents ({len(agents)})", description="\n".join(lines)[:4000])
        await reply(interaction, embed=embed, ephemeral=True)

    @agent.command(name="info", description="Show an agent and its avatar")
    @app_commands.autocomplete(name=agent_names)
    async def info(self, interaction: discord.Interaction, name: str) -> None:
        agent = await self.services.agents.get(actor_of(interaction), name)
        url, file = self.bot.avatar_of(agent)
        kwargs: dict[str, Any] = {"embed": agent_embed(agent, url)}
        if file is not None:
            kwargs["file"] = file
        await reply(interaction, **kwargs)

    @agent.command(name="edit", description="Rewrite an agent's persona", extras={"modal": True})
    @app_commands.autocomplete(name=agent_names)
    async def edit(self, interaction: discord.Interaction, name: str) -> None:
        agent = await self.services.agents.get_editable(actor_of(interaction), name)
        await interaction.response.send_modal(PersonaModal(self, agent.name, agent.prompt))

    async def finish_edit(self, interaction: discord.Interaction, name: str, prompt: str) -> None:
        agent = await self.services.agents.edit(actor_of(interaction), name, prompt)
        await reply(interaction, f"✅ Updated **{agent.name}**'s persona.", ephemeral=True)

    @agent.command(name="delete", description="Delete an agent, its avatar and its documents")
    @app_commands.autocomplete(name=agent_names)
    async def delete(self, interaction: discord.Interaction, name: str) -> None:
        actor = actor_of(interaction)
        summary = await self.services.agents.summary(actor, name)
        if not await confirmed(interaction, f"Delete {summary.agent.name}?", self._losses(summary)):
            return
        agent = await self.services.agents.delete(actor, name)
        self.services.avatars.remove_file(agent)
        await reply(interaction, f"🗑️ Deleted **{agent.name}**.", ephemeral=True)

    def _losses(self, summary: AgentSummary) -> list[str]:
        agent = summary.agent
        lost = [f"**{agent.name}** and its persona, and its conversations"]
        spent = summary.avatar_tokens
        if agent.avatar_source == "generated":
            lost.append(f"its generated avatar ({spent:,} tokens were spent generating avatars)")
        elif agent.avatar_source == "uploaded":
            earlier = f" ({spent:,} tokens were spent generating earlier ones)" if spent else ""
            lost.append(f"its uploaded avatar{earlier}")
        if summary.documents:
            lost.append(
                f"{summary.documents:,} document{'' if summary.documents == 1 else 's'} "
                f"and {summary.chunks:,} chunks "
                f"({summary.document_tokens:,} tokens were spent learning them)"
            )
        lost.append("Tokens already spent are not refunded.")
        return lost


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(AgentsCog(bot))
