from __future__ import annotations

import csv
import errno
import importlib.metadata
import io
import json
import os
import socket
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from folders.db import head_revision, make_engine
from tests.support.db import PostgresServer
from web.cli import cli
from web.cli_support import reports_errors

PASSWORD = "correct horse battery staple"


class Satchel:
    """Runs `satchel` commands in-process against one data directory and database
    (``database_url`` None: the embedded mode's SQLite file in the data directory)."""

    def __init__(self, data_dir: Path, database_url: str | None) -> None:
        self.env: dict[str, str | None] = {
            "SATCHEL_DATA_DIR": str(data_dir),
            "SATCHEL_DATABASE_URL": database_url,
        }
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None, **env: str) -> Result:
        return self.runner.invoke(cli, list(args), input=input, env={**self.env, **env})


@pytest.fixture
def satchel(tmp_path: Path, database_url: str) -> Satchel:
    return Satchel(tmp_path / "data", database_url)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_init_creates_private_key_files_and_is_idempotent(satchel: Satchel, tmp_path: Path) -> None:
    first = satchel("init")
    assert first.exit_code == 0, first.output
    keys = tmp_path / "data" / "keys"
    for name in ("keyring.json", "audit-signing.pem", "session-secret"):
        mode = stat.S_IMODE((keys / name).stat().st_mode)
        assert mode == 0o600, f"{name} has mode {oct(mode)}"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    before = {p.name: p.read_bytes() for p in keys.iterdir()}
    second = satchel("init")
    assert second.exit_code == 0
    assert "created" not in second.output
    assert {p.name: p.read_bytes() for p in keys.iterdir()} == before


def test_doctor_all_ok_after_init(satchel: Satchel) -> None:
    satchel("init")
    result = satchel("doctor")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 7 and all(line.startswith("OK") for line in lines)
    assert "OK    database case folding: lower() folds accented capitals" in result.output


def test_doctor_fails_a_postgresql_database_whose_lower_folds_ascii_only(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    name = f"satchel_c_{uuid.uuid4().hex[:12]}"
    postgres_server.execute(
        f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
    )
    try:
        satchel = Satchel(tmp_path / "data", postgres_server.url_for(name))
        assert satchel("init").exit_code == 0
        result = satchel("doctor")
    finally:
        postgres_server.drop_database(name)
    assert result.exit_code == 1
    [fail] = [line for line in result.output.splitlines() if line.startswith("FAIL")]
    assert fail.startswith("FAIL  database case folding: lower('ÉMILE ZOË') gives 'Émile zoË'")
    assert "LC_CTYPE is 'C'" in fail and "LC_CTYPE 'C.UTF-8'" in fail


def test_doctor_before_init_fails(satchel: Satchel) -> None:
    result = satchel("doctor")
    assert result.exit_code == 1
    assert "FAIL  keyring" in result.output


def not_installed(data_dir: Path, missing: str) -> str:
    return (
        f"no Satchel installation at {data_dir}: {missing} does not exist "
        "(run `satchel init` to create one)"
    )


@pytest.mark.parametrize(
    "command",
    [
        ["doctor"],
        ["fsck"],
        ["audit", "verify"],
        ["keys", "status"],
        ["user", "list"],
        ["demo"],
        ["db", "upgrade"],
    ],
    ids=" ".join,
)
def test_a_command_on_a_mistyped_data_dir_says_there_is_no_installation_and_creates_nothing(
    tmp_path: Path, command: list[str]
) -> None:
    missing = tmp_path.resolve() / "mistyped" / "var"
    result = Satchel(missing, None)(*command)
    assert result.exit_code == 1, result.output
    message = not_installed(missing, f"the database {missing / 'satchel.db'}")
    if command == ["doctor"]:
        assert f"FAIL  database: {message}\n" in result.output
        assert "db upgrade" not in result.output
    else:
        assert result.output == f"Error: {message}\n"
    assert not (tmp_path / "mistyped").exists()


def test_init_on_a_missing_data_dir_creates_an_installation_the_other_commands_open(
    tmp_path: Path,
) -> None:
    data = tmp_path.resolve() / "new" / "var"
    satchel = Satchel(data, None)
    init = satchel("init")
    assert init.exit_code == 0, init.output
    assert f"created  database schema (sqlite:///{data / 'satchel.db'})" in init.output
    for command in (
        ["doctor"],
        ["fsck"],
        ["audit", "verify"],
        ["keys", "status"],
        ["user", "list"],
    ):
        result = satchel(*command)
        assert result.exit_code == 0, (command, result.output)


def test_doctor_on_a_database_without_its_data_dir_creates_no_object_store(
    satchel: Satchel, tmp_path: Path
) -> None:
    data = tmp_path / "data"  # the database exists (SQLite or PostgreSQL), the rest not
    result = satchel("doctor")
    assert result.exit_code == 1
    assert result.output.startswith("OK    database: ")
    message = not_installed(data, f"the object store {data / 'objects'}")
    assert f"FAIL  object store: {message}\n" in result.output
    assert not data.exists()


def test_doctor_advises_init_for_an_empty_database_and_db_upgrade_for_an_old_one(
    tmp_path: Path,
) -> None:
    from folders.db import upgrade

    data = tmp_path.resolve() / "var"
    satchel = Satchel(data, None)
    assert satchel("init").exit_code == 0
    database = data / "satchel.db"
    database.unlink()
    database.touch(mode=0o600)  # what `satchel doctor` used to leave on a mistyped path
    empty = satchel("doctor")
    assert empty.exit_code == 1
    assert empty.output.splitlines()[0] == (
        f"FAIL  database: sqlite:///{database} holds no Satchel schema (an empty database); "
        "run `satchel init` to create the schema and any missing key files"
    )
    engine = make_engine(f"sqlite:///{database}")
    upgrade(engine, "0006")
    head = head_revision(engine)
    engine.dispose()
    behind = satchel("doctor")
    assert behind.exit_code == 1
    assert behind.output.splitlines()[0] == (
        f"FAIL  database: sqlite:///{database} is at schema revision 0006, expected {head}; "
        "run `satchel db upgrade`"
    )


def test_a_runtime_opens_its_sqlite_database_and_never_creates_it(tmp_path: Path) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from config import Settings
    from folders.bootstrap import initialize
    from folders.runtime import NotInstalled, Runtime

    settings = Settings(data_dir=tmp_path.resolve() / "var")
    database = settings.data_dir / "satchel.db"
    runtime = Runtime(settings)
    with pytest.raises(NotInstalled) as refused:
        runtime.engine  # noqa: B018 - the property is what is tested
    assert str(refused.value) == not_installed(settings.data_dir, f"the database {database}")
    assert not settings.data_dir.exists()
    initialize(runtime)  # creates the file; the same runtime then opens it
    runtime.engine.dispose()
    for name in ("satchel.db", "satchel.db-wal", "satchel.db-shm"):
        (settings.data_dir / name).unlink(missing_ok=True)
    with (
        pytest.raises(OperationalError, match="unable to open database file"),
        runtime.engine.connect() as connection,
    ):
        connection.execute(text("SELECT 1"))
    assert not database.exists()
    runtime.close()


def test_doctor_names_a_dead_s3_endpoint(satchel: Satchel) -> None:
    satchel("init")
    endpoint = f"http://127.0.0.1:{free_port()}"
    result = satchel(
        "doctor",
        SATCHEL_STORAGE_BACKEND="s3",
        SATCHEL_S3_ENDPOINT_URL=endpoint,
        SATCHEL_S3_BUCKET="records",
        SATCHEL_S3_ACCESS_KEY_ID="key",
        SATCHEL_S3_SECRET_ACCESS_KEY="secret",
    )
    assert result.exit_code == 1
    fail = [line for line in result.output.splitlines() if line.startswith("FAIL")]
    assert len(fail) == 1 and fail[0].startswith("FAIL  object store")
    assert endpoint in fail[0]


def test_user_commands(satchel: Satchel) -> None:
    satchel("init")
    added = satchel(
        "user",
        "add",
        "Reg@School.example",
        "--role",
        "registrar",
        "--password-stdin",
        input=PASSWORD + "\n",
    )
    assert added.exit_code == 0, added.output
    assert "created registrar reg@school.example" in added.output
    assert satchel("user", "add", "g@home.example", "--role", "guardian").exit_code == 0
    duplicate = satchel("user", "add", "reg@school.example", "--role", "admin")
    assert duplicate.exit_code == 1 and "already exists" in duplicate.output
    assert (
        satchel(
            "user", "passwd", "g@home.example", "--password-stdin", input=PASSWORD + "\n"
        ).exit_code
        == 0
    )
    assert satchel("user", "disable", "g@home.example").exit_code == 0
    listing = satchel("user", "list").output.splitlines()
    assert listing[1].split()[:3] == ["g@home.example", "guardian", "disabled"]
    assert listing[2].split()[:3] == ["reg@school.example", "registrar", "active"]
    missing = satchel("user", "disable", "nobody@home.example")
    assert missing.exit_code == 1 and "No account" in missing.output
    enabled = satchel("user", "enable", "g@home.example")
    assert (enabled.exit_code, enabled.output) == (0, "enabled g@home.example\n")
    listing = satchel("user", "list").output.splitlines()
    assert listing[1].split()[:3] == ["g@home.example", "guardian", "active"]
    missing = satchel("user", "enable", "nobody@home.example")
    assert missing.exit_code == 1 and "No account" in missing.output


def test_bad_role_is_a_usage_error(satchel: Satchel) -> None:
    result = satchel("user", "add", "x@school.example", "--role", "janitor")
    assert result.exit_code == 2
    assert "janitor" in result.output


def test_db_upgrade_reports_the_revision(satchel: Satchel, database_url: str) -> None:
    result = satchel("db", "upgrade")
    assert result.exit_code == 0
    head = head_revision(make_engine(database_url))
    assert result.output.startswith(f"schema at {head}")


@pytest.mark.parametrize("command", [["db", "upgrade"], ["init"]])
def test_an_unreachable_database_is_named_once(tmp_path: Path, command: list[str]) -> None:
    dead = f"postgresql+psycopg://satchel@127.0.0.1:{free_port()}/satchel"
    result = Satchel(tmp_path / "data", dead)(*command)
    assert result.exit_code == 1, result.output
    [message] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert message.startswith("Error: the database is unavailable: OperationalError: ")
    assert result.output.lower().count("the database is unavailable") == 1
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["init"],
        ["serve"],
        ["db", "upgrade"],
        ["config", "show"],
        ["doctor"],
        ["user", "add"],
        ["user", "passwd"],
        ["user", "list"],
        ["user", "disable"],
        ["user", "enable"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage: " in result.output and len(result.output.splitlines()) > 3


def test_version_is_satchels() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"satchel {importlib.metadata.version('satchel')}\n"


def test_help_offers_no_flask_options_that_would_do_nothing() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    options = result.output.split("Options:")[1].split("Commands:")[0]
    assert "--help" in options
    for flask_option in ("--app", "--env-file", "--debug"):
        assert flask_option not in options


@pytest.mark.parametrize("option", ["--app=web.wsgi", "--env-file=x.env", "--debug"])
def test_flask_options_are_usage_errors(option: str) -> None:
    result = CliRunner().invoke(cli, [option, "config", "show"])
    assert result.exit_code == 2
    assert "No such option" in result.output


def test_flask_variables_set_no_option(tmp_path: Path) -> None:
    """FLASK_* variables name nothing here: not the app, an env file or an option."""
    result = CliRunner().invoke(
        cli,
        ["config", "show"],
        env={
            "SATCHEL_DATA_DIR": str(tmp_path),
            "FLASK_APP": "no_such_module:app",
            "FLASK_ENV_FILE": str(tmp_path / "missing.env"),
        },
    )
    assert result.exit_code == 0, result.output
    assert str(tmp_path) in result.output


def _console(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("satchel")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_")}
    return subprocess.run(
        [str(script), *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_works_with_a_bad_setting_which_the_command_then_names(tmp_path: Path) -> None:
    """Listing commands never loads the app, so a wrong setting cannot break --help."""
    env = {"SATCHEL_DATA_DIR": str(tmp_path), "SATCHEL_NO_SUCH_SETTING": "1"}
    for command in (["--help"], ["user", "--help"]):
        listed = _console(*command, env=env)
        assert listed.returncode == 0, listed.stderr
        assert "Traceback" not in listed.stderr and "Usage: satchel" in listed.stdout
    used = _console("config", "show", env=env)
    assert used.returncode == 2
    assert "configuration error: SATCHEL_NO_SUCH_SETTING" in used.stderr


def test_console_script_config_show_masks_secrets(tmp_path: Path) -> None:
    result = _console(
        "config",
        "show",
        env={
            "SATCHEL_DATA_DIR": str(tmp_path),
            "SATCHEL_SECRET_KEY": "s" * 40,
            "SATCHEL_DATABASE_URL": "postgresql+psycopg://satchel:pw-123@db.example/satchel",
        },
    )
    assert result.returncode == 0, result.stderr
    assert "s" * 40 not in result.stdout and "pw-123" not in result.stdout
    assert "secret_key" in result.stdout and "********" in result.stdout


def test_console_script_unknown_setting_exits_2_naming_it(tmp_path: Path) -> None:
    result = _console(
        "config", "show", env={"SATCHEL_DATA_DIR": str(tmp_path), "SATCHEL_BOGUS": "1"}
    )
    assert result.returncode == 2
    assert "SATCHEL_BOGUS: unknown setting" in result.stderr


def test_document_list_gives_the_ids_that_grants_and_shredding_take(satchel: Satchel) -> None:
    assert satchel("init").exit_code == 0 and satchel("demo").exit_code == 0
    registrar = ("--as", "registrar@demo.satchel.test")
    listed = satchel("document", "list", "d-1001", *registrar)
    assert listed.exit_code == 0, listed.output
    header, *rows, summary = listed.output.splitlines()
    assert header.split() == ["DOCUMENT", "ID", "CATEGORY", "TITLE"]
    assert summary == "3 documents in the folder of Lucia Lopez"
    iep = next(r for r in rows if " iep " in r)
    document_id = iep.split()[0]
    version = rows[rows.index(iep) + 1]
    assert version.startswith("  version 1 (current)  ") and ", 20" in version
    version_id = version.split()[3]

    # The ids work where other commands take them.
    shared = satchel(
        "grant", "add", "maria.lopez@demo.satchel.test", "D-1001",
        "--scope", f"document:{document_id}", *registrar,
    )  # fmt: skip
    assert shared.exit_code == 0, shared.output
    shredded = satchel(
        "keys", "shred", version_id, "--reason", "Retention period ended", input="y\n"
    )
    assert shredded.exit_code == 0, shredded.output
    again = satchel("document", "list", "D-1001", *registrar).output
    assert f"  version 1 (current)  {version_id}  destroyed" in again

    unknown = satchel("document", "list", "D-9999", *registrar)
    assert unknown.exit_code == 1 and "No student with the district id D-9999." in unknown.output
    exported = satchel(
        "audit", "export", "--format", "csv", "--actor", "registrar@demo.satchel.test"
    ).output
    assert exported.count(",folder.view,") == 2  # each listing is audited as a folder view


def test_demo_then_grants_and_key_rotation(satchel: Satchel) -> None:
    assert satchel("init").exit_code == 0
    demo = satchel("demo")
    assert demo.exit_code == 0, demo.output
    assert "3 students, 6 documents" in demo.output
    assert demo.output.count("@demo.satchel.test") == 6
    assert satchel("demo").exit_code == 1  # already loaded

    registrar = ("--as", "registrar@demo.satchel.test")
    listed = satchel("grant", "list", "D-1001", *registrar)
    assert listed.exit_code == 0 and "maria.lopez@demo.satchel.test" in listed.output
    header, *rows = listed.output.splitlines()
    (row,) = [r for r in rows if "maria.lopez@" in r]
    assert row.index("maria.lopez@") == header.index("GUARDIAN")  # the columns line up
    added = satchel(
        "grant",
        "add",
        "sam.okafor@demo.satchel.test",
        "D-1003",
        "--scope",
        "category:report_card",
        "--expires",
        "2099-06-30",
        *registrar,
    )
    assert added.exit_code == 0, added.output
    assert "until 2099-06-30" in added.output
    grant_id = added.output.rsplit("(grant ", 1)[1].rstrip(")\n")
    revoked = satchel("grant", "revoke", grant_id, "--reason", "End of year", *registrar)
    assert revoked.exit_code == 0 and "revoked grant" in revoked.output
    refused = satchel(
        "grant", "add", "jordan.lopez@demo.satchel.test", "D-1002", "--scope", "folder", *registrar
    )
    assert refused.exit_code == 1 and "restricted" in refused.output
    as_parent = ("--as", "maria.lopez@demo.satchel.test")
    not_hers = satchel(
        "grant", "add", "sam.okafor@demo.satchel.test", "D-1003", "--scope", "folder", *as_parent
    )
    assert not_hers.exit_code == 1
    assert not_hers.output == "Error: You are not allowed to do this.\n"
    trail = satchel("audit", "export", "--format", "jsonl", "--actor", as_parent[1])
    [entry] = [json.loads(line) for line in trail.output.splitlines()]
    assert (entry["action"], entry["outcome"]) == ("access.denied", "denied")
    assert entry["detail"] == "list_folder: role_not_permitted"  # finding D-1003, first
    refusals = satchel("audit", "export", "--format", "jsonl", "--outcome", "denied")
    denied = [json.loads(line) for line in refusals.output.splitlines()]
    assert entry in denied and {e["outcome"] for e in denied} == {"denied"}
    shares = satchel("audit", "export", "--format", "csv", "--action", "grant.create")
    rows = list(csv.DictReader(io.StringIO(shares.output)))
    assert len(rows) >= 2 and {r["action"] for r in rows} == {"grant.create"}
    [recorded] = [
        json.loads(line)
        for line in satchel("audit", "export", "--format", "jsonl").output.splitlines()
        if '"audit.export"' in line and "grant.create" in line
    ]
    assert recorded["detail"] == "format=csv action=grant.create"
    unknown = satchel("audit", "export", "--format", "csv", "--action", "document.eat")
    assert unknown.exit_code == 2 and "'document.eat' is not one of" in unknown.output

    rotated = satchel("keys", "rotate")
    assert rotated.exit_code == 0, rotated.output
    assert "active version 2: rewrapped 6 data keys, 0 left" in rotated.output
    status = satchel("keys", "status").output.splitlines()
    assert status[1].split()[-2:] == ["usable", "0"]
    assert status[2].split()[-2:] == ["active", "6"]
    assert satchel("keys", "retire", "--below", "2").exit_code == 0
    assert satchel("keys", "status").output.splitlines()[1].split()[-2:] == ["retired", "0"]
    unconfirmed = satchel("keys", "destroy", "--reason", "Backups of 2024 expired")
    assert unconfirmed.exit_code == 1 and "Aborted" in unconfirmed.output
    assert satchel("keys", "status").output.splitlines()[1].split()[-2:] == ["retired", "0"]
    destroyed = satchel("keys", "destroy", "--reason", "Backups of 2024 expired", "--yes")
    assert destroyed.exit_code == 0 and "key version 1 destroyed\n" in destroyed.output
    assert satchel("keys", "status").output.splitlines()[1].split()[-2:] == ["destroyed", "0"]
    again = satchel("keys", "destroy", "--reason", "Backups of 2024 expired", "--yes")
    assert "no retired key version left to destroy" in again.output


def test_user_link_prints_a_one_time_password_link(
    satchel: Satchel, tmp_path: Path, database_url: str
) -> None:
    from config import Settings
    from tests.support.app import csrf_from
    from web.app import create_app
    from web.context import runtime_of

    satchel("init")
    satchel("user", "add", "new.parent@home.example", "--role", "guardian")
    result = satchel(
        "user",
        "link",
        "new.parent@home.example",
        SATCHEL_PUBLIC_URL="https://records.district.example/",
    )
    assert result.exit_code == 0, result.output
    url = result.output.splitlines()[0]
    assert url.startswith("https://records.district.example/set-password/")
    path = url.removeprefix("https://records.district.example")

    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    app = create_app(settings)
    client = app.test_client()
    try:
        token = csrf_from(client.get(path).get_data(as_text=True))
        response = client.post(
            path, data={"password": PASSWORD, "confirm": PASSWORD, "csrf_token": token}
        )
        assert response.status_code in (200, 302), response.get_data(as_text=True)
        assert client.get(path).status_code in (404, 410)  # used once
    finally:
        runtime_of(app).close()  # release its own pooled connections
    assert satchel("user", "link", "nobody@home.example").exit_code == 1


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            PermissionError(errno.EACCES, "Permission denied", "/srv/transfer/out"),
            "Error: cannot use /srv/transfer/out: Permission denied\n",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device"),
            "Error: file system error: No space left on device\n",
        ),
    ],
)
def test_a_file_system_error_a_command_did_not_name_is_still_one_line(
    error: OSError, message: str
) -> None:
    @click.command()
    @reports_errors
    def failing() -> None:
        raise error

    result = CliRunner().invoke(failing)

    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output == message


REGISTRAR = ("--as", "registrar@demo.satchel.test")


def test_guardian_commands_list_link_restrict_and_unlink(satchel: Satchel) -> None:
    assert satchel("init").exit_code == 0 and satchel("demo").exit_code == 0
    maria, sam = "maria.lopez@demo.satchel.test", "sam.okafor@demo.satchel.test"

    def guardians(student: str) -> dict[str, str]:
        listed = satchel("guardian", "list", student, *REGISTRAR)
        assert listed.exit_code == 0, listed.output
        header, *rows, summary = listed.output.splitlines()
        assert header.split() == ["GUARDIAN", "NAME", "RELATIONSHIP", "STATUS"]
        assert summary.endswith(f"of {'Lucia Lopez' if student == 'D-1001' else 'Amara Okafor'}")
        return {row.split()[0]: row[header.index("RELATIONSHIP") :].strip() for row in rows}

    def marias_grants() -> int:
        return satchel("grant", "list", "D-1001", *REGISTRAR).output.count(maria)

    assert guardians("D-1001")[maria] == "parent       current"
    assert marias_grants() == 1

    # Unlinking asks first, naming the grants it revokes; without a yes nothing changes.
    asked = satchel("guardian", "unlink", maria, "D-1001", *REGISTRAR)
    assert asked.exit_code == 1 and "Aborted!" in asked.output
    assert "Ending the link revokes 1 grant in force:" in asked.output
    assert "  whole folder\n" in asked.output
    assert guardians("D-1001")[maria] == "parent       current" and marias_grants() == 1

    ended = satchel("guardian", "unlink", maria, "D-1001", *REGISTRAR, input="y\n")
    assert ended.exit_code == 0, ended.output
    assert f"unlinked {maria} from Lucia Lopez" in ended.output
    assert guardians("D-1001")[maria].startswith("parent       ended 20")
    assert marias_grants() == 0
    again = satchel("guardian", "unlink", maria, "D-1001", "--yes", *REGISTRAR)
    assert again.exit_code == 0 and "has ended already; nothing was changed" in again.output
    never = satchel("guardian", "unlink", sam, "D-1001", "--yes", *REGISTRAR)
    assert never.exit_code == 1
    assert never.output == f"Error: {sam} is not a guardian of Lucia Lopez.\n"

    # Linking again gives back no grant.
    relinked = satchel(
        "guardian", "link", maria, "D-1001", "--relationship", "guardian", *REGISTRAR
    )
    assert relinked.output == f"linked {maria} to Lucia Lopez as guardian\n"
    assert guardians("D-1001")[maria] == "guardian     current" and marias_grants() == 0

    restricted = satchel(
        "guardian", "restrict", sam, "D-1003", "--reason", "Court order 2026-114", *REGISTRAR
    )
    assert restricted.exit_code == 0, restricted.output
    assert guardians("D-1003")[sam] == "parent       restricted"

    as_parent = satchel("guardian", "list", "D-1001", "--as", maria)
    assert as_parent.exit_code == 1 and "not allowed" in as_parent.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["grant", "revoke", "not-a-uuid", "--reason", "x", *REGISTRAR],
            "Invalid value for 'GRANT_ID': 'not-a-uuid' is not a grant id (a UUID).",
        ),
        (
            ["keys", "shred", "not-a-uuid", "--reason", "x", "--yes"],
            "Invalid value for 'VERSION_ID': 'not-a-uuid' is not a document version id (a UUID).",
        ),
        (
            ["grant", "add", "g@home.example", "D-1001", "--scope", "everything", *REGISTRAR],
            "Invalid value for '--scope': Scope must be folder, category:NAME or document:ID, "
            "not 'everything'.",
        ),
        (
            ["grant", "add", "g@home.example", "D-1001", "--scope", "category:gossip", *REGISTRAR],
            "Invalid value for '--scope': Unknown category 'gossip'; use one of: ",
        ),
        (
            ["grant", "add", "g@home.example", "D-1001", "--scope", "document:42", *REGISTRAR],
            "Invalid value for '--scope': Not a document id: '42'.",
        ),
    ],
    ids=["grant-revoke", "keys-shred", "scope", "scope-category", "scope-document-id"],
)
def test_a_malformed_id_or_scope_is_a_usage_error_refused_before_anything_opens(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = Satchel(tmp_path / "data", None)(*args)
    assert result.exit_code == 2, result.output
    assert f"Error: {message}" in result.output
    assert "Usage: " in result.output
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [
                "student",
                "add",
                "D-9",
                "--given",
                "A",
                "--family",
                "B",
                "--birth-date",
                "2016-02-30",
                *REGISTRAR,
            ],
            "Invalid value for '--birth-date': '2016-02-30' is not a real date (YYYY-MM-DD).",
        ),
        (
            [
                "grant",
                "add",
                "g@home.example",
                "D-1001",
                "--scope",
                "folder",
                "--expires",
                "2020-13-01",
                *REGISTRAR,
            ],
            "Invalid value for '--expires': '2020-13-01' is not a real date (YYYY-MM-DD).",
        ),
        (
            ["audit", "export", "--format", "csv", "--since", "01/02/2026"],
            "Invalid value for '--since': '01/02/2026' is not a date (YYYY-MM-DD).",
        ),
        (
            ["audit", "export", "--format", "csv", "--until", "20260102"],
            "Invalid value for '--until': '20260102' is not a date (YYYY-MM-DD).",
        ),
    ],
    ids=["birth-date", "expires", "since", "until"],
)
def test_a_bad_date_is_a_usage_error_in_yyyy_mm_dd_terms(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = Satchel(tmp_path / "data", None)(*args)
    assert result.exit_code == 2, result.output
    assert f"Error: {message}\n" in result.output
    assert "%Y" not in result.output


def _commands(
    group: click.Group, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], click.Command]]:
    found: list[tuple[tuple[str, ...], click.Command]] = []
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += _commands(command, (*path, name))
        else:
            found.append(((*path, name), command))
    return found


def test_every_option_of_every_command_has_help_and_dates_read_yyyy_mm_dd() -> None:
    for path, command in _commands(cli):
        assert command.help, path
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, (path, param.opts)
        shown = CliRunner().invoke(cli, [*path, "--help"])
        assert shown.exit_code == 0, (path, shown.output)
        assert "%Y" not in shown.output and "%m" not in shown.output, path
    for path, option in [
        (("student", "add"), "--birth-date"),
        (("grant", "add"), "--expires"),
        (("audit", "export"), "--since"),
        (("audit", "export"), "--until"),
    ]:
        shown = CliRunner().invoke(cli, [*path, "--help"]).output
        assert f"{option} YYYY-MM-DD" in shown, (path, option)


def test_serve_help_names_where_the_default_workers_come_from() -> None:
    shown = CliRunner().invoke(cli, ["serve", "--help"]).output
    assert "SATCHEL_WORKERS" in " ".join(shown.split())
    assert "2 unless set" in " ".join(shown.split())


def test_keys_status_columns_line_up_with_their_headers(satchel: Satchel) -> None:
    assert satchel("init").exit_code == 0
    result = satchel("keys", "status")
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()
    assert row.split()[-2:] == ["active", "0"]
    assert row.index("active") == header.index("STATE")
    assert row.rindex("0") == header.index("DATA KEYS")
    created = row.split()[1]
    assert row.index(created) == header.index("CREATED")


def test_student_find_counts_in_the_singular_and_names_a_page_past_the_last(
    satchel: Satchel,
) -> None:
    assert satchel("init").exit_code == 0
    assert satchel("demo").exit_code == 0
    one = satchel("student", "find", "D-1001", *REGISTRAR)
    assert one.exit_code == 0, one.output
    assert one.output.splitlines()[-1] == "page 1 of 1 (1 student)"
    past = satchel("student", "find", "--page", "5", *REGISTRAR)
    assert past.exit_code == 0, past.output
    assert past.stderr == "page 5 does not exist; showing the last page, 1\n"
    assert past.stdout.splitlines()[-1] == "page 1 of 1 (3 students)"
    assert len(past.stdout.splitlines()) == 5  # the header, 3 students, the page line
    first = satchel("student", "find", "--page", "1", *REGISTRAR)
    assert first.stderr == ""
