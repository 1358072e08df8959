"""The one place Satchel's configuration is read.

``Settings.load()`` merges, lowest to highest priority: built-in defaults (the embedded
mode), a TOML file (``SATCHEL_CONFIG``, else ``./satchel.toml`` when present), and
``SATCHEL_*`` environment variables. TOML tables are flattened with ``_``, so
``[storage] backend = "s3"`` and ``storage_backend = "s3"`` and ``SATCHEL_STORAGE_BACKEND=s3``
all name the same setting. Unknown keys, malformed values and inconsistent combinations
raise :class:`ConfigError` naming the offending key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ENV_PREFIX = "SATCHEL_"

# SATCHEL_* variables that are not settings: the config file pointer, and variables read
# by the test suite and the benchmarks, which never reach the application.
_NOT_SETTINGS = ("SATCHEL_CONFIG", "SATCHEL_REQUIRE_SERVICES")
_NOT_SETTINGS_PREFIXES = ("SATCHEL_TEST_", "SATCHEL_BENCH_")

_SECRET_FIELDS = frozenset({"secret_key", "s3_secret_access_key"})


class ConfigError(Exception):
    """The configuration is invalid; ``key`` names the setting (as the user wrote it)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class StorageBackend(StrEnum):
    LOCAL = "local"
    S3 = "s3"


@dataclass(frozen=True)
class Settings:
    """Effective configuration. Tests build it directly: ``Settings(data_dir=tmp_path)``."""

    data_dir: Path = Path("var")
    database_url: str | None = None
    storage_backend: StorageBackend = StorageBackend.LOCAL
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    keys_dir: Path | None = None
    secret_key: str | None = None
    bind: str = "127.0.0.1:8000"
    workers: int = 2
    public_url: str | None = None
    proxy_hops: int = 0
    max_upload_mb: int = 50
    secure_cookies: bool | None = None
    session_idle_minutes: int = 30
    audit_origin: str = "satchel/audit"
    audit_checkpoint_retention_days: int | None = None

    def __post_init__(self) -> None:
        _validate(self)

    # Derived locations and modes -------------------------------------------------------

    @property
    def effective_database_url(self) -> str:
        """The SQLAlchemy URL; defaults to SQLite in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'satchel.db').resolve()}"

    @property
    def effective_keys_dir(self) -> Path:
        return self.keys_dir if self.keys_dir is not None else self.data_dir / "keys"

    @property
    def keyring_path(self) -> Path:
        return self.effective_keys_dir / "keyring.json"

    @property
    def signing_key_path(self) -> Path:
        return self.effective_keys_dir / "audit-signing.pem"

    @property
    def secret_key_path(self) -> Path:
        return self.effective_keys_dir / "session-secret"

    @property
    def objects_dir(self) -> Path:
        return self.data_dir / "objects"

    @property
    def spool_dir(self) -> Path:
        """Where uploads larger than the memory spool spill, encrypted."""
        return self.data_dir / "tmp"

    @property
    def embedded(self) -> bool:
        """True for the single-machine default: SQLite and the local object store."""
        return self.effective_database_url.startswith("sqlite") and (
            self.storage_backend is StorageBackend.LOCAL
        )

    @property
    def effective_secure_cookies(self) -> bool:
        return (not self.embedded) if self.secure_cookies is None else self.secure_cookies

    @property
    def effective_public_url(self) -> str:
        """The address users reach Satchel at (for links printed by the CLI)."""
        return (self.public_url or f"http://{self.bind}").rstrip("/")

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    # Loading ----------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        cwd: Path | None = None,
    ) -> Settings:
        """Read the TOML file and the environment; raise ConfigError naming a bad key."""
        env = os.environ if environ is None else environ
        base = Path.cwd() if cwd is None else cwd
        raw: dict[str, tuple[str, Any]] = {}  # field -> (key as the user wrote it, value)

        config_file = env.get("SATCHEL_CONFIG")
        path = Path(config_file) if config_file else base / "satchel.toml"
        if config_file or path.is_file():
            for key, (source, value) in _read_toml(path).items():
                raw[key] = (source, value)

        names = {f.name for f in fields(cls)}
        for env_key, value in env.items():
            if not env_key.startswith(ENV_PREFIX) or _is_not_a_setting(env_key):
                continue
            name = env_key[len(ENV_PREFIX) :].lower()
            if name not in names:
                raise ConfigError(env_key, "unknown setting")
            raw[name] = (env_key, value)

        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in raw:
                source, value = raw[f.name]
                values[f.name] = _coerce(source, f.name, value)
        for name in ("data_dir", "keys_dir"):
            if isinstance(values.get(name), Path) and not values[name].is_absolute():
                values[name] = base / values[name]
        if "data_dir" not in values:
            values["data_dir"] = base / "var"
        try:
            return cls(**values)
        except ConfigError as e:
            source = raw[e.key][0] if e.key in raw else ENV_PREFIX + e.key.upper()
            raise ConfigError(source, e.message) from None

    def describe(self) -> dict[str, str]:
        """Every effective setting as text, secrets masked (for ``satchel config show``)."""
        shown: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRET_FIELDS and value:
                text = "********"
            elif f.name == "database_url":
                text = _mask_url_password(self.effective_database_url)
            elif f.name == "keys_dir":
                text = str(self.effective_keys_dir)
            elif f.name == "secure_cookies":
                text = str(self.effective_secure_cookies).lower()
            elif value is None:
                text = ""
            else:
                text = str(value)
            shown[f.name] = text
        shown["mode"] = "embedded" if self.embedded else "production"
        return shown

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _is_not_a_setting(env_key: str) -> bool:
    return env_key in _NOT_SETTINGS or env_key.startswith(_NOT_SETTINGS_PREFIXES)


def _read_toml(path: Path) -> dict[str, tuple[str, Any]]:
    try:
        with path.open("rb") as fh:
            document = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("SATCHEL_CONFIG", f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), f"not valid TOML: {e}") from None
    names = {f.name for f in fields(Settings)}
    flat: dict[str, tuple[str, Any]] = {}

    def walk(prefix: str, table: Mapping[str, Any]) -> None:
        for key, value in table.items():
            dotted = f"{prefix}.{key}" if prefix else key
            name = dotted.replace(".", "_")
            if isinstance(value, dict):
                walk(dotted, value)
            elif name in names:
                flat[name] = (f"{path}: {dotted}", value)
            else:
                raise ConfigError(f"{path}: {dotted}", "unknown setting")

    walk("", document)
    return flat


def _coerce(source: str, name: str, value: Any) -> Any:
    """Turn a TOML or environment value into the field's type."""
    try:
        if name in ("data_dir", "keys_dir"):
            return Path(str(value)) if str(value) else None
        if name == "storage_backend":
            choice = str(value).lower()
            if choice not in tuple(StorageBackend):
                valid = " or ".join(b.value for b in StorageBackend)
                raise ValueError(f"must be {valid}, not {value!r}")
            return StorageBackend(choice)
        if name in ("workers", "max_upload_mb", "session_idle_minutes", "proxy_hops"):
            return _as_int(value)
        if name == "audit_checkpoint_retention_days":
            return None if value in ("", None) else _as_int(value)
        if name == "secure_cookies":
            return _as_bool(value)
        return None if value == "" else str(value)
    except ValueError as e:
        raise ConfigError(source, str(e)) from None


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not text.lstrip("-").isdigit():
        raise ValueError(f"expected a whole number, got {value!r}")
    return int(text)


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _validate(s: Settings) -> None:
    if s.database_url is not None:
        scheme = urlsplit(s.database_url).scheme
        if scheme not in ("sqlite", "postgresql", "postgresql+psycopg"):
            raise ConfigError(
                "database_url",
                f"malformed or unsupported URL {_mask_url_password(s.database_url)!r}; "
                "use sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB",
            )
        if scheme.startswith("postgresql") and not urlsplit(s.database_url).hostname:
            raise ConfigError("database_url", "a PostgreSQL URL needs a host")
    if s.s3_endpoint_url is not None:
        parts = urlsplit(s.s3_endpoint_url)
        try:
            port_ok = parts.port is None or 0 < parts.port < 65536
        except ValueError:
            port_ok = False
        if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
            raise ConfigError(
                "s3_endpoint_url",
                f"malformed URL {s.s3_endpoint_url!r}; expected http(s)://HOST[:PORT]",
            )
    if s.storage_backend is StorageBackend.S3 and not s.s3_bucket:
        raise ConfigError("s3_bucket", "required when storage_backend is s3")
    if (s.s3_access_key_id is None) != (s.s3_secret_access_key is None):
        key = "s3_secret_access_key" if s.s3_secret_access_key is None else "s3_access_key_id"
        raise ConfigError(key, "S3 credentials need both an access key id and a secret")
    if s.s3_prefix and (s.s3_prefix.startswith("/") or ".." in s.s3_prefix.split("/")):
        raise ConfigError("s3_prefix", "must be a relative key prefix without '..'")
    _validate_bind(s.bind)
    if s.public_url is not None:
        parts = urlsplit(s.public_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("public_url", f"malformed URL {s.public_url!r}")
    if not 0 <= s.proxy_hops <= 10:
        raise ConfigError("proxy_hops", "must be between 0 and 10")
    for name in ("workers", "max_upload_mb", "session_idle_minutes"):
        if getattr(s, name) < 1:
            raise ConfigError(name, "must be at least 1")
    if s.audit_checkpoint_retention_days is not None and s.audit_checkpoint_retention_days < 1:
        raise ConfigError("audit_checkpoint_retention_days", "must be at least 1 when set")
    if s.secret_key is not None and len(s.secret_key) < 32:
        raise ConfigError("secret_key", "must be at least 32 characters")
    if not s.audit_origin or any(c.isspace() for c in s.audit_origin):
        raise ConfigError("audit_origin", "must be a non-empty name without spaces")


def _validate_bind(bind: str) -> None:
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ConfigError("bind", f"expected HOST:PORT, got {bind!r}")
    bare = host.strip("[]")
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        if not all(part.isalnum() or "-" in part for part in bare.split(".")):
            raise ConfigError("bind", f"not a host name or address: {host!r}") from None


def _mask_url_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":********@", 1)
    return parts._replace(netloc=netloc).geturl()
