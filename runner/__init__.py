"""A deploy-pipeline migration runner over yoyo-migrations.

The public Python API lives in :mod:`runner.commands` (one function per CLI
command); this package import is kept cheap on purpose so that ``migrate
--help`` does not pay for yoyo, psycopg or SQLAlchemy.
"""

__version__ = "0.1.0"
