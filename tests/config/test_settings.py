from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError, Settings, StorageBackend


def load(env: dict[str, str], tmp_path: Path) -> Settings:
    return Settings.load(env, cwd=tmp_path)


def test_defaults_are_the_embedded_mode(tmp_path: Path) -> None:
    s = load({}, tmp_path)
    assert s.data_dir == tmp_path / "var"
    assert s.effective_database_url == f"sqlite:///{tmp_path / 'var' / 'satchel.db'}"
    assert s.storage_backend is StorageBackend.LOCAL
    assert s.embedded
    assert s.bind == "127.0.0.1:8000"
    assert s.keyring_path == tmp_path / "var" / "keys" / "keyring.json"
    assert s.effective_secure_cookies is False


def test_environment_wins_over_the_toml_file(tmp_path: Path) -> None:
    (tmp_path / "satchel.toml").write_text(
        'bind = "0.0.0.0:9000"\nmax_upload_mb = 10\n[storage]\nbackend = "s3"\n'
        '[s3]\nbucket = "from-file"\nendpoint_url = "http://127.0.0.1:8333"\n'
    )
    s = load({"SATCHEL_S3_BUCKET": "from-env", "SATCHEL_MAX_UPLOAD_MB": "7"}, tmp_path)
    assert s.bind == "0.0.0.0:9000"
    assert s.max_upload_mb == 7
    assert s.max_upload_bytes == 7 * 1024 * 1024
    assert s.storage_backend is StorageBackend.S3
    assert s.s3_bucket == "from-env"
    assert not s.embedded
    assert s.effective_secure_cookies is True


def test_satchel_config_points_at_another_file(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.toml"
    other.write_text('[audit]\norigin = "district-7/audit"\n')
    s = load({"SATCHEL_CONFIG": str(other)}, tmp_path)
    assert s.audit_origin == "district-7/audit"


def test_the_example_file_documents_every_setting() -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "satchel.example.toml"
    text = example.read_text()
    s = Settings.load({"SATCHEL_CONFIG": str(example)}, cwd=example.parent)
    assert s.storage_backend is StorageBackend.LOCAL
    for name in Settings.__dataclass_fields__:
        leaf = name.removeprefix("s3_").removeprefix("storage_").removeprefix("audit_")
        assert leaf in text, f"{name} is not documented in satchel.example.toml"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SATCHEL_NO_SUCH_THING": "1"}, "SATCHEL_NO_SUCH_THING"),
        ({"SATCHEL_STORAGE_BACKEND": "s3"}, "SATCHEL_S3_BUCKET"),
        ({"SATCHEL_STORAGE_BACKEND": "ftp"}, "SATCHEL_STORAGE_BACKEND"),
        ({"SATCHEL_S3_ENDPOINT_URL": "localhost:8333"}, "SATCHEL_S3_ENDPOINT_URL"),
        ({"SATCHEL_S3_ENDPOINT_URL": "http://127.0.0.1:99999"}, "SATCHEL_S3_ENDPOINT_URL"),
        ({"SATCHEL_DATABASE_URL": "mysql://db/satchel"}, "SATCHEL_DATABASE_URL"),
        ({"SATCHEL_DATABASE_URL": "postgresql+psycopg:///x"}, "SATCHEL_DATABASE_URL"),
        ({"SATCHEL_MAX_UPLOAD_MB": "lots"}, "SATCHEL_MAX_UPLOAD_MB"),
        ({"SATCHEL_MAX_UPLOAD_MB": "0"}, "SATCHEL_MAX_UPLOAD_MB"),
        ({"SATCHEL_BIND": "8000"}, "SATCHEL_BIND"),
        ({"SATCHEL_SECURE_COOKIES": "maybe"}, "SATCHEL_SECURE_COOKIES"),
        ({"SATCHEL_SECRET_KEY": "short"}, "SATCHEL_SECRET_KEY"),
        ({"SATCHEL_S3_ACCESS_KEY_ID": "only-half"}, "SATCHEL_S3_SECRET_ACCESS_KEY"),
    ],
)
def test_bad_configuration_names_the_key(env: dict[str, str], named: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load(env, tmp_path)
    assert raised.value.key == named
    assert named in str(raised.value)


def test_an_unknown_storage_backend_lists_the_ones_there_are(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load({"SATCHEL_STORAGE_BACKEND": "ftp"}, tmp_path)
    assert str(raised.value) == "SATCHEL_STORAGE_BACKEND: must be local or s3, not 'ftp'"
    assert load({"SATCHEL_STORAGE_BACKEND": "LOCAL"}, tmp_path).storage_backend == "local"


def test_unknown_toml_key_names_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "satchel.toml").write_text("[s3]\nbukket = 'typo'\n")
    with pytest.raises(ConfigError, match=r"satchel.toml: s3.bukket: unknown setting"):
        load({}, tmp_path)


def test_test_and_bench_variables_are_not_settings(tmp_path: Path) -> None:
    env = {
        "SATCHEL_TEST_DATABASE_URL": "postgresql+psycopg://x@h/db",
        "SATCHEL_REQUIRE_SERVICES": "1",
        "SATCHEL_BENCH_SCALE": "small",
    }
    assert load(env, tmp_path).database_url is None


def test_describe_masks_secrets(tmp_path: Path) -> None:
    s = load(
        {
            "SATCHEL_DATABASE_URL": "postgresql+psycopg://satchel:hunter2@db:5432/satchel",
            "SATCHEL_S3_ACCESS_KEY_ID": "AKIAEXAMPLE",
            "SATCHEL_S3_SECRET_ACCESS_KEY": "wJalrXUtnFEMI",
            "SATCHEL_SECRET_KEY": "x" * 40,
        },
        tmp_path,
    )
    shown = s.describe()
    assert "hunter2" not in str(shown)
    assert "wJalrXUtnFEMI" not in str(shown)
    assert "x" * 40 not in str(shown)
    assert shown["database_url"] == "postgresql+psycopg://satchel:********@db:5432/satchel"
    assert shown["s3_access_key_id"] == "AKIAEXAMPLE"
    assert shown["mode"] == "production"
