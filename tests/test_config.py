"""bot.config.load: the TOML file, BOT_SECTION__KEY overrides, secrets from .env, and
one-line errors naming the key at fault."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.config import Config, ConfigError, load

SECRET_NAMES = (
    "DISCORD_TOKEN",
    "OPENAI_API_KEY",
    "LEMONSQUEEZY_API_KEY",
    "LEMONSQUEEZY_WEBHOOK_SECRET",
)
REPO_CONFIG = Path(__file__).resolve().parents[1] / "config.toml"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No BOT_* variable or secret from the outside world, and a working folder of our own."""
    for name in list(os.environ):
        if name.upper().startswith("BOT_") or name.upper() in SECRET_NAMES:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def one_line_error(path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(None if path is None else str(path), env_file=None)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_the_shipped_config_toml_loads_with_its_documented_values() -> None:
    config = load(str(REPO_CONFIG), env_file=None)
    assert config.plans.free.monthly_tokens == 250_000 and config.plans.free.max_agents == 3
    assert config.plans.pro.monthly_tokens == 10_000_000 and config.plans.pro.max_agents == 0
    assert config.costs.avatar_generation == 5_000 and config.costs.avatar_upload == 0
    assert config.openai.image_model not in {"dall-e-2", "dall-e-3", "gpt-image-1"}
    # Relative to the file's folder (issue 16: files where the operator put them).
    assert config.storage.database == str(REPO_CONFIG.resolve().parent / "data" / "bot.db")
    assert config.limits.max_grant == 100_000_000


def test_defaults_without_a_file() -> None:
    config = load(env_file=None)  # no config.toml in the working folder
    assert config == Config()
    assert config.secrets.discord_token is None


def test_file_values_and_environment_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        """
        [plans.free]
        monthly_tokens = 1000
        max_agents = 2

        [storage]
        database = "from-file.db"
        data_dir = "files"

        [limits]
        max_grant = 500
        """,
    )
    monkeypatch.setenv("BOT_STORAGE__DATABASE", "/srv/from-env.db")
    monkeypatch.setenv("BOT_PLANS__FREE__MONTHLY_TOKENS", "500000")
    monkeypatch.setenv("BOT_PLANS__PRO__PRICE_LABEL", "$31/month")
    monkeypatch.setenv("BOT_LIMITS__HOLD_TTL_SECONDS", "60")

    config = load(str(path), env_file=None)

    assert config.storage.database == "/srv/from-env.db"  # the environment wins
    assert config.storage.data_dir == str(tmp_path / "files")  # beside the file
    assert config.plans.free.monthly_tokens == 500_000
    assert config.plans.free.max_agents == 2
    assert config.plans.pro.price_label == "$31/month"
    assert config.plans.pro.monthly_tokens == 10_000_000
    assert config.limits.max_grant == 500
    assert config.limits.hold_ttl_seconds == 60
    plans = config.plans.as_ledger_plans()
    assert (plans["free"].monthly_tokens, plans["pro"].monthly_tokens) == (500_000, 10_000_000)


def test_bot_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[webhooks]\nport = 9090\n", name="elsewhere.toml")
    monkeypatch.setenv("BOT_CONFIG", str(path))
    assert load(env_file=None).webhooks.port == 9090
    monkeypatch.setenv("BOT_CONFIG", str(tmp_path / "missing.toml"))
    assert "no such configuration file" in one_line_error()


def test_secrets_come_from_dotenv_and_never_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = write(
        tmp_path,
        "DISCORD_TOKEN=discord-secret-123\nOPENAI_API_KEY=sk-secret-456\n",
        name="secrets.env",
    )
    monkeypatch.setenv("LEMONSQUEEZY_WEBHOOK_SECRET", "whsec-secret-789")

    config = load(env_file=env_file)

    secrets = config.secrets
    assert secrets.discord_token is not None and secrets.openai_api_key is not None
    assert secrets.discord_token.get_secret_value() == "discord-secret-123"
    assert secrets.openai_api_key.get_secret_value() == "sk-secret-456"
    assert secrets.lemonsqueezy_webhook_secret is not None
    assert secrets.lemonsqueezy_webhook_secret.get_secret_value() == "whsec-secret-789"
    assert secrets.lemonsqueezy_api_key is None
    shown = " ".join(
        [repr(config), str(config), repr(secrets), str(secrets), config.model_dump_json()]
    )
    for secret in ("discord-secret-123", "sk-secret-456", "whsec-secret-789"):
        assert secret not in shown


def test_dotenv_in_the_working_folder_is_read_by_default(tmp_path: Path) -> None:
    write(tmp_path, "DISCORD_TOKEN=from-dotenv\n", name=".env")
    config = load()
    assert config.secrets.discord_token is not None
    assert config.secrets.discord_token.get_secret_value() == "from-dotenv"
    assert "from-dotenv" not in repr(config)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[limits]\nmax_grant = 0\n", "limits.max_grant"),
        ('[limits]\nmax_grant = "lots"\n', "limits.max_grant"),
        ("[plans.free]\nmonthly_tokens = -5\nmax_agents = 3\n", "plans.free.monthly_tokens"),
        ("[webhooks]\nport = 70000\n", "webhooks.port"),
        ('[costs.model_weights]\n"gpt-5.4-mini" = 0\n', "costs.model_weights"),
    ],
)
def test_an_invalid_value_is_one_line_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    message = one_line_error(write(tmp_path, text))
    assert key in message
    assert message.startswith("config error:")


def test_an_invalid_environment_value_names_the_key_and_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BOT_LIMITS__MAX_GRANT", "-1")
    message = one_line_error()
    assert "limits.max_grant" in message and "BOT_LIMITS__MAX_GRANT" in message


def test_an_unknown_key_is_refused(tmp_path: Path) -> None:
    message = one_line_error(write(tmp_path, "[limits]\nmax_grnt = 5\n"))
    assert "limits.max_grnt" in message and "unknown key" in message


def test_an_unknown_section_is_refused(tmp_path: Path) -> None:
    message = one_line_error(write(tmp_path, "[limitz]\nmax_grant = 5\n"))
    assert "limitz" in message and "unknown" in message


def test_a_retired_image_model_is_refused(tmp_path: Path) -> None:
    message = one_line_error(write(tmp_path, '[openai]\nimage_model = "dall-e-3"\n'))
    assert "openai.image_model" in message and "retired" in message


def test_not_toml_is_one_line(tmp_path: Path) -> None:
    message = one_line_error(write(tmp_path, "[limits\nmax_grant = \n"))
    assert "not valid TOML" in message


def test_a_plan_given_in_part_keeps_its_other_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[plans.free]\nmonthly_tokens = 500000\n")
    monkeypatch.setenv("BOT_PLANS__PRO__MAX_AGENTS", "50")
    config = load(str(path), env_file=None)
    assert (config.plans.free.monthly_tokens, config.plans.free.max_agents) == (500_000, 3)
    assert (config.plans.pro.monthly_tokens, config.plans.pro.max_agents) == (10_000_000, 50)
    assert config.plans.pro.price_label == "$30/month"


def test_secrets_in_the_file_are_refused(tmp_path: Path) -> None:
    message = one_line_error(write(tmp_path, '[secrets]\ndiscord_token = "abc"\n'))
    assert "secrets" in message and "abc" not in message


def test_billing_variants_packs_and_refund_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        """
[lemonsqueezy]
store_id = 12
variant_id = 67890
pro_variant_ids = [67891, "67892"]

[lemonsqueezy.packs]
"22222" = 1000000

[billing]
refund_policy = "downgrade"
""",
    )
    config = load(str(path), env_file=None)
    assert config.lemonsqueezy.store_id == "12"
    assert config.lemonsqueezy.pro_variants() == {"67890", "67891", "67892"}
    assert config.lemonsqueezy.packs == {"22222": 1_000_000}
    assert config.billing.refund_policy == "downgrade"
    monkeypatch.setenv("BOT_BILLING__REFUND_POLICY", "refund-everything")
    assert "billing.refund_policy" in one_line_error(path)
    monkeypatch.delenv("BOT_BILLING__REFUND_POLICY")
    bad_pack = write(tmp_path, '[lemonsqueezy.packs]\n"1" = 0\n', name="pack.toml")
    assert "lemonsqueezy.packs" in one_line_error(bad_pack)


def test_relative_storage_is_beside_the_file_and_an_address_stays_an_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "srv"
    home.mkdir()
    path = write(home, '[storage]\ndatabase = "state/bot.db"\ndata_dir = "files"\n')
    config = load(str(path))
    assert (config.storage.database, config.storage.data_dir) == (
        str(home / "state" / "bot.db"),
        str(home / "files"),
    )
    address = "postgresql://bot@db.internal:5432/bot"
    write(home, f'[storage]\ndatabase = "{address}"\n')
    assert load(str(path)).storage.database == address
    monkeypatch.setenv("BOT_STORAGE__DATABASE", address)  # from the environment too
    write(home, "")
    assert load(str(path)).storage.database == address
    # Without a file, relative paths stay relative to the working folder (as before).
    monkeypatch.delenv("BOT_STORAGE__DATABASE")
    assert load(env_file=None).storage.database == "data/bot.db"
