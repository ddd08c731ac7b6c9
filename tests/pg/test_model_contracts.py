"""`migrate verify --consumer-models MODULE:ATTR`: a consumer's SQLAlchemy models as its contract.

Model modules are written to tmp_path, which the CLI subprocess gets on PYTHONPATH (and, for
the in-process tests, sys.path), against real PostgreSQL and SQLite with the example
migrations (017 adds execution_bundle, 018 renames it to container_image behind a shim).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from helpers import ROOT, error_lines, run_migrate
from sqlalchemy import create_engine, exc, select
from sqlalchemy.orm import Session

from runner.model_contracts import load_model_contract

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nowhere"

COMMON_COLUMNS = """
    workflow_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workflow_name: Mapped[str] = mapped_column(String(255))
    version: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    labels: Mapped[str] = mapped_column(Text)
    content: Mapped[Optional[str]] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
"""


def model_module(extra: str, base: str = "class Base(DeclarativeBase):\n    pass\n") -> str:
    return (
        "from datetime import datetime\nfrom typing import Optional\n\n"
        "from sqlalchemy import DateTime, String, Text\n"
        "from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column\n\n"
        f"{base}\n\nclass Workflow(Base):\n    __tablename__ = \"remediation_workflow_catalog\"\n"
        + textwrap.indent(textwrap.dedent(COMMON_COLUMNS), "    ") + textwrap.indent(textwrap.dedent(extra), "    "))


CODE_017 = model_module("execution_bundle: Mapped[Optional[str]] = mapped_column(String(512))\n")
CODE_018 = model_module("container_image: Mapped[Optional[str]] = mapped_column(String(512))\n"
                        "container_digest: Mapped[Optional[str]] = mapped_column(String(80))\n")


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """A package ``shop`` with the 017 and 018 models (``shop.models017``, ``shop.models018``)."""
    package = tmp_path / "app" / "shop"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models017.py").write_text(CODE_017)
    (package / "models018.py").write_text(CODE_018)
    return package.parent


def verify(url: str, migrations: Path, app: Path, *specs: str, extra: tuple[str, ...] = ()):
    args = ["verify", "--database", url, "--migrations", str(migrations), *extra]
    for spec in specs:
        args += ["--consumer-models", spec]
    # PYTHONPATH, not the working directory: the models are found as a deploy would install them.
    return run_migrate(*args, cwd=ROOT, env={"PYTHONPATH": str(app), "MIGRATE_LOG_FORMAT": "json"})


def up(url: str, migrations: Path, *extra: str) -> None:
    result = run_migrate("up", "--database", url, "--migrations", str(migrations), *extra)
    assert result.returncode == 0, result


def test_models_at_017_and_018_against_a_database_at_017(pg_url, example_migrations, app):
    up(pg_url, example_migrations, "--to", "017_add_execution_bundle")
    ok = verify(pg_url, example_migrations, app, "shop.models017:Base")
    assert ok.returncode == 0, ok
    assert "ok    shop.models017:Base (" in ok.stdout and "search_path=public" in ok.stdout
    new = verify(pg_url, example_migrations, app, "shop.models018:Base")
    assert new.returncode == 1, new
    assert ("migrate: verify: shop.models018:Base: container_image missing from remediation_workflow_catalog: "
            "database is at 017; 018 is pending (018_rename_execution_bundle_to_container_image adds it): run "
            "`migrate up`") in new.stderr
    assert "container_digest missing from remediation_workflow_catalog" in new.stderr
    # An ORM names its columns: the column the 018 model does not map (execution_bundle) is no reason.
    assert "extra column" not in new.stderr and "Traceback" not in new.stderr


def test_what_verify_predicts_is_what_the_orm_gets(pg_url, example_migrations, app, monkeypatch):
    """The 018 model really fails on a database at 017, and the 017 model (fewer columns than
    the table has after 018, plus the shim) really works: the prediction is the ORM's behaviour."""
    up(pg_url, example_migrations, "--to", "017_add_execution_bundle")
    monkeypatch.syspath_prepend(str(app))
    m017, m018 = (importlib.import_module(f"shop.models01{n}") for n in (7, 8))
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with Session(engine) as session:
            assert session.scalars(select(m017.Workflow)).all() == []
            with pytest.raises(exc.ProgrammingError, match="container_image"):
                session.scalars(select(m018.Workflow)).all()
    finally:
        engine.dispose()
        for name in ("shop.models017", "shop.models018", "shop"):
            sys.modules.pop(name, None)


def test_after_018_the_old_models_are_served_through_the_shim(pg_url, example_migrations, app):
    up(pg_url, example_migrations)
    result = verify(pg_url, example_migrations, app, "shop.models017:Base", "shop.models018:Base",
                    extra=("--format", "json"))
    assert result.returncode == 0, result
    by_name = {c["consumer"]: c for c in json.loads(result.stdout)["consumers"]}
    assert by_name["shop.models017:Base"]["search_path"] == "compat_017,public"
    assert by_name["shop.models017:Base"]["via_shim"]
    assert by_name["shop.models017:Base"]["file"] == str(app / "shop" / "models017.py")
    assert by_name["shop.models018:Base"]["search_path"] == "public"


def test_extra_columns_do_not_break_a_model_missing_ones_do(pg_url, example_migrations, app):
    """Without a shim, 018 leaves the 017 model without execution_bundle: it fails on that column
    alone, while a model of a few columns is served although the table has more."""
    (app / "shop" / "names.py").write_text(textwrap.dedent("""
        from sqlalchemy import MetaData, String, Table, Column
        metadata = MetaData()
        catalog = Table("remediation_workflow_catalog", metadata,
                        Column("workflow_id", String(64), primary_key=True), Column("workflow_name", String(255)))
    """))
    up(pg_url, example_migrations, "--no-compat")
    result = verify(pg_url, example_migrations, app, "shop.models017:Base", "shop.names:metadata")
    assert result.returncode == 1, result
    failures = [line for line in result.stderr.splitlines() if line.startswith("migrate: verify:")]
    assert len(failures) == 1, result.stderr
    assert failures[0].startswith("migrate: verify: shop.models017:Base: execution_bundle missing from "
                                  "remediation_workflow_catalog: 018 (018_rename_execution_bundle_to_container_image)"
                                  " renamed it to container_image")
    assert "ok    shop.names:metadata" in result.stdout


def test_models_mixed_with_contract_files_found_in_the_working_directory(pg_url, example_migrations, app):
    """The `migrate` console script (whose sys.path does not hold the working directory) finds them too."""
    up(pg_url, example_migrations, "--to", "017_add_execution_bundle")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "migrate"), "verify", "--database", pg_url, "--migrations",
         str(example_migrations), "--consumer", str(ROOT / "contracts" / "workflow-api-017.toml"),
         "--consumer-models", "shop.models017:Base"], cwd=app, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "workflow-api (017 code)" in proc.stdout and "shop.models017:Base (shop/models017.py)" in proc.stdout


def test_sqlite(sqlite_url, example_migrations, app):
    up(sqlite_url, example_migrations, "--to", "017_add_execution_bundle")
    assert verify(sqlite_url, example_migrations, app, "shop.models017:Base").returncode == 0
    result = verify(sqlite_url, example_migrations, app, "shop.models018:Base")
    assert result.returncode == 1 and "container_image missing from remediation_workflow_catalog: database is at " \
                                      "017; 018 is pending" in result.stderr, result


# ----------------------------------------------------------------------------- bad specs: exit 2, one line

def _bad_modules(app: Path) -> None:
    (app / "shop" / "broken.py").write_text("import sqlalchemy\n\nVALUE = 1\nraise_here = undefined_name\n")
    (app / "shop" / "syntax.py").write_text("x = (\n")
    (app / "shop" / "needs.py").write_text("import not_installed_dependency_xyz\n")


@pytest.mark.parametrize("spec, expected", [
    ("shop.missing:Base", "--consumer-models shop.missing:Base: cannot import module 'shop.missing': no module "
                          "named 'shop.missing' in the working directory or on sys.path"),
    ("nopackage_xyz.models:Base", "cannot import module 'nopackage_xyz.models': no module named 'nopackage_xyz'"),
    ("shop.models017:Bsae", "--consumer-models shop.models017:Bsae: shop.models017 ({app}/shop/models017.py) has no "
                            "attribute 'Bsae' (did you mean 'Base'?)"),
    ("shop.models017:String", "shop.models017.String is a class String, not a SQLAlchemy declarative Base, registry, "
                              "MetaData, mapped class or module of mapped classes"),
    ("shop.broken:VALUE", "importing 'shop.broken' failed at {app}/shop/broken.py:4: NameError: name "
                          "'undefined_name' is not defined"),
    ("shop.syntax:x", "importing 'shop.syntax' failed at {app}/shop/syntax.py:1: SyntaxError: '(' was never closed"),
    ("shop.needs", "importing 'shop.needs' failed at {app}/shop/needs.py:1: ModuleNotFoundError: No module named "
                   "'not_installed_dependency_xyz'"),
    ("shop.models017:", "--consumer-models 'shop.models017:': expected MODULE:ATTRIBUTE (e.g. myapp.models:Base) or "
                        "MODULE"),
    ("shop", "--consumer-models shop: shop ({app}/shop/__init__.py) maps no table"),
])
def test_bad_specs_exit_2_with_one_line_before_connecting(spec, expected, app, example_migrations):
    _bad_modules(app)
    result = verify(UNREACHABLE, example_migrations, app, spec)  # exit 2, not 5: nothing was connected
    assert result.returncode == 2, result
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr  # one line, no traceback
    assert lines[0].startswith(f"migrate: error: --consumer-models {spec!r}" if spec.endswith(":") else
                               f"migrate: error: --consumer-models {spec}: "), lines[0]
    assert expected.format(app=app) in lines[0]


# ----------------------------------------------------------------------------- what a model maps (in process)

MAPPINGS = '''
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, Text, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, deferred, mapped_column, registry


class Base(DeclarativeBase):
    pass


tags = Table("employee_tags", Base.metadata, Column("employee_id", ForeignKey("employee.id")), Column("tag", Text))


class Employee(Base):
    __tablename__ = "employee"
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "employee",
                       "exclude_properties": ["legacy"]}
    __table__ = Table("employee", Base.metadata, Column("id", Integer, primary_key=True), Column("kind", String(20)),
                      Column("name", Text), Column("legacy", Text), Column("photo", Text))
    photo = deferred(__table__.c.photo)
    name_length = column_property(func.length(__table__.c.name))


class Manager(Employee):
    __tablename__ = "manager"
    __mapper_args__ = {"polymorphic_identity": "manager"}
    id: Mapped[int] = mapped_column(ForeignKey("employee.id"), primary_key=True)
    reports: Mapped[int] = mapped_column(Integer)


class Engineer(Employee):  # single-table inheritance: its column is on employee
    __mapper_args__ = {"polymorphic_identity": "engineer"}
    language: Mapped[str] = mapped_column(String(20), nullable=True)


core = MetaData()
Table("audit", core, Column("id", Integer), Column("what", Text))

reg = registry()


@reg.mapped
class Note:
    __tablename__ = "note"
    id = Column(Integer, primary_key=True)
    body = Column(Text)
'''


@pytest.fixture
def mappings(tmp_path: Path, monkeypatch) -> str:
    name = f"mappings_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(MAPPINGS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield name
    sys.modules.pop(name, None)


def needs(spec: str) -> dict[str, list[str]]:
    contract = load_model_contract(spec)
    assert all(not t.strict_select_star for t in contract.tables)
    return {t.table: list(t.columns) for t in contract.tables}


def test_a_base_gives_the_columns_its_classes_map(mappings):
    assert needs(f"{mappings}:Base") == {
        # excluded 'legacy' is not read; deferred 'photo' is; the column_property expression is not a column;
        # single-table Engineer adds 'language' (declared on employee by the subclass).
        "employee": ["id", "kind", "name", "photo", "language"],
        "manager": ["id", "reports"],
        "employee_tags": ["employee_id", "tag"],  # mapped by no class: every column
    }
    contract = load_model_contract(f"{mappings}:Base")
    assert contract.name == f"{mappings}:Base" and contract.path == f"{mappings}.py"


def test_other_accepted_objects(mappings):
    assert needs(f"{mappings}:core") == {"audit": ["id", "what"]}
    assert needs(f"{mappings}:Base.metadata")["employee"] == ["id", "kind", "name", "legacy", "photo", "language"]
    assert needs(f"{mappings}:reg") == {"note": ["id", "body"]}
    assert needs(f"{mappings}:Manager") == {"employee": ["id", "kind", "name", "photo"], "manager": ["id", "reports"]}
    module = needs(mappings)  # the mapped classes found in the module
    assert set(module) == {"employee", "manager", "note"}


def test_relationships_are_not_resolved(tmp_path, monkeypatch):
    """Only columns matter: a relationship to a class in a module the spec does not import (the
    application imports it elsewhere) must not make the models unusable."""
    name = f"partial_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        from sqlalchemy import Integer
        from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
        class Base(DeclarativeBase):
            pass
        class A(Base):
            __tablename__ = "a"
            id: Mapped[int] = mapped_column(Integer, primary_key=True)
            b = relationship("DefinedElsewhere")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert needs(f"{name}:Base") == {"a": ["id"]}
    finally:
        sys.modules.pop(name, None)


def test_only_consumer_models_imports_sqlalchemy(tmp_path, example_migrations, app):
    """`up`, `status`, `--help` and `verify --consumer FILE` do not pay for SQLAlchemy; --consumer-models does."""
    code = textwrap.dedent("""
        import sys
        from runner.cli import main
        common = ['--database', 'sqlite:///' + sys.argv[1], '--migrations', sys.argv[2]]
        codes = [main(common + ['up']), main(common + ['status']), main(['--help']),
                 main(common + ['verify', '--consumer', sys.argv[3]])]
        print('BEFORE', codes, 'sqlalchemy' in sys.modules, file=sys.stderr)
        codes.append(main(common + ['verify', '--consumer-models', 'shop.models018:Base']))
        print('AFTER', codes[-1], 'sqlalchemy' in sys.modules, file=sys.stderr)
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.db"), str(example_migrations),
                           str(ROOT / "contracts" / "catalog-report.json")], capture_output=True, text=True, cwd=app)
    assert "BEFORE [0, 0, 0, 0] False" in proc.stderr, proc.stderr
    assert "AFTER 0 True" in proc.stderr, proc.stderr
