"""Storage: tables, the engine (SQLite or PostgreSQL), migrations and repositories."""
