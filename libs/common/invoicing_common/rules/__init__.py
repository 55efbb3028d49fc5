"""Official rule releases: which French rules (BR-FR) apply when."""

from .releases import (
    DEFAULT_FILE,
    ENV_RELEASES_FILE,
    KINDS,
    Choice,
    ReleaseBook,
    ReleaseConfigError,
    RuleRelease,
    UnknownRelease,
    load_book,
    parse_book,
)

__all__ = [
    "DEFAULT_FILE",
    "ENV_RELEASES_FILE",
    "KINDS",
    "Choice",
    "ReleaseBook",
    "ReleaseConfigError",
    "RuleRelease",
    "UnknownRelease",
    "load_book",
    "parse_book",
]
