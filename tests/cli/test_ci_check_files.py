"""`migrate check-files FILE...`: what the pre-commit hook runs on the files a commit changes."""

from __future__ import annotations

from pathlib import Path

from runner.filecheck import check_files


def write(folder: Path, files: dict[str, str]) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return {name: str(folder / name) for name in files}


def found(report) -> list[tuple[str, int, str]]:
    return [(Path(f.file).name, f.line, f.rule) for f in report.findings]


def test_clean_files_pass_and_every_format_is_read(tmp_path):
    paths = write(tmp_path / "migrations", {
        "001_t.sql": "-- transactional: true\nCREATE TABLE t (a int);\n",
        "001_t.rollback.sql": "DROP TABLE t;\n",
        "002_goose.sql": "-- +goose Up\nALTER TABLE t ADD COLUMN b int;\n-- +goose Down\nALTER TABLE t DROP COLUMN b;\n",
        "003_py.py": "from yoyo import step\n__depends__ = {'002_goose'}\nstep('SELECT 1')\n",
        "004_r.sql": "-- compat: rename t.a -> c window=7d\n-- lint: disable=set-not-null\n"
                     "ALTER TABLE t RENAME COLUMN a TO c;\n",
        "post-apply.sql": "SELECT 1;\n",
    })
    report = check_files(paths.values())
    assert report.findings == []
    assert len(report.linted) == 6


def test_duplicate_versions_and_ids_against_files_not_given(tmp_path):
    paths = write(tmp_path / "m", {"007_a.sql": "SELECT 1;\n", "7_b.sql": "SELECT 1;\n",
                                   "008_c.sql": "SELECT 1;\n", "008_c.py": "from yoyo import step\nstep('SELECT 1')\n"})
    report = check_files([paths["7_b.sql"], paths["008_c.sql"]])
    assert found(report) == [("008_c.sql", 1, "duplicate-id"), ("7_b.sql", 1, "duplicate-version")]
    assert "also used by" in report.findings[1].message and "007_a.sql" in report.findings[1].message


def test_malformed_directives_each_with_its_line_and_all_of_them(tmp_path):
    paths = write(tmp_path / "m", {
        "001_tx.sql": "-- header\n-- transactional: maybe\nSELECT 1;\n",
        "002_compat.sql": "-- compat: rename t.a => b\nALTER TABLE t RENAME COLUMN a TO b;\n",
        "003_lint.sql": "-- lint: disable=no-such-rule\nSELECT 1;\n",
        "004_dep.sql": "-- depends: 001_tx 000_gone\nSELECT 1;\n",
        "005_utf.sql": "SELECT 1;\n",
        "006_py.py": "from yoyo import step\nstep('SELECT 1'\n",
    })
    (tmp_path / "m" / "005_utf.sql").write_bytes(b"SELECT 1;\n-- caf\xe9\n")
    report = check_files(paths.values())
    assert found(report) == [
        ("001_tx.sql", 2, "invalid-file"), ("002_compat.sql", 1, "invalid-file"),
        ("003_lint.sql", 1, "invalid-file"), ("004_dep.sql", 1, "unknown-depends"),
        ("005_utf.sql", 2, "invalid-file"), ("006_py.py", 2, "invalid-file"),
    ]
    messages = [f.message for f in report.findings]
    assert "transactional: expected true or false, got 'maybe'" in messages[0]
    assert messages[1].startswith("compat: ")
    assert "unknown lint rule 'no-such-rule'" in messages[2]
    assert messages[3] == "depends on unknown migration '000_gone'"
    assert "not valid UTF-8" in messages[4]
    # The finding carries file and line; the message does not repeat them.
    assert not any(str(tmp_path) in m for m in messages)


def test_cli_exit_codes_and_output(tmp_path, migrate):
    write(tmp_path / "migrations", {"001_a.sql": "SELECT 1;\n", "001_b.sql": "SELECT 2;\n"})
    bad = migrate("check-files", "migrations/001_b.sql", cwd=tmp_path)
    assert bad.returncode == 2, bad
    assert bad.stdout.splitlines()[0] == ("migrations/001_b.sql:1: error [duplicate-version] duplicate version 1: "
                                          "also used by migrations/001_a.sql")
    assert bad.stdout.splitlines()[-1] == "1 migration file checked: 1 problem(s)"
    github = migrate("check-files", "--format", "github", "migrations/001_b.sql", cwd=tmp_path)
    assert github.returncode == 2
    assert github.stdout.startswith("::error file=migrations/001_b.sql,line=1,col=1,"
                                    "title=migrate%3A duplicate-version::duplicate version 1")
    (tmp_path / "migrations" / "001_b.sql").rename(tmp_path / "migrations" / "002_b.sql")
    good = migrate("check-files", "migrations/002_b.sql", "--format", "json", cwd=tmp_path)
    assert good.returncode == 0, good
    assert '"errors": 0' in good.stdout
    usage = migrate("check-files", cwd=tmp_path)
    assert usage.returncode == 2 and "Missing argument" in usage.stderr
