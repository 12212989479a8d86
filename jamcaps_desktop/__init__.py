"""jamcaps-desktop: an offline tagger for music collections."""

__version__ = "0.1.0"
