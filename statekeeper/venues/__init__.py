"""Venue adapters: one package per venue, with the same modules in each (see :mod:`statekeeper.venues.base`)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from statekeeper.venues.base import FrameContext, ParseOutcome, SequenceKind

VENUE_NAMES = ("extended", "paradex")


@dataclass(frozen=True)
class VenueSpec:
    """What the rest of statekeeper needs to know about a venue."""

    name: str
    sequence: SequenceKind
    ws_url: str
    """The private account stream, mainnet."""
    rest_url: str
    """The REST base URL, mainnet."""
    parse_frame: Callable[[str | bytes, FrameContext], ParseOutcome]


def venue_spec(name: str) -> VenueSpec:
    """The spec of venue ``name`` (``statekeeper.venues.<name>.SPEC``)."""
    if name not in VENUE_NAMES:
        raise KeyError(f"unknown venue {name!r}; known: {', '.join(VENUE_NAMES)}")
    spec: VenueSpec = importlib.import_module(f"statekeeper.venues.{name}").SPEC
    return spec
