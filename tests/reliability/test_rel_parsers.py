"""Hostile migration files: property-based tests over the parsers (hypothesis).

The parsers (runner.sources.read_migration, runner.goose.parse_goose,
runner.sqlfile) must never raise anything but MigrationFileError, whose message
names the file and a line inside it; and what they do parse must be right:
statements split exactly where PostgreSQL would split them (quotes, dollar
quoting, comments, DO blocks), with the line each statement starts on, through
CRLF line endings and a UTF-8 BOM.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from reliability import harness
from reliability.harness import FIGURES
from runner.errors import MigrationFileError
from runner.goose import parse_goose
from runner.sources import read_migration
from runner.sqlfile import read_header, split_statements

EXAMPLES = harness.scaled(150, 3000)
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ------------------------------------------------------------------ generators of valid SQL
_TEXT = st.text(alphabet=st.sampled_from(list("ab ;'\"$-*/\\\tÿé€中\n")), max_size=12)
_LINE_TEXT = st.text(alphabet=st.sampled_from(list("ab ;'\"$-*/\\é")), max_size=12)


@st.composite
def _dollar(draw) -> str:
    tag = draw(st.sampled_from(["", "a", "body", "_x1", "fn"]))
    body = draw(_TEXT)
    assume(f"${tag}$" not in body and not body.endswith("$") and not (tag and body.startswith(tag + "$")))
    return f"${tag}${body}${tag}$"


_ATOM = st.one_of(
    st.sampled_from(["1", "now()", "x", "count(*)", "a.b", "-1", "2 * 3", "NULL", "ARRAY[1,2]", "'{}'::jsonb"]),
    # Backslashes in standard strings: see test_backslash_ending_a_string_splits_like_postgresql.
    _TEXT.map(lambda t: "'" + t.replace("\\", "/").replace("'", "''") + "'"),
    _TEXT.map(lambda t: "E'" + t.replace("\\", "/").replace("'", "\\'") + "'"),
    _TEXT.filter(lambda t: t).map(lambda t: '"' + t.replace("\\", "/").replace('"', '""') + '"'),
    _dollar(),
    _LINE_TEXT.map(lambda t: f"-- {t}\n"),
    _TEXT.filter(lambda t: "*/" not in t and "/*" not in t and not t.endswith("/") and not t.startswith("*"))
    .map(lambda t: f"/* {t} */"),
)


@st.composite
def statement(draw) -> str:
    kind = draw(st.sampled_from(["select", "do", "function"]))
    if kind == "do":
        return f"DO $$ BEGIN PERFORM {draw(st.sampled_from(['1', 'now()']))}; RAISE NOTICE 'x;y'; END $$"
    if kind == "function":
        return ("CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS " + draw(_dollar()).replace("$$", "$$")
                if False else
                "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $fn$ BEGIN RETURN 1; END; $fn$")
    atoms = draw(st.lists(_ATOM, min_size=1, max_size=5))
    text = "SELECT " + " , ".join(atoms)
    return text.rstrip() if not text.endswith("\n") else text + "1"


_BETWEEN = st.lists(st.sampled_from(["", "-- a comment; with a semicolon", "--", "   ", "-- $$ not a quote"]),
                    max_size=2)


@st.composite
def sql_file(draw) -> tuple[str, list[str]]:
    """(file text, the statements in it)."""
    statements = draw(st.lists(statement(), min_size=1, max_size=5))
    parts = []
    for s in statements:
        lines = draw(_BETWEEN)
        parts.append("".join(line + "\n" for line in lines) + s + ";\n")
    text = "".join(parts)
    if draw(st.booleans()):
        text = text.rstrip("\n").rstrip(";")  # last statement without its semicolon
    return text, statements


def _encode(text: str, crlf: bool, bom: bool) -> bytes:
    data = (text.replace("\n", "\r\n") if crlf else text).encode("utf-8")
    return (b"\xef\xbb\xbf" + data) if bom else data


def _write(data: bytes, name: str = "007_hostile.sql") -> Path:
    directory = Path(tempfile.mkdtemp(prefix="rel-parse-"))
    path = directory / name
    path.write_bytes(data)
    return path


def _normal(sql: str) -> str:
    """A statement without its leading comment lines (attached by the splitter) and final semicolon."""
    lines = sql.split("\n")
    while lines and re.match(r"^\s*(--.*)?$", lines[0]):
        lines.pop(0)
    return "\n".join(lines).strip().rstrip(";").strip()


# ------------------------------------------------------------------ properties
@SETTINGS
@given(sql_file(), st.booleans(), st.booleans())
@example(("SELECT 'a;b';\nSELECT $$c;d$$;\n", ["SELECT 'a;b'", "SELECT $$c;d$$"]), True, True)
def test_yoyo_sql_splits_like_postgresql(file, crlf, bom):
    text, statements = file
    path = _write(_encode(text, crlf, bom))
    migration = read_migration(path)
    assert [_normal(s.sql) for s in migration.up] == [_normal(s) for s in statements]
    lines = text.split("\n")
    for parsed, original in zip(migration.up, statements):
        first = original.split("\n")[0].strip()
        assert 1 <= parsed.line <= len(lines)
        assert first in lines[parsed.line - 1], (parsed.line, first, lines[parsed.line - 1])
    FIGURES.add("hostile_inputs", parser_files=1)


@st.composite
def goose_file(draw) -> tuple[str, list[str], list[str], bool]:
    lines: list[str] = []
    up: list[str] = []
    down: list[str] = []
    no_tx = draw(st.booleans())
    if no_tx:
        lines.append("-- +goose NO TRANSACTION")
    for section, into in (("Up", up), ("Down", down)):
        if section == "Down" and draw(st.booleans()):
            break
        lines.append(draw(st.sampled_from([f"-- +goose {section}", f"--+goose {section.upper()}",
                                           f"-- +goose   {section.lower()}"])))
        for _ in range(draw(st.integers(1, 3))):
            if draw(st.booleans()):
                body = ("CREATE FUNCTION g() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n"
                        "  NEW.at := now(); RETURN NEW;\nEND;\n$$;")
                lines += ["-- +goose StatementBegin", *draw(_BETWEEN), body, "-- +goose StatementEnd"]
                into.append(body)
            else:
                s = draw(statement())
                lines += [*draw(_BETWEEN), s + ";"]
                into.append(s)
    return "\n".join(lines) + "\n", up, down, not no_tx


@SETTINGS
@given(goose_file(), st.booleans(), st.booleans())
def test_goose_parses_sections_and_blocks(file, crlf, bom):
    text, up, down, transactional = file
    migration = read_migration(_write(_encode(text, crlf, bom)))
    assert migration.format == "goose"
    assert [_normal(s.sql) for s in migration.up] == [_normal(s) for s in up]
    assert [_normal(s.sql) for s in migration.down] == [_normal(s) for s in down]
    assert migration.transactional == transactional
    lines = text.split("\n")
    for parsed, original in zip(migration.up + migration.down, up + down):
        # A StatementBegin block starts at its first non-blank line, comments included.
        index = parsed.line - 1
        while re.match(r"^\s*(--.*)?$", lines[index]):
            index += 1
        assert original.split("\n")[0].strip() in lines[index]
    FIGURES.add("hostile_inputs", parser_files=1)


# ------------------------------------------------------------------ never a traceback
_VALID_SEEDS = [
    "-- depends: 001_a\n-- transactional: false\nCREATE TABLE t (id int);\n",
    "-- +goose Up\n-- +goose StatementBegin\nCREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n"
    "-- +goose StatementEnd\n-- +goose Down\nDROP FUNCTION f();\n",
    "-- compat: rename t.a -> b window=14d\nALTER TABLE t RENAME COLUMN a TO b;\n",
    "DO $body$ BEGIN RAISE NOTICE 'x;y'; END $body$;\nSELECT 'it''s';\n",
]
_NOISE = [b"\x00", b"\xff", b"\xc3", b"\xef\xbb\xbf", b"\r", b"\r\n", b"\n", b";", b"'", b"\"", b"$$", b"$a$", b"--",
          b"/*", b"*/", b"-- +goose Up\n", b"-- +goose Down\n", b"-- +goose StatementBegin\n",
          b"-- +goose StatementEnd\n", b"-- +goose NO TRANSACTION\n", b"-- +goose ENVSUB ON\n", b"-- +goose Bogus\n",
          b"-- transactional: maybe\n", b"-- transactional: no\n", b"-- depends: \n", b"-- lint: \n",
          b"\xe2\x82", b"\xed\xa0\x80", b"\xf0\x9f\x98\x80", b"\xc0\xaf"]


@st.composite
def mangled(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(_VALID_SEEDS)).encode())
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        pos = draw(st.integers(0, len(data)))
        if op == "insert":
            data[pos:pos] = draw(st.sampled_from(_NOISE) | st.binary(min_size=1, max_size=3))
        elif op == "delete" and data:
            data[pos:pos + draw(st.integers(1, 8))] = b""
        else:
            data[pos:pos + 1] = draw(st.sampled_from(_NOISE))
    return bytes(data)


def _check_error(err: MigrationFileError, path: Path, data: bytes) -> None:
    message = str(err)
    assert "\n" not in message, message
    assert message.startswith(f"{path}:"), message
    match = re.match(re.escape(str(path)) + r":(\d+): \S", message)
    assert match, f"no line number in {message!r}"
    nlines = data.count(b"\n") + data.count(b"\r") + 1
    assert 1 <= int(match.group(1)) <= nlines, message


@SETTINGS
@given(mangled())
def test_mangled_files_parse_or_fail_with_file_and_line(data):
    path = _write(data)
    try:
        migration = read_migration(path)
    except MigrationFileError as err:
        _check_error(err, path, data)
        FIGURES.add("hostile_inputs", parser_files=1, parser_refused=1)
        return
    for s in migration.up + migration.down:
        assert s.sql.strip() and s.line >= 1
    FIGURES.add("hostile_inputs", parser_files=1)


@SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_else(data):
    path = _write(data)
    try:
        read_migration(path)
    except MigrationFileError as err:
        _check_error(err, path, data)
    FIGURES.add("hostile_inputs", parser_files=1)


@SETTINGS
@given(st.text(max_size=200))
def test_parse_goose_on_any_text(text):
    try:
        parse_goose(text, "x.sql")
    except MigrationFileError as err:
        assert re.match(r"x\.sql:\d+: \S", str(err)), str(err)
    for s in split_statements(text):
        assert s.line >= 1
    read_header(text)
    FIGURES.add("hostile_inputs", parser_files=1)


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["depends", "Transactional", "LINT", "compat", "other"]),
                          st.text(alphabet=st.sampled_from(list("ab_01 ;'\"é-")), max_size=10),
                          st.sampled_from(["--", "-- ", "  --  "])), max_size=5),
       st.booleans())
def test_header_directives_lines_and_values(directives, crlf):
    lines = [f"{lead}{name}: {value}" for name, value, lead in directives]
    text = "\n".join([*lines, "SELECT 1;", "-- depends: not_a_header"]) + "\n"
    path = _write(_encode(text, crlf, False))
    try:
        migration = read_migration(path)
    except MigrationFileError as err:
        _check_error(err, path, text.encode())
        assert "transactional" in str(err)
        return
    expected = [(name.lower(), value.strip(), i) for i, (name, value, _) in enumerate(directives, 1)
                if name.lower() != "other"]
    assert [(d.name, d.value, d.line) for d in migration.directives] == expected
    FIGURES.add("hostile_inputs", parser_files=1)


# ------------------------------------------------------------------ focused cases
@pytest.mark.parametrize("text, line", [
    ("-- dependz: x\nSELECT 1;", 1), ("\ufeff-- dependz: x\nSELECT 1;", 1), ("\n  --Transactionl : false\nSELECT 1;", 2),
    ("-- +goose Up\n-- trasactional: false\nSELECT 1;", 2), ("-- lnt: x\r\n-- depends: a\r\nSELECT 1;", 1),
    ("/* c */\n-- dependz: x\nSELECT 1;", None), ("-- DEPENDS: a\n-- Depend: b\nSELECT 1;", 2),
    ("-- note: x\n-- compat: rename t.a -> b\nSELECT 1;", None),
    ("-- tranſactional: false\nSELECT 1;", 1),  # not a directive under Unicode case folding: misspelt
])
def test_a_misspelt_directive_is_found_in_the_header_read_with_the_file(tmp_path, text, line):
    from runner.preflight import _check_directive_spelling

    path = tmp_path / "001_a.sql"
    path.write_bytes(text.encode("utf-8"))
    migration = read_migration(path)
    assert not [d for d in migration.directives if d.name not in ("depends", "compat")]
    if line is None:
        _check_directive_spelling(migration)
        return
    with pytest.raises(MigrationFileError) as err:
        _check_directive_spelling(migration)
    assert err.value.line == line and "did you mean" in str(err.value)



def test_non_utf8_and_nul_name_file_and_line(tmp_path):
    for data, line in ((b"SELECT 1;\nSELECT '\xff';\n", 2), (b"-- x\n\n\nSELECT '\x00';\n", 4),
                       (b"\xef\xbb\xbfSELECT 1;\r\nSELECT '\xc3(';\r\n", 2)):
        path = tmp_path / "005_bad.sql"
        path.write_bytes(data)
        try:
            read_migration(path)
        except MigrationFileError as err:
            assert str(err).startswith(f"{path}:{line}: "), str(err)
        else:
            raise AssertionError(f"{data!r} was accepted")


def test_nested_block_comments_split_like_postgresql(tmp_path):
    """PostgreSQL nests block comments: nothing inside /* /* */ ... */ is a statement.

    A splitter that ends the comment at the first */ runs the text after it as SQL
    (here: a DROP TABLE that PostgreSQL itself would never execute).
    """
    path = tmp_path / "006_nested.sql"
    path.write_text("SELECT 1 /* outer /* inner */ ; DROP TABLE important; */;\nSELECT 2;\n", encoding="utf-8")
    statements = [_normal(s.sql) for s in read_migration(path).up]
    assert statements == ["SELECT 1 /* outer /* inner */ ; DROP TABLE important; */", "SELECT 2"], statements


def test_backslash_ending_a_string_splits_like_postgresql(tmp_path):
    """With standard_conforming_strings (on since PostgreSQL 9.1) a backslash is not an escape in
    '...' strings nor in "..." identifiers, and in E'...' a doubled backslash is one character.
    A splitter that reads a backslash before a quote as an escaped quote runs on into the next
    statement and splits inside a later string."""
    wrong = {}
    for first in ("SELECT 'C:\\'", "SELECT E'C:\\\\'", 'SELECT 1 AS "\\"'):
        path = tmp_path / "006_backslash.sql"
        path.write_text(f"{first};\nSELECT 'a;b';\n", encoding="utf-8")
        statements = [_normal(s.sql) for s in read_migration(path).up]
        if statements != [first, "SELECT 'a;b'"]:
            wrong[first] = statements
    assert not wrong, wrong


def test_valid_backslash_migration_applies(target, folder):
    """The same through the CLI: a migration psql runs fine must apply (today: exit 4, syntax error)."""
    harness.write(folder, {"001_paths.sql": "CREATE TABLE paths (p text);\n"
                                            "INSERT INTO paths SELECT 'C:\\';\n"
                                            "INSERT INTO paths SELECT 'a;b';\n"})
    result = harness.run(*harness.db_args(target.url, folder, "up", "--no-compat"))
    assert result.returncode == 0, result.describe()
    assert harness.rows(target.admin, "SELECT p FROM paths ORDER BY p") == [("C:\\",), ("a;b",)]


def test_hostile_files_through_the_cli(target, folder):
    """Through `migrate up`: exit 2, one line naming file and line, nothing executed."""
    cases = {
        "001_bom_crlf.sql": (b"\xef\xbb\xbf-- transactional: sometimes\r\nSELECT 1;\r\n", 1),
        "001_latin1.sql": ("SELECT 'caf\u00e9';\n".encode("latin-1"), 1),
        "001_goose_unbalanced.sql": (b"-- +goose Up\n-- +goose StatementBegin\nSELECT 1;\n", 2),
        "001_goose_no_up.sql": (b"-- +goose Down\nSELECT 1;\n", 1),
        "001_goose_twice.sql": (b"-- +goose Up\nSELECT 1;\n-- +goose Up\nSELECT 2;\n", 3),
    }
    for name, (data, line) in cases.items():
        for old in folder.iterdir():
            old.unlink()
        (folder / name).write_bytes(data)
        (folder / "002_canary.sql").write_text("CREATE TABLE canary (id int);\n", encoding="utf-8")
        result = harness.run(*harness.db_args(target.url, folder, "up", "--no-compat"))
        harness.assert_one_line_error(result, 2, f"{folder / name}:{line}:")
        with target.admin_conn() as conn:
            assert harness.regclass(conn, "public.canary") is None
        FIGURES.add("hostile_inputs", cli_files=1, cli_refused=1)
