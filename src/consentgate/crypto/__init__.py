"""The only package that imports ``cryptography``: fixed suites, public APIs, terse errors."""
