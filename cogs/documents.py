"""/docs: teach an agent from documents (metered embeddings), list and remove them."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import InvalidInput
from bot.front.replies import COLOR_OK, actor_of, reply
from cogs._base import FeatureCog, agent_names

MB = 1_048_576


class DocumentsCog(FeatureCog):
    docs = app_commands.Group(name="docs", description="Documents an agent learns from")

    async def document_names(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        agent = getattr(interaction.namespace, "agent", None)
        if not agent:
            return []
        try:
            documents = await self.services.documents.list(actor_of(interaction), agent)
        except Exception:  # autocomplete must never error out; the command re-checks
            return []
        typed = current.casefold()
        return [
            app_commands.Choice(name=d.name[:100], value=str(d.id))
            for d in documents
            if typed in d.name.casefold()
        ][:25]

    @docs.command(
        name="upload",
        description="Teach an agent from a PDF, Word, EPUB, HTML, Markdown or text file",
    )
    @app_commands.describe(
        agent="The agent", file=".pdf, .docx, .epub, .html, .md or .txt, up to 10 MB"
    )
    @app_commands.autocomplete(agent=agent_names)
    async def upload(
        self, interaction: discord.Interaction, agent: str, file: discord.Attachment
    ) -> None:
        interaction.extras["operation"] = "Learning this document"
        actor = actor_of(interaction)
        await self.services.agents.get_editable(actor, agent)
        limit = self.services.config.limits.max_document_bytes
        if file.size > limit:
            raise InvalidInput(
                f"That file is {file.size / MB:.1f} MB; "
                f"documents can be at most {limit / MB:.0f} MB."
            )
        await interaction.response.defer(thinking=True)

        async def progress(text: str) -> None:
            await interaction.edit_original_response(content=f"📄 {file.filename[:100]}: {text}")

        data = await file.read()
        result = await self.services.documents.upload(actor, agent, file.filename, data, progress)
        d = result.document
        embed = discord.Embed(
            title=f"✅ Learned {d.name}",
            description=(
                f"{d.pages:,} pages, {d.chunks:,} chunks.\n"
                f"Used {result.charged:,} tokens. {result.available:,} remaining."
            ),
            color=COLOR_OK,
        )
        await interaction.edit_original_response(content=None, embed=embed)

    @docs.command(name="list", description="The documents an agent has learned")
    @app_commands.autocomplete(agent=agent_names)
    async def list_(self, interaction: discord.Interaction, agent: str) -> None:
        documents = await self.services.documents.list(actor_of(interaction), agent)
        if not documents:
            await reply(
                interaction,
                f"{agent[:32]} has no documents yet. Add one with `/docs upload`.",
                ephemeral=True,
            )
            return
        lines = [
            f"`{d.id}` **{d.name}**: {d.pages:,} pages, {d.chunks:,} chunks, "
            f"{d.tokens:,} tokens, {d.created_at[:10]}"
            for d in documents
        ]
        embed = discord.Embed(
            title=f"Documents ({len(documents)})", description="\n".join(lines)[:4000]
        )
        await reply(interaction, embed=embed, ephemeral=True)

    @docs.command(
        name="remove", description="Forget a document (tokens already used are not refunded)"
    )
    @app_commands.autocomplete(agent=agent_names, document=document_names)
    async def remove(self, interaction: discord.Interaction, agent: str, document: str) -> None:
        removed = await self.services.documents.remove(actor_of(interaction), agent, document)
        await reply(
            interaction,
            f"🗑️ Removed **{removed.name}** and its {removed.chunks:,} chunks. "
            "Tokens already charged for it are not refunded.",
            ephemeral=True,
        )


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(DocumentsCog(bot))
