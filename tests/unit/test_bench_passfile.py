"""The append benchmark's eventsourcing contender takes its password from the dev stack's password file."""

from __future__ import annotations

from pathlib import Path

from bench.append import passfile_password


def test_the_password_of_the_url_s_user_is_read_from_the_passfile(tmp_path: Path) -> None:
    passfile = tmp_path / "pgpass"
    passfile.write_text("# comment\n*:*:*:requests:not-this\n127.0.0.1:5433:mieux:postgres:sec\\:ret\n")
    url = f"postgresql://postgres@127.0.0.1:5433/mieux?passfile={passfile}"
    assert passfile_password(url) == "sec:ret"
    assert passfile_password(f"postgresql://postgres@127.0.0.1:9999/mieux?passfile={passfile}") == ""
    assert passfile_password("postgresql://postgres@127.0.0.1:5433/mieux") == ""
