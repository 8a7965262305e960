"""statekeeper: an event-sourced account state store for trading accounts on crypto derivatives venues."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("statekeeper")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"
