"""HTTP surface: FastAPI app factory, auth dependencies, routers, errors as RFC 9457."""
