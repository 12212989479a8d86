"""The desktop app (PySide6): a thin face over the same jobs and library as the command line."""
