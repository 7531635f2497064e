"""Agent settings: the sections (settings.py) and reading them from TOML plus the
environment, with problems located by key and line (load.py)."""
