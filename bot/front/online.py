"""`python -m bot check --online`: ask each service `run` depends on whether it accepts
our credentials and knows our settings, one line each. Only services whose keys are set
are asked; any failure is a `missing:` line (check then exits 1), never a traceback.

- Discord: `GET /users/@me` with the bot token.
- The AI API: the models list; are the configured chat, embedding and image models there?
- LemonSqueezy (with an API key): the configured store and the Pro variant."""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp
import openai

from bot.config import Config

DISCORD_API = "https://discord.com/api/v10"
TIMEOUT = aiohttp.ClientTimeout(total=15)


@dataclass
class Report:
    said: list[str] = field(default_factory=list)  # what answered well
    missing: list[str] = field(default_factory=list)  # what run would lack


async def probe(config: Config) -> Report:
    report = Report()
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        await _discord(config, http, report)
        await _lemonsqueezy(config, http, report)
    await _ai(config, report)
    return report


async def _discord(config: Config, http: aiohttp.ClientSession, report: Report) -> None:
    token = config.secrets.discord_token
    if token is None:
        return
    headers = {"Authorization": f"Bot {token.get_secret_value()}"}
    try:
        async with http.get(f"{DISCORD_API}/users/@me", headers=headers) as response:
            if response.status == 401:
                report.missing.append("Discord refused DISCORD_TOKEN (401): copy it again")
            elif response.status != 200:
                report.missing.append(f"Discord answered {response.status} to /users/@me")
            else:
                me = await response.json()
                report.said.append(f"discord: ok, the bot is {me.get('username')} ({me.get('id')})")
    except (aiohttp.ClientError, TimeoutError) as error:
        report.missing.append(f"Discord could not be reached ({type(error).__name__})")


async def _lemonsqueezy(config: Config, http: aiohttp.ClientSession, report: Report) -> None:
    key = config.secrets.lemonsqueezy_api_key
    shop = config.lemonsqueezy
    if key is None:
        return
    headers = {
        "Authorization": f"Bearer {key.get_secret_value()}",
        "Accept": "application/vnd.api+json",
    }
    base = shop.api_url.rstrip("/")
    for kind, key_name, value in (
        ("stores", "lemonsqueezy.store_id", shop.store_id),
        ("variants", "lemonsqueezy.variant_id", shop.variant_id),
    ):
        if not value:
            report.missing.append(f"{key_name} is not set (LEMONSQUEEZY_API_KEY is)")
            continue
        try:
            async with http.get(f"{base}/v1/{kind}/{value}", headers=headers) as response:
                if response.status == 401:
                    report.missing.append("LemonSqueezy refused LEMONSQUEEZY_API_KEY (401)")
                    return
                if response.status != 200:
                    report.missing.append(
                        f"LemonSqueezy has no {key_name} {value} ({response.status})"
                    )
                else:
                    report.said.append(f"lemonsqueezy: {key_name} {value} ok")
        except (aiohttp.ClientError, TimeoutError) as error:
            report.missing.append(f"LemonSqueezy could not be reached ({type(error).__name__})")
            return


async def _ai(config: Config, report: Report) -> None:
    key = config.secrets.openai_api_key
    if key is None:
        return
    settings = config.openai
    client = openai.AsyncOpenAI(
        api_key=key.get_secret_value(),
        base_url=settings.base_url or None,  # None: the SDK's own default
        max_retries=0,
        timeout=15,
    )
    try:
        known = {model.id async for model in client.models.list()}
    except openai.AuthenticationError:
        report.missing.append("the AI API refused OPENAI_API_KEY (401)")
        return
    except openai.OpenAIError as error:
        report.missing.append(f"the AI API's models list failed ({type(error).__name__})")
        return
    finally:
        await client.close()
    for name in ("chat_model", "embedding_model", "image_model"):
        model = getattr(settings, name)
        if model in known:
            report.said.append(f"ai: openai.{name} {model} ok")
        else:
            report.missing.append(f"the AI API has no model {model} (openai.{name})")
