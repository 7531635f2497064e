"""The model store on a real file system, with the shipped models as update payloads, and
`edge-agent models` run on it."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.errors import UserError
from edge_agent.updates.manifest import UpdateManifest, UpdateRefused, parse_manifest
from edge_agent.updates.store import ModelStore
from tests.agent_helpers import config_text
from tests.conftest import MODELS
from tests.test_update_manifest import LIMIT, file_ref, manifest_dict


def manifest(version: str, stem: str = "digits_int8") -> UpdateManifest:
    files = {
        "model": file_ref(MODELS / f"{stem}.tflite"),
        "manifest": file_ref(MODELS / f"{stem}.json"),
    }
    return parse_manifest(manifest_dict(version=version, files=files), LIMIT)


def download(folder: Path, update: UpdateManifest, stem: str = "digits_int8") -> dict[str, Path]:
    """Fresh copies of the payload, as a finished download leaves them."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for role, suffix in (("model", ".tflite"), ("manifest", ".json")):
        target = folder / f"{update.version}-{role}.part"
        shutil.copyfile(MODELS / f"{stem}{suffix}", target)
        files[role] = target
    return files


def install(store: ModelStore, tmp_path: Path, *versions: str) -> None:
    for version in versions:
        update = manifest(version)
        store.install(update, download(tmp_path / "downloads", update))


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "state" / "models", keep_versions=2)


def test_install_moves_verified_files_under_their_manifest_names(
    store: ModelStore, tmp_path: Path
) -> None:
    update = manifest("1.1.0")
    files = download(tmp_path / "dl", update)
    folder = store.install(update, files)
    assert folder == store.root / "digits" / "1.1.0"
    assert sorted(p.name for p in folder.iterdir()) == [
        "digits_int8.json",
        "digits_int8.tflite",
        "update.json",
    ]
    assert (folder / "digits_int8.tflite").read_bytes() == (
        MODELS / "digits_int8.tflite"
    ).read_bytes()
    assert not any(p.exists() for p in files.values())
    assert store.manifest("digits", "1.1.0") == update
    assert store.versions("digits") == ["1.1.0"]
    assert [p.name for p in (store.root / "digits").iterdir()] == ["1.1.0"]


def test_reinstall_keeps_the_version_and_a_different_one_is_refused(
    store: ModelStore, tmp_path: Path
) -> None:
    update = manifest("1.1.0")
    folder = store.install(update, download(tmp_path / "a", update))
    again = download(tmp_path / "b", update)
    assert store.install(update, again) == folder
    assert all(p.exists() for p in again.values())  # nothing replaced, nothing taken
    other = manifest("1.1.0", stem="digits_float")
    with pytest.raises(UpdateRefused, match="already installed with different files"):
        store.install(other, download(tmp_path / "c", other, stem="digits_float"))


def test_a_corrupt_download_installs_nothing(store: ModelStore, tmp_path: Path) -> None:
    update = manifest("1.1.0")
    files = download(tmp_path / "dl", update)
    with files["model"].open("r+b") as f:
        f.seek(50)
        f.write(b"\xff\xfe")
    with pytest.raises(UpdateRefused, match="model: sha256 mismatch"):
        store.install(update, files)
    assert store.versions("digits") == []
    assert list((store.root / "digits").iterdir()) == []
    with pytest.raises(UserError, match="files given"):
        store.install(update, {"model": files["model"]})


def test_activate_commit_rollback_down_to_the_config_file(
    store: ModelStore, tmp_path: Path
) -> None:
    install(store, tmp_path, "1.0.0", "1.1.0")
    assert store.active("digits") is None and store.model_path("digits") is None
    first = store.activate("digits", "1.0.0")
    assert (first.version, first.previous, first.state) == ("1.0.0", None, "trial")
    assert store.commit("digits").state == "committed"
    second = store.activate("digits", "1.1.0")
    assert (second.version, second.previous, second.state) == ("1.1.0", "1.0.0", "trial")
    assert store.model_path("digits") == store.root / "digits" / "1.1.0" / "digits_int8.tflite"
    on_disk = json.loads((store.root / "digits" / "active.json").read_text())
    assert on_disk == {"version": "1.1.0", "previous": "1.0.0", "state": "trial",
                       "since": second.since}  # fmt: skip

    back = store.rollback("digits")
    assert back is not None
    assert (back.version, back.previous, back.state) == ("1.0.0", None, "committed")
    assert store.versions("digits") == ["1.0.0", "1.1.0"]  # rolled-back version stays
    assert store.rollback("digits") is None
    assert not (store.root / "digits" / "active.json").exists()
    assert store.model_path("digits") is None
    with pytest.raises(UserError, match="no update is active"):
        store.rollback("digits")
    with pytest.raises(UserError, match="no update is active"):
        store.commit("digits")


def test_a_superseded_trial_is_never_the_rollback_target(store: ModelStore, tmp_path: Path) -> None:
    install(store, tmp_path, "1.0.0", "1.1.0", "1.2.0")
    store.activate("digits", "1.0.0")
    store.commit("digits")
    store.activate("digits", "1.1.0")
    record = store.activate("digits", "1.2.0")
    assert (record.version, record.previous) == ("1.2.0", "1.0.0")
    assert store.activate("digits", "1.2.0") == record  # already active: unchanged
    with pytest.raises(UserError, match=r"version '9\.9' is not installed"):
        store.activate("digits", "9.9")


def test_active_json_survives_and_crash_leftovers_are_cleaned(
    store: ModelStore, tmp_path: Path
) -> None:
    install(store, tmp_path, "1.0.0")
    record = store.activate("digits", "1.0.0")
    folder = store.root / "digits"
    # What a power cut leaves: a half-built version and a half-written active.json.
    half = folder / ".1.1.0.tmp-k3j2"
    half.mkdir()
    (half / "digits_int8.tflite").write_bytes(b"TFL3 partial")
    (folder / "active.json.tmp").write_text('{"version": "1.1')
    (folder / "active.json.tmp-abc123").write_text("")
    assert store.versions("digits") == ["1.0.0"]

    reopened = ModelStore(store.root, keep_versions=2)
    assert reopened.active("digits") == record
    assert sorted(p.name for p in folder.iterdir()) == ["1.0.0", "active.json"]
    assert reopened.model_path("digits") == folder / "1.0.0" / "digits_int8.tflite"


def test_an_unreadable_active_json_runs_the_config_file(store: ModelStore, tmp_path: Path) -> None:
    install(store, tmp_path, "1.0.0")
    store.activate("digits", "1.0.0")
    (store.root / "digits" / "active.json").write_text("{not json")
    assert store.active("digits") is None and store.model_path("digits") is None
    assert store.rollback("digits") is None
    assert not (store.root / "digits" / "active.json").exists()


def test_prune_keeps_the_newest_installs_and_never_active_or_previous(
    store: ModelStore, tmp_path: Path
) -> None:
    # Install order, not name order: 1.10 came after 1.9.
    install(store, tmp_path, "1.8", "1.9", "1.10", "1.11", "1.12")
    assert store.versions("digits") == ["1.8", "1.9", "1.10", "1.11", "1.12"]
    store.activate("digits", "1.9")
    store.commit("digits")
    store.activate("digits", "1.10")
    assert store.prune("digits") == ["1.8"]
    assert store.versions("digits") == ["1.9", "1.10", "1.11", "1.12"]
    assert not any(p.name.startswith(".") for p in (store.root / "digits").iterdir())
    assert store.rollback("digits") is not None
    assert store.prune("digits") == ["1.10"]
    assert store.versions("digits") == ["1.9", "1.11", "1.12"]


@pytest.mark.parametrize("bad", ["../x", "..", "a/b", "/etc/passwd", ".hidden", ""])
def test_names_and_versions_that_are_paths_are_refused(store: ModelStore, bad: str) -> None:
    with pytest.raises(UserError, match="not a valid name"):
        store.activate(bad, "1.0.0")
    with pytest.raises(UserError, match="not a valid name"):
        store.versions(bad)
    with pytest.raises(UserError, match="not a valid version"):
        store.version_dir("digits", bad)
    with pytest.raises(UserError, match="not a valid version"):
        store.activate("digits", bad)


def test_concurrent_installs_and_activations(store: ModelStore, tmp_path: Path) -> None:
    versions = [f"2.{i}" for i in range(8)]
    updates = {v: manifest(v) for v in versions}
    files = {v: download(tmp_path / v, updates[v]) for v in versions}
    errors: list[BaseException] = []

    def work(version: str) -> None:
        try:
            store.install(updates[version], files[version])
            store.activate("digits", version)
            store.commit("digits")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(v,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(store.versions("digits")) == versions
    record = store.active("digits")
    assert record is not None and record.version in versions and record.state == "committed"


def test_list_shows_every_model(store: ModelStore, tmp_path: Path) -> None:
    install(store, tmp_path, "1.0.0", "1.1.0")
    store.activate("digits", "1.1.0")
    listing = store.list()
    assert listing["digits"]["versions"] == ["1.0.0", "1.1.0"]
    assert (listing["digits"]["active"], listing["digits"]["state"]) == ("1.1.0", "trial")


# The command line ---------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(config_text(tmp_path / "state", ""))
    return path


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["models", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_list_activate_rollback(
    store: ModelStore, tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install(store, tmp_path, "1.0.0", "1.1.0")
    code, out, _ = cli(capsys, "list", "--config", str(config))
    assert code == 0
    lines = sorted(out.splitlines())
    assert lines[0].startswith("detector: config file; installed: none; runs ")
    assert lines[1].startswith("digits: config file; installed: 1.0.0, 1.1.0; runs ")
    assert lines[1].endswith("models/digits_int8.tflite")

    code, out, _ = cli(capsys, "activate", "digits", "1.1.0", "--config", str(config))
    assert (code, out) == (0, "digits: the config's file -> 1.1.0 (trial)\n")
    code, out, _ = cli(capsys, "list", "--config", str(config), "--json")
    listing = json.loads(out)
    assert listing["digits"]["active"] == "1.1.0" and listing["digits"]["state"] == "trial"
    assert listing["digits"]["path"] == str(
        store.version_dir("digits", "1.1.0") / "digits_int8.tflite"
    )
    assert listing["detector"]["active"] is None

    code, out, _ = cli(capsys, "rollback", "digits", "--config", str(config))
    assert code == 0
    assert out.startswith("digits: 1.1.0 -> the config's file (")
    assert store.active("digits") is None


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["activate", "camera", "1.0.0"], "model 'camera': not in the config"),
        (["activate", "digits", "7.0"], "model 'digits': version '7.0' is not installed"),
        (["activate", "digits", "../../x"], "version '../../x': not a valid version"),
        (["rollback", "digits"], "model 'digits': no update is active"),
    ],
)
def test_cli_mistakes_are_one_line_and_exit_2(
    config: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    code, out, err = cli(capsys, *args, "--config", str(config))
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and fragment in err, err
