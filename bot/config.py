"""Configuration: `config.toml` (or `--config PATH`, or `BOT_CONFIG`), every key
overridable by `BOT_<SECTION>__<KEY>`, secrets only from the environment or `.env`.

`load()` returns a validated `Config` or raises `ConfigError` whose message is one
line naming the key at fault; the CLI prints it and exits 2.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from ledger import Plan

DEFAULT_PATH = Path("config.toml")


class ConfigError(Exception):
    """A configuration problem, as one line naming the key or the file."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlanSettings(_Section):
    monthly_tokens: int = Field(ge=0)
    max_agents: int = Field(ge=0)  # 0 means unlimited
    price_label: str = ""

    # What members read about a plan, written once from these figures (issue 16: no
    # figure of a plan is written out anywhere else).
    @property
    def agents_text(self) -> str:
        if self.max_agents == 0:
            return "unlimited agents"
        return f"{self.max_agents:,} agent{'s' if self.max_agents != 1 else ''}"

    @property
    def summary(self) -> str:
        """ "10,000,000 tokens a month and unlimited agents"."""
        return f"{self.monthly_tokens:,} tokens a month and {self.agents_text}"


def short_tokens(amount: int) -> str:
    """10_000_000 -> "10M", 250_000 -> "250K", 12_500_000 -> "12.5M" (the spec's style)."""
    for size, unit in ((1_000_000, "M"), (1_000, "K")):
        if amount >= size:
            return f"{amount / size:.1f}".removesuffix(".0") + unit
    return f"{amount:,}"


class PlansSettings(_Section):
    free: PlanSettings = PlanSettings(monthly_tokens=250_000, max_agents=3)
    pro: PlanSettings = PlanSettings(
        monthly_tokens=10_000_000, max_agents=0, price_label="$30/month"
    )

    @model_validator(mode="before")
    @classmethod
    def _plan_defaults(cls, data: Any) -> Any:
        """A plan given in part (`[plans.free] monthly_tokens = ...` alone, or one
        BOT_PLANS__FREE__... variable) keeps that plan's defaults for the other keys."""
        if isinstance(data, dict):
            data = dict(data)
            for name in ("free", "pro"):
                value = data.get(name)
                if isinstance(value, dict):
                    default = cls.model_fields[name].default
                    data[name] = {**default.model_dump(), **value}
        return data

    def as_ledger_plans(self) -> dict[str, Plan]:
        return {
            name: Plan(name, plan.monthly_tokens, plan.max_agents)
            for name, plan in (("free", self.free), ("pro", self.pro))
        }


class CostsSettings(_Section):
    avatar_generation: int = Field(default=5000, ge=0)
    avatar_upload: int = Field(default=0, ge=0)
    model_weights: dict[str, float] = Field(default_factory=dict)

    @field_validator("model_weights")
    @classmethod
    def _positive(cls, weights: dict[str, float]) -> dict[str, float]:
        for model, weight in weights.items():
            if weight <= 0:
                raise ValueError(f"weight of {model!r} must be above 0, not {weight}")
        return weights

    def weight(self, model: str) -> float:
        return self.model_weights.get(model, 1.0)


class OpenAISettings(_Section):
    base_url: str = ""  # empty: the SDK's default, or OPENAI_BASE_URL
    image_model: str = "gpt-image-2.5-sunburst"
    image_size: str = "1024x1024"
    chat_model: str = "gpt-5.4-mini"
    embedding_model: str = "text-embedding-3-small"
    max_completion_tokens: int = Field(default=800, ge=16, le=32_000)
    timeout_seconds: float = Field(default=60.0, gt=0, le=600)
    max_retries: int = Field(default=2, ge=0, le=10)
    max_connections: int = Field(default=64, ge=1, le=1000)
    vision_model: str = ""  # chat with an image attached; empty: chat_model
    # Wall clock for one whole call, retries and a streamed answer included: timeout_seconds
    # bounds each read, so a body that trickles a byte at a time never ends without this.
    deadline_seconds: float = Field(default=180.0, gt=0, le=3600)

    @field_validator("image_model")
    @classmethod
    def _current_image_model(cls, model: str) -> str:
        if model in {"dall-e-2", "dall-e-3", "gpt-image-1"}:
            raise ValueError(f"{model} is retired; use a current GPT image model")
        return model


class StorageSettings(_Section):
    database: str = "data/bot.db"
    data_dir: str = "data"
    # Zero deleted pages on disk (and write them to the WAL): costly, off by default.
    secure_delete: bool = False


class WebhooksSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str = ""
    max_connections: int = Field(default=256, ge=1, le=100_000)
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    body_timeout_seconds: float = Field(default=10.0, gt=0, le=600)


class MetricsSettings(_Section):
    enabled: bool = True
    # port 0: /metrics on the sidecar's own listener; otherwise a listener of its own
    # (keep it private: 127.0.0.1, or a network only Prometheus reaches).
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)


class LemonSqueezySettings(_Section):
    store_id: str = ""
    variant_id: str = ""  # the Pro variant /upgrade sells; always one of the Pro variants
    checkout_url: str = ""
    api_url: str = "https://api.lemonsqueezy.com"
    checkout_expires_minutes: int = Field(default=60, ge=1)
    test_mode: bool = False
    # Every variant that grants Pro (monthly and annual); events of others change nothing.
    pro_variant_ids: list[str] = Field(default_factory=list)
    # One-time purchases: variant id -> bonus tokens, and each one's share link.
    packs: dict[str, int] = Field(default_factory=dict)
    pack_checkout_urls: dict[str, str] = Field(default_factory=dict)
    billing_url: str = ""  # the store's billing page, for "Manage subscription" without a key

    @field_validator("store_id", "variant_id", mode="before")
    @classmethod
    def _id_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("pro_variant_ids", mode="before")
    @classmethod
    def _ids_text(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [cls._id_text(v) for v in value]
        return value

    @field_validator("packs")
    @classmethod
    def _positive_packs(cls, packs: dict[str, int]) -> dict[str, int]:
        for variant, tokens in packs.items():
            if tokens <= 0:
                raise ValueError(f"pack {variant!r} must grant more than 0 tokens, not {tokens}")
        return packs

    def pro_variants(self) -> frozenset[str]:
        ids = {*self.pro_variant_ids, self.variant_id}
        return frozenset(i for i in ids if i)


class BillingSettings(_Section):
    # What a refund does to Pro: keep it running (as LemonSqueezy keeps the subscription),
    # or end it now when the payment that started the current period is refunded in full.
    refund_policy: Literal["keep", "downgrade"] = "keep"


class AdminsSettings(_Section):
    user_ids: list[int] = Field(default_factory=list)
    admin_guild_id: int | None = None


class DiscordSettings(_Section):
    dev_guild_id: int | None = None
    message_content: bool = False
    # Several `run` processes of one bot each take some shards: all of them set the same
    # shard_count and each its own shard_ids. Unset: one process, Discord's own count.
    shard_count: int | None = Field(default=None, ge=1)
    shard_ids: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _shards(self) -> DiscordSettings:
        if self.shard_ids and self.shard_count is None:
            raise ValueError("discord.shard_ids needs discord.shard_count")
        if any(not 0 <= i < (self.shard_count or 1) for i in self.shard_ids):
            raise ValueError("discord.shard_ids must lie in 0 .. shard_count - 1")
        return self


class LimitsSettings(_Section):
    hold_ttl_seconds: int = Field(default=900, ge=1)
    hold_lease_seconds: int = Field(default=30, ge=1)
    max_avatar_bytes: int = Field(default=8 * 1024 * 1024, ge=1)
    max_document_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    max_document_pages: int = Field(default=300, ge=1)
    max_chunks_per_account: int = Field(default=20_000, ge=1)
    pdf_processes: int = Field(default=2, ge=0)
    max_grant: int = Field(default=100_000_000, ge=1)
    extraction_per_account: int = Field(default=1, ge=1)
    extraction_seconds: float = Field(default=120.0, gt=0, le=3600)
    extraction_memory_mb: int = Field(default=1024, ge=64)


class ChatSettings(_Section):
    stream: bool = True  # edit the answer in place as it is written
    edit_interval_seconds: float = Field(default=1.0, ge=0.2, le=60)  # per message
    channel_edits: int = Field(default=5, ge=1)  # edits and sends per channel per window
    channel_window_seconds: float = Field(default=5.0, gt=0, le=300)
    history_budget: int = Field(default=2000, ge=0)  # tokens of earlier turns sent along
    # And at most this many earlier messages (whole exchanges): short turns would
    # otherwise fill the token budget with hundreds, each costing CPU and prompt tokens.
    history_messages: int = Field(default=20, ge=0, le=200)
    retrieval_depth: int = Field(default=5, ge=0, le=50)  # document excerpts per answer
    image_side: int = Field(default=1024, ge=64, le=4096)  # longer side sent to the model
    image_hold_tokens: int = Field(default=3000, ge=0)  # held per image before the call


class Secrets(BaseSettings):
    """Secrets under their plain names; SecretStr keeps them out of reprs and logs."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    discord_token: SecretStr | None = None
    openai_api_key: SecretStr | None = None
    lemonsqueezy_api_key: SecretStr | None = None
    lemonsqueezy_webhook_secret: SecretStr | None = None
    metrics_token: SecretStr | None = None  # METRICS_TOKEN: /metrics wants this bearer


class Config(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BOT_", env_nested_delimiter="__", extra="ignore", case_sensitive=False
    )

    plans: PlansSettings = PlansSettings()
    costs: CostsSettings = CostsSettings()
    openai: OpenAISettings = OpenAISettings()
    storage: StorageSettings = StorageSettings()
    webhooks: WebhooksSettings = WebhooksSettings()
    metrics: MetricsSettings = MetricsSettings()
    lemonsqueezy: LemonSqueezySettings = LemonSqueezySettings()
    billing: BillingSettings = BillingSettings()
    admins: AdminsSettings = AdminsSettings()
    discord: DiscordSettings = DiscordSettings()
    limits: LimitsSettings = LimitsSettings()
    chat: ChatSettings = ChatSettings()
    secrets: Secrets = Field(default_factory=Secrets, exclude=True)
    # The file actually read (None: no file, the defaults and the environment only).
    _source: Path | None = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file (passed as init values).
        return (env_settings, init_settings)

    def data_path(self, *parts: str) -> Path:
        return Path(self.storage.data_dir, *parts)

    @property
    def source(self) -> Path | None:
        return self._source


def config_path(cli_path: str | None = None) -> Path:
    return Path(cli_path or os.environ.get("BOT_CONFIG") or DEFAULT_PATH)


def load(cli_path: str | None = None, *, env_file: str | Path | None = ".env") -> Config:
    """The configuration. With a configuration file, a relative `env_file` (`.env`) and
    relative `storage` paths are taken from that file's folder, so `--config
    /srv/bot/config.toml` finds /srv/bot/.env and /srv/bot/data; without a file they are
    relative to the working folder, as before."""
    path = config_path(cli_path)
    file_values: dict[str, Any] = {}
    folder: Path | None = None
    if path.exists():
        try:
            file_values = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML ({error})") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: cannot be read ({error})") from None
        folder = path.resolve().parent
    elif cli_path or os.environ.get("BOT_CONFIG"):
        raise ConfigError(f"{path}: no such configuration file")
    # Config ignores extra keys (for unrelated BOT_* variables); a file's may not be.
    for section in file_values:
        if section not in Config.model_fields or section == "secrets":
            raise ConfigError(f"config error: {section} (in {path}): unknown section")
    if folder is not None and env_file is not None and not Path(env_file).is_absolute():
        env_file = folder / env_file
    try:
        secrets = Secrets(_env_file=env_file)  # type: ignore[call-arg]
        config = Config(**file_values, secrets=secrets)
    except ValidationError as error:
        raise ConfigError(_one_line(error, path)) from None
    except SettingsError as error:
        raise ConfigError(_settings_line(error)) from None
    if folder is not None:
        storage = config.storage
        config.storage = storage.model_copy(
            update={
                "database": _beside(folder, storage.database),
                "data_dir": _beside(folder, storage.data_dir),
            }
        )
        config._source = path
    return config


def _beside(folder: Path, value: str) -> str:
    # A database address (postgresql://...) is no path: taken as a path it became
    # "<folder>/postgresql:/host/db".
    if value == ":memory:" or "://" in value or Path(value).is_absolute():
        return value
    return str(folder / value)


def _settings_line(error: SettingsError) -> str:
    """pydantic-settings names the field, not the variable: find the variable."""
    found = re.search(r'field "(\w+)"', str(error))
    field = found.group(1) if found else ""
    names = sorted(n for n in os.environ if n.upper().startswith(f"BOT_{field.upper()}__"))
    where = ", ".join(names) or f"BOT_{field.upper()}__..."
    return (
        f"config error: {where}: not a valid value (lists and tables in the environment "
        "are written as JSON, e.g. BOT_ADMINS__USER_IDS='[1, 2]')"
    )


def _one_line(error: ValidationError, path: Path) -> str:
    first = error.errors()[0]
    location = [str(p) for p in first["loc"] if p != "secrets"]
    key = ".".join(location) or "(root)"
    env = "BOT_" + "__".join(location).upper()
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    value = first.get("input")
    shown = (
        "" if first["type"] == "extra_forbidden" or isinstance(value, dict) else f" (got {value!r})"
    )
    count = len(error.errors())
    more = f"; and {count - 1} more problem(s)" if count > 1 else ""
    return f"config error: {key} (in {path} or {env}): {message}{shown}{more}"
