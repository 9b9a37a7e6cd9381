"""Published numbers kept as package data, with their sources (REFERENCE.md section 3).

``published.json`` holds the paper's MobileNetV2 + KD-Loss results found in reachable sources (NME in
% of the inter-ocular distance) and a few stronger modern systems for context.  Reports put our models
next to these rows; nothing here is computed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

__all__ = ["PublishedResult", "load_published", "published_results"]


@dataclass(frozen=True)
class PublishedResult:
    """One published NME.

    Attributes:
        dataset: ``300w``, ``cofw`` or ``wflw``.
        subset: subset name as :mod:`kdlandmark.evaluate.protocols` names it (``common``, ``test``, ``pose``).
        model: the system's name.
        role: ``paper`` (the paper's student), ``paper-unclear`` (a row of unclear meaning) or ``context``.
        nme: NME in %.
        normalisation: the normalising distance of the number.
        source: where the number comes from.
    """

    dataset: str
    subset: str
    model: str
    role: str
    nme: float
    normalisation: str
    source: str


@lru_cache(maxsize=1)
def load_published() -> dict:
    """The whole ``published.json`` (paper citation, units, what was not published, result rows)."""
    text = resources.files(__package__).joinpath("published.json").read_text(encoding="utf-8")
    data = json.loads(text)
    if data.get("format") != "kdlandmark-published":
        raise ValueError("kdlandmark/reference/published.json: unexpected format")
    return data


def published_results(dataset: str | None = None, *, roles: tuple[str, ...] | None = None
                      ) -> list[PublishedResult]:
    """Published rows, optionally only those of ``dataset`` and of the given ``roles``."""
    rows = [PublishedResult(**r) for r in load_published()["results"]]
    if dataset is not None:
        rows = [r for r in rows if r.dataset == dataset.lower()]
    if roles is not None:
        rows = [r for r in rows if r.role in roles]
    return rows
