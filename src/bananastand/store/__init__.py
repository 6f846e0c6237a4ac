"""Persistence: tables, the unit-of-work runner, and every query the domain needs.

The domain never touches SQLAlchemy: it hands ``Database.read``/``Database.write`` a
query function from this package and gets plain value objects back.
"""
