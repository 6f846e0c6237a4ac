"""The portable SQL: every query of the ports in SQLAlchemy Core, one module per table group.

Each function takes a Connection and returns plain values or records; an adapter's
runner decides where it runs and in which transaction.
"""
