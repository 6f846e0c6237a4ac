"""The PostgreSQL adapter: psycopg 3 connections from SQLAlchemy's pool, the database's
clock, migrations under an advisory lock."""
