"""Tenants, their API keys (stored hashed, with scopes) and their purpose catalogue."""
