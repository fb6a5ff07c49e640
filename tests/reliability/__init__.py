"""The reliability suite: real processes killed, a database stopped, hostile input."""
