"""The keyring: wrapping, rotation, retirement, crypto-shredding, the file's safety, and
changes made by another process."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from storage import keyring as keyring_module
from storage.envelope import EncryptingReader, ObjectIdentity, decrypt, sealed_size
from storage.errors import IntegrityError, KeyringError
from storage.keyring import DataKey, Keyring

NOW = datetime(2024, 9, 1, 8, 0, tzinfo=UTC)
IDENTITY = ObjectIdentity(document_id="doc-1", version_id="ver-1")
CONTEXT = IDENTITY.encode()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "keyring.json"


@pytest.fixture
def ring(path: Path) -> Keyring:
    return Keyring.create(path, now=NOW)


def file_state(path: Path) -> dict[str, object]:
    state: dict[str, object] = json.loads(path.read_text())
    return state


def kek_material(path: Path, version: int) -> bytes | None:
    versions = json.loads(path.read_text())["versions"]
    key = versions[version - 1]["key"]
    return None if key is None else base64.b64decode(key)


def seal(plaintext: bytes, data_key: DataKey) -> bytes:
    reader = EncryptingReader(
        io.BytesIO(plaintext), data_key.plaintext, IDENTITY, data_key.key_id, data_key.key_version
    )
    return reader.read()


def open_sealed(sealed: bytes, dek: bytes) -> bytes:
    return b"".join(decrypt(lambda: io.BytesIO(sealed), dek, IDENTITY))


# --- creation and the file ----------------------------------------------------------------------


def test_create_writes_a_private_file_in_a_private_directory(ring: Keyring, path: Path) -> None:
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ring.path == path
    assert (ring.key_id, ring.active_version) == ("kek", 1)
    [info] = ring.status()
    assert (info.version, info.created_at, info.active, info.retired) == (1, NOW, True, False)


def test_create_refuses_to_overwrite(ring: Keyring, path: Path) -> None:
    before = path.read_bytes()
    with pytest.raises(KeyringError, match="already exists"):
        Keyring.create(path, now=NOW)
    assert path.read_bytes() == before


def test_create_refuses_a_naive_clock_and_a_bad_key_id(path: Path) -> None:
    with pytest.raises(ValueError, match="timezone"):
        Keyring.create(path, now=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="key id"):
        Keyring.create(path, now=NOW, key_id="bad id")
    assert not path.exists()


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o660, 0o606, 0o620, 0o602])
def test_load_refuses_a_file_others_can_read_or_write(ring: Keyring, path: Path, mode: int) -> None:
    path.chmod(mode)
    with pytest.raises(KeyringError) as caught:
        Keyring.load(path)
    assert str(path) in str(caught.value)
    assert f"{mode:04o}" in str(caught.value)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_load_accepts_an_owner_only_file(ring: Keyring, path: Path, mode: int) -> None:
    path.chmod(mode)
    assert Keyring.load(path).active_version == 1


def test_load_names_a_missing_file(path: Path) -> None:
    with pytest.raises(KeyringError, match=str(path)):
        Keyring.load(path)


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[]",
        b'{"format": 1}',
        b'{"format": 2, "key_id": "kek", "active_version": 1, "min_decryption_version": 1,'
        b' "generation": 1, "versions": []}',
    ],
)
def test_load_refuses_a_malformed_file(ring: Keyring, path: Path, content: bytes) -> None:
    path.write_bytes(content)
    with pytest.raises(KeyringError, match=str(path)):
        Keyring.load(path)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("active_version", 2),
        ("min_decryption_version", 0),
        ("generation", 0),
        ("key_id", "has space"),
        ("active_version", True),
    ],
)
def test_load_refuses_an_inconsistent_file(
    ring: Keyring, path: Path, field: str, value: object
) -> None:
    state = file_state(path)
    state[field] = value
    path.write_text(json.dumps(state))
    with pytest.raises(KeyringError, match=str(path)):
        Keyring.load(path)


def test_load_refuses_a_usable_version_without_material(ring: Keyring, path: Path) -> None:
    state = json.loads(path.read_text())
    state["versions"][0]["key"] = None
    path.write_text(json.dumps(state))
    with pytest.raises(KeyringError, match="no key material"):
        Keyring.load(path)


# --- wrapping -------------------------------------------------------------------------------------


def test_wrap_round_trip_through_a_reloaded_keyring(ring: Keyring, path: Path) -> None:
    data_key = ring.generate_data_key(CONTEXT)
    assert len(data_key.plaintext) == 32
    assert (data_key.key_id, data_key.key_version) == ("kek", 1)
    assert data_key.plaintext not in data_key.wrapped
    reloaded = Keyring.load(path)
    assert reloaded.unwrap(data_key.wrapped, "kek", 1, CONTEXT) == data_key.plaintext


def test_every_data_key_is_fresh(ring: Keyring) -> None:
    first, second = ring.generate_data_key(CONTEXT), ring.generate_data_key(CONTEXT)
    assert first.plaintext != second.plaintext
    assert first.wrapped != second.wrapped


def test_repr_never_shows_key_material(ring: Keyring, path: Path) -> None:
    data_key = ring.generate_data_key(CONTEXT)
    text = repr(data_key) + repr(ring) + repr(ring.status())
    assert data_key.plaintext.hex() not in text
    assert repr(data_key.plaintext) not in text
    material = kek_material(path, 1)
    assert material is not None
    assert repr(material) not in text
    assert base64.b64encode(material).decode() not in text


def test_unwrap_rejects_any_tampered_byte(ring: Keyring) -> None:
    wrapped = ring.generate_data_key(CONTEXT).wrapped
    for position in range(len(wrapped)):
        tampered = bytearray(wrapped)
        tampered[position] ^= 0x01
        with pytest.raises(IntegrityError):
            ring.unwrap(bytes(tampered), "kek", 1, CONTEXT)
    for malformed in (wrapped[:-1], wrapped + b"\x00", b""):
        with pytest.raises(IntegrityError):
            ring.unwrap(malformed, "kek", 1, CONTEXT)


def test_unwrap_is_bound_to_its_context(ring: Keyring) -> None:
    wrapped = ring.generate_data_key(CONTEXT).wrapped
    for other in (ObjectIdentity("doc-2", "ver-1"), ObjectIdentity("doc-1", "ver-2")):
        with pytest.raises(IntegrityError):
            ring.unwrap(wrapped, "kek", 1, other.encode())


def test_unwrap_names_unknown_keys_and_versions(ring: Keyring) -> None:
    wrapped = ring.generate_data_key(CONTEXT).wrapped
    with pytest.raises(KeyringError, match="version 2"):
        ring.unwrap(wrapped, "kek", 2, CONTEXT)
    with pytest.raises(KeyringError, match="other"):
        ring.unwrap(wrapped, "other", 1, CONTEXT)


# --- rotation, retirement, destruction -----------------------------------------------------------


def test_rotate_keeps_old_keys_usable_and_rewrap_moves_them(ring: Keyring, path: Path) -> None:
    old = ring.generate_data_key(CONTEXT)
    info = ring.rotate(now=NOW + timedelta(days=1))
    assert (info.version, info.active, info.retired) == (2, True, False)
    assert info.created_at == NOW + timedelta(days=1)

    reloaded = Keyring.load(path)
    assert reloaded.active_version == 2
    assert reloaded.unwrap(old.wrapped, "kek", 1, CONTEXT) == old.plaintext
    assert reloaded.generate_data_key(CONTEXT).key_version == 2

    moved = reloaded.rewrap(old.wrapped, "kek", 1, CONTEXT)
    assert (moved.key_version, moved.plaintext) == (2, old.plaintext)
    assert reloaded.unwrap(moved.wrapped, "kek", 2, CONTEXT) == old.plaintext
    # A wrapped key carried to a row claiming another version fails to unwrap.
    with pytest.raises(IntegrityError):
        reloaded.unwrap(moved.wrapped, "kek", 1, CONTEXT)
    with pytest.raises(IntegrityError):
        reloaded.unwrap(old.wrapped, "kek", 2, CONTEXT)
    assert [(v.version, v.active) for v in reloaded.status()] == [(1, False), (2, True)]


def test_retire_below_makes_old_versions_unusable(ring: Keyring, path: Path) -> None:
    old = ring.generate_data_key(CONTEXT)
    ring.rotate(now=NOW)
    moved = ring.rewrap(old.wrapped, "kek", 1, CONTEXT)
    ring.retire_below(2)

    for keyring in (ring, Keyring.load(path)):
        with pytest.raises(KeyringError, match="retired"):
            keyring.unwrap(old.wrapped, "kek", 1, CONTEXT)
        with pytest.raises(KeyringError, match="retired"):
            keyring.rewrap(old.wrapped, "kek", 1, CONTEXT)
        assert keyring.unwrap(moved.wrapped, "kek", 2, CONTEXT) == old.plaintext
        assert [(v.version, v.retired) for v in keyring.status()] == [(1, True), (2, False)]
    # Retirement is not destruction: the material is still in the file until destroyed.
    assert kek_material(path, 1) is not None


def test_retire_below_refuses_the_active_version_and_undoing(ring: Keyring, path: Path) -> None:
    with pytest.raises(KeyringError, match="active"):
        ring.retire_below(2)
    ring.rotate(now=NOW)
    ring.retire_below(2)
    with pytest.raises(KeyringError, match="cannot be undone"):
        ring.retire_below(1)
    assert Keyring.load(path).status()[0].retired


def test_destroy_retired_shreds_every_object_only_they_wrapped(ring: Keyring, path: Path) -> None:
    shredded_key = ring.generate_data_key(CONTEXT)
    shredded_object = seal(b"old report card", shredded_key)
    ring.rotate(now=NOW)
    kept_key = ring.rewrap(ring.generate_data_key(CONTEXT).wrapped, "kek", 2, CONTEXT)
    old_material = kek_material(path, 1)
    assert old_material is not None
    assert ring.destroy_retired() == []  # nothing retired yet

    ring.retire_below(2)
    assert ring.destroy_retired() == [1]
    assert ring.destroy_retired() == []

    raw = path.read_bytes()
    assert kek_material(path, 1) is None
    assert base64.b64encode(old_material) not in raw
    reloaded = Keyring.load(path)
    [first, second] = reloaded.status()
    assert (first.retired, first.destroyed, second.destroyed) == (True, True, False)
    with pytest.raises(KeyringError):
        reloaded.unwrap(shredded_key.wrapped, "kek", 1, CONTEXT)
    assert reloaded.unwrap(kept_key.wrapped, "kek", 2, CONTEXT) == kept_key.plaintext
    # Nothing left in the keyring opens the object: not the surviving KEK, not a new DEK.
    surviving = kek_material(path, 2)
    assert surviving is not None
    for candidate in (surviving, reloaded.generate_data_key(CONTEXT).plaintext):
        with pytest.raises(IntegrityError):
            open_sealed(shredded_object, candidate)


def test_a_discarded_data_key_makes_the_object_unrecoverable(ring: Keyring, path: Path) -> None:
    data_key = ring.generate_data_key(CONTEXT)
    plaintext = b"IEP meeting notes"
    sealed = seal(plaintext, data_key)
    assert open_sealed(sealed, data_key.plaintext) == plaintext
    # The object holds no copy of the data key, wrapped or not: every byte is header + body.
    assert len(sealed) == sealed_size(len(plaintext))
    assert data_key.wrapped not in sealed
    assert data_key.plaintext not in sealed
    # Once the version row's wrapped DEK is deleted, what is left is the object and the
    # keyring; nothing the keyring holds or can make opens the object.
    material = kek_material(path, 1)
    assert material is not None
    for candidate in (material, ring.generate_data_key(CONTEXT).plaintext):
        with pytest.raises(IntegrityError):
            open_sealed(sealed, candidate)


# --- persistence --------------------------------------------------------------------------------


def test_every_change_is_persisted_atomically_and_privately(ring: Keyring, path: Path) -> None:
    ring.rotate(now=NOW)
    ring.retire_below(2)
    ring.destroy_retired()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # No temp file is left behind; the lock file serialises writers.
    assert sorted(p.name for p in path.parent.iterdir()) == ["keyring.json", "keyring.json.lock"]
    assert file_state(path)["generation"] == 4


def test_a_failed_write_leaves_file_and_memory_unchanged(
    ring: Keyring, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = path.read_bytes()

    def failing_replace(source: object, target: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space"):
        ring.rotate(now=NOW)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["keyring.json", "keyring.json.lock"]
    assert ring.active_version == 1
    assert ring.rotate(now=NOW).version == 2
    assert Keyring.load(path).active_version == 2


def test_a_stale_keyring_catches_up_before_it_changes_the_file(ring: Keyring, path: Path) -> None:
    other_process = Keyring.load(path)
    ring.rotate(now=NOW)
    second = kek_material(path, 2)
    assert other_process.rotate(now=NOW).version == 3
    # The other process's version 2 survives: nothing was overwritten from a stale copy.
    assert kek_material(path, 2) == second
    assert file_state(path)["generation"] == 3
    assert Keyring.load(path).active_version == 3


def test_a_change_racing_another_process_is_refused(ring: Keyring, path: Path) -> None:
    racing = False

    def random_racing_a_rotation(size: int) -> bytes:
        # Runs after the other keyring has read the file and before it writes its change.
        if racing:
            ring.rotate(now=NOW)
            # Another thread of the same process catches up meanwhile: the change must still
            # be checked against the file it was computed from, not against the newer copy.
            assert other_process.active_version == 2
        return os.urandom(size)

    other_process = Keyring.load(path, random=random_racing_a_rotation)
    racing = True
    with pytest.raises(KeyringError, match="changed by another process"):
        other_process.rotate(now=NOW)
    racing = False
    second = kek_material(path, 2)
    assert second is not None
    assert file_state(path)["generation"] == 2
    assert other_process.rotate(now=NOW).version == 3
    assert kek_material(path, 2) == second


# --- changes made by another process --------------------------------------------------------------
# Two Keyring objects on one file stand for a server worker and the `satchel keys` command.


@pytest.fixture
def worker(ring: Keyring, path: Path) -> Keyring:
    return Keyring.load(path)


def replace_file(path: Path, content: bytes) -> None:
    """Write ``content`` the way another process would: a new private file moved into place."""
    temp = path.with_name("incoming.tmp")
    temp.write_bytes(content)
    temp.chmod(0o600)
    os.replace(temp, path)


def test_a_worker_wraps_and_unwraps_under_a_version_rotated_elsewhere(
    ring: Keyring, worker: Keyring
) -> None:
    old = worker.generate_data_key(CONTEXT)
    ring.rotate(now=NOW + timedelta(days=1))
    moved = ring.rewrap(old.wrapped, "kek", 1, CONTEXT)
    assert moved.key_version == 2

    # Before, the worker knew only version 1: "has no version 2" until a restart.
    assert worker.unwrap(moved.wrapped, "kek", 2, CONTEXT) == old.plaintext
    fresh = worker.generate_data_key(CONTEXT)
    assert fresh.key_version == 2
    assert ring.unwrap(fresh.wrapped, "kek", 2, CONTEXT) == fresh.plaintext
    assert worker.rewrap(old.wrapped, "kek", 1, CONTEXT).key_version == 2
    assert worker.active_version == 2
    assert [(v.version, v.active) for v in worker.status()] == [(1, False), (2, True)]


def test_a_worker_refuses_a_version_retired_elsewhere(ring: Keyring, worker: Keyring) -> None:
    old = worker.generate_data_key(CONTEXT)
    assert worker.unwrap(old.wrapped, "kek", 1, CONTEXT) == old.plaintext
    ring.rotate(now=NOW)
    ring.retire_below(2)

    with pytest.raises(KeyringError, match="retired"):
        worker.unwrap(old.wrapped, "kek", 1, CONTEXT)
    with pytest.raises(KeyringError, match="retired"):
        worker.rewrap(old.wrapped, "kek", 1, CONTEXT)
    assert [(v.version, v.retired) for v in worker.status()] == [(1, True), (2, False)]
    # Its own changes start from the file too: retiring again below 1 would be an undo.
    with pytest.raises(KeyringError, match="cannot be undone"):
        worker.retire_below(1)


def test_a_worker_drops_material_destroyed_elsewhere(ring: Keyring, worker: Keyring) -> None:
    old = worker.generate_data_key(CONTEXT)
    ring.rotate(now=NOW)
    ring.retire_below(2)
    assert ring.destroy_retired() == [1]

    [first, second] = worker.status()
    assert (first.destroyed, second.destroyed) == (True, False)
    with pytest.raises(KeyringError):
        worker.unwrap(old.wrapped, "kek", 1, CONTEXT)
    assert worker.destroy_retired() == []
    # The property itself, which no public call can show: the worker's copy of the keyring
    # no longer holds version 1's key.
    state, _ = worker._loaded
    assert [v.material is None for v in state.versions] == [True, False]


def test_destroy_retired_erases_only_the_versions_asked_for(ring: Keyring, path: Path) -> None:
    ring.rotate(now=NOW)
    ring.rotate(now=NOW)
    ring.retire_below(3)
    assert ring.destroy_retired([1, 3]) == [1]  # 3 is active, not retired: left alone
    assert (kek_material(path, 1), kek_material(path, 2) is not None) == (None, True)
    assert ring.destroy_retired() == [2]


def _not_json(path: Path) -> None:
    replace_file(path, b"{ truncated")


def _usable_version_without_key(path: Path) -> None:
    state = json.loads(path.read_text())
    state["versions"][0]["key"] = None
    replace_file(path, json.dumps(state).encode())


def _readable_by_others(path: Path) -> None:
    path.chmod(0o644)


def _removed(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_not_json, "is malformed"),
        (_usable_version_without_key, "no key material"),
        (_readable_by_others, "0644"),
        (_removed, "has disappeared since it was loaded"),
    ],
)
def test_a_worker_refuses_a_file_damaged_elsewhere_until_it_is_good_again(
    ring: Keyring,
    worker: Keyring,
    path: Path,
    damage: Callable[[Path], None],
    message: str,
) -> None:
    data_key = worker.generate_data_key(CONTEXT)
    good = path.read_bytes()
    damage(path)

    operations: list[Callable[[], object]] = [
        lambda: worker.unwrap(data_key.wrapped, "kek", 1, CONTEXT),
        lambda: worker.generate_data_key(CONTEXT),
        lambda: worker.rewrap(data_key.wrapped, "kek", 1, CONTEXT),
        worker.status,
        lambda: worker.active_version,
        lambda: worker.rotate(now=NOW),
    ]
    for operation in operations:
        # Every operation refuses: none falls back silently on the copy read before.
        with pytest.raises(KeyringError, match=message) as caught:
            operation()
        assert str(path) in str(caught.value)
    # The last valid state is kept, unused: repr (which never touches the file) shows it.
    assert "active_version=1" in repr(worker)

    replace_file(path, good)
    assert worker.unwrap(data_key.wrapped, "kek", 1, CONTEXT) == data_key.plaintext
    assert worker.active_version == 1


def test_an_unchanged_file_is_not_read_again(
    ring: Keyring, worker: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[Path] = []
    stats: list[object] = []
    real_read, real_stat = keyring_module._read_file, os.stat

    def counting_read(path: Path) -> tuple[bytes, object]:
        reads.append(path)
        return real_read(path)

    def counting_stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        stats.append(path)
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(keyring_module, "_read_file", counting_read)
    data_key = worker.generate_data_key(CONTEXT)
    for _ in range(20):
        worker.unwrap(data_key.wrapped, "kek", 1, CONTEXT)
        worker.generate_data_key(CONTEXT)
        worker.status()
    assert reads == []

    monkeypatch.setattr(os, "stat", counting_stat)
    worker.unwrap(data_key.wrapped, "kek", 1, CONTEXT)
    monkeypatch.setattr(os, "stat", real_stat)
    assert len(stats) == 1  # the whole cost of checking, when nothing changed

    ring.rotate(now=NOW)
    reads.clear()
    for _ in range(20):
        assert worker.generate_data_key(CONTEXT).key_version == 2
    assert len(reads) == 1  # read once after the change, then trusted again


def test_threads_sharing_a_keyring_follow_rotations_without_going_back(
    ring: Keyring, worker: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads_by_workers: list[str] = []
    real_read = keyring_module._read_file

    def counting_read(path: Path) -> tuple[bytes, object]:
        if threading.current_thread() is not threading.main_thread():
            reads_by_workers.append(threading.current_thread().name)
        return real_read(path)

    monkeypatch.setattr(keyring_module, "_read_file", counting_read)
    rotations = 5
    done = threading.Event()

    def wrap_until_done() -> list[DataKey]:
        made: list[DataKey] = []
        while not done.is_set() or len(made) < 10:
            made.append(worker.generate_data_key(CONTEXT))
            last = made[-1]
            assert worker.unwrap(last.wrapped, "kek", last.key_version, CONTEXT) == last.plaintext
        return made

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(wrap_until_done) for _ in range(8)]
        for _ in range(rotations):
            ring.rotate(now=NOW)
        done.set()
        results = [future.result() for future in futures]

    final = Keyring.load(ring.path)
    for made in results:
        versions = [data_key.key_version for data_key in made]
        assert versions == sorted(versions)  # a thread never goes back to an older version
        for data_key in made:
            assert (
                final.unwrap(data_key.wrapped, "kek", data_key.key_version, CONTEXT)
                == data_key.plaintext
            )
    assert worker.generate_data_key(CONTEXT).key_version == rotations + 1
    # The reload is locked and re-checked: never more reads than there were new files.
    assert len(reads_by_workers) <= rotations
