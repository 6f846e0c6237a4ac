"""Integration: the suite runs on the database it says (``BANANASTAND_TEST_DATABASE``):
servers, child processes and CLI calls on one data folder share that folder's database,
and on PostgreSQL no SQLite file appears anywhere; ``make test`` runs the databases of
``BANANASTAND_TEST_DATABASES``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from bananastand.store.tables import api_keys
from conftest import DATABASE, Server, ServerProcess, cli, database_of, make_key, rows_of
from databases import UnknownDatabase, for_make_test, for_this_run

SCHEMES = {"sqlite": "sqlite:", "postgresql": "postgresql+psycopg:"}


def test_servers_commands_and_rows_on_a_folder_share_its_database(
    start_server: Callable[..., Server], spawn: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "shared-folder"
    first = start_server(data_dir=data_dir, run_worker=False)
    assert first.settings.effective_database_url == database_of(data_dir)
    assert database_of(data_dir).startswith(SCHEMES[DATABASE])
    made_here = make_key(data_dir)
    listed = cli(data_dir, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    assert made_here[:12] in listed.stdout
    second = start_server(data_dir=data_dir, run_worker=False)  # the same folder again
    assert second.settings.effective_database_url == first.settings.effective_database_url
    task = second.create(made_here, {"model": "nano-banana-pro", "input": {"prompt": "x"}})
    child = spawn("serve", "--no-worker", env={"BANANASTAND_DATA_DIR": str(data_dir)})
    seen = httpx.get(
        f"{child.base_url}/api/v1/jobs/recordInfo",
        params={"taskId": task["data"]["taskId"]},
        headers={"Authorization": f"Bearer {made_here}"},
    ).json()
    assert seen["code"] == 200, seen
    with rows_of(data_dir) as connection:
        assert connection.execute(select(func.count()).select_from(api_keys)).scalar_one() == 1
    elsewhere = start_server(run_worker=False)
    assert elsewhere.settings.effective_database_url != first.settings.effective_database_url
    if DATABASE == "postgresql":
        assert not list(tmp_path.rglob("*.db"))


def test_which_databases_make_test_runs() -> None:
    assert for_make_test({}, postgres_installed=True) == ["sqlite", "postgresql"]
    assert for_make_test({}, postgres_installed=False) == ["sqlite"]
    assert for_make_test({"CI": "1"}, postgres_installed=False) == ["sqlite", "postgresql"]
    chosen = {"BANANASTAND_TEST_DATABASES": " postgresql, sqlite "}
    assert for_make_test(chosen, postgres_installed=False) == ["postgresql", "sqlite"]
    quick = {"BANANASTAND_TEST_DATABASES": "sqlite", "CI": "1"}
    assert for_make_test(quick, postgres_installed=True) == ["sqlite"]
    with pytest.raises(UnknownDatabase, match="sqlite or postgresql"):
        for_make_test({"BANANASTAND_TEST_DATABASES": "sqlite,mysql"}, postgres_installed=True)


def test_a_pytest_run_is_on_one_database() -> None:
    assert for_this_run({}) == "sqlite"
    assert for_this_run({"BANANASTAND_TEST_DATABASE": "postgresql"}) == "postgresql"
    assert for_this_run({"BANANASTAND_TEST_DATABASES": "postgresql"}) == "postgresql"
    both = {"BANANASTAND_TEST_DATABASES": "sqlite,postgresql"}
    assert for_this_run({**both, "BANANASTAND_TEST_DATABASE": "sqlite"}) == "sqlite"
    with pytest.raises(UnknownDatabase, match="one database"):
        for_this_run(both)
    with pytest.raises(UnknownDatabase, match="sqlite or postgresql"):
        for_this_run({"BANANASTAND_TEST_DATABASE": "postgres"})
