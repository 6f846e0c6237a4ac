"""Which databases the suite runs on.

``make test`` runs pytest once per database of ``BANANASTAND_TEST_DATABASES`` (``sqlite``,
``postgresql``, or both, comma-separated), each run told its one database by
``BANANASTAND_TEST_DATABASE`` (read by conftest.py). Unset, ``make test`` runs both where
PostgreSQL is installed, and under CI (``CI`` set), which must never leave one out; else
SQLite alone, and says so. Run as a script (``python tests/databases.py``), this prints
the databases ``make test`` runs, one per line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from postgres import INSTALL_HINT, find_binaries

DATABASES = ("sqlite", "postgresql")


class UnknownDatabase(ValueError):
    """A database the suite does not run on, or several where one is wanted."""


def _names(value: str, variable: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in DATABASES]
    if unknown or not names:
        wanted = " or ".join(DATABASES)
        if variable.endswith("S"):
            wanted += ", or both separated by a comma"
        raise UnknownDatabase(f"{variable}={value!r}: {wanted}")
    return list(dict.fromkeys(names))


def for_make_test(environ: Mapping[str, str], postgres_installed: bool) -> list[str]:
    """The databases ``make test`` runs the suite on, in order."""
    chosen = environ.get("BANANASTAND_TEST_DATABASES", "").strip()
    if chosen:
        return _names(chosen, "BANANASTAND_TEST_DATABASES")
    if postgres_installed or environ.get("CI"):
        return list(DATABASES)
    return ["sqlite"]


def for_this_run(environ: Mapping[str, str]) -> str:
    """The one database of this pytest run: ``BANANASTAND_TEST_DATABASE``, else the only one
    ``BANANASTAND_TEST_DATABASES`` names, else SQLite."""
    for variable in ("BANANASTAND_TEST_DATABASE", "BANANASTAND_TEST_DATABASES"):
        value = environ.get(variable, "").strip()
        if not value:
            continue
        names = _names(value, variable)
        if len(names) > 1:
            raise UnknownDatabase(
                f"{variable}={value!r}: a pytest run is on one database;"
                " `make test` runs it once per database"
            )
        return names[0]
    return "sqlite"


def main() -> int:
    installed = find_binaries() is not None
    try:
        databases = for_make_test(os.environ, installed)
    except UnknownDatabase as error:
        print(error, file=sys.stderr)
        return 2
    if (
        not installed
        and "BANANASTAND_TEST_DATABASES" not in os.environ
        and not os.environ.get("CI")
    ):
        print(
            f"PostgreSQL is not installed ({INSTALL_HINT}): the suite runs on SQLite only",
            file=sys.stderr,
        )
    print("\n".join(databases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
