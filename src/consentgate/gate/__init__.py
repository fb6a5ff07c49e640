"""The gate: consent checks at the last responsible moment, fail-closed."""
