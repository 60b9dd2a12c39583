"""The daemon's HTTP/JSON API (FastAPI on a Unix socket the daemon binds itself)."""
