"""Routing: which pipelines a completed study goes to, decided by the YAML rules.

A rule matches series attributes (Modality, SeriesDescription regex,
BodyPartExamined, ImageType, calling AE, temporal positions, instance count).
A ``series``-level rule gives its pipelines the matching series only; a
``study``-level rule gives them the whole study when any series matches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from node.config import MatchConfig, RouteConfig


@dataclass(frozen=True)
class SeriesFacts:
    """The attributes of one series that rules can match on."""

    series_uid: str
    modality: str | None = None
    series_description: str | None = None
    series_number: int | None = None
    body_part: str | None = None
    image_type: str | None = None
    calling_ae: str | None = None
    temporal_positions: int = 1
    instance_count: int = 0


@dataclass(frozen=True)
class RouteDecision:
    """One (route, pipeline) to run on a study, with the series it gets."""

    route: str
    pipeline: str
    series_uids: tuple[str, ...]
    destinations: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    rerun_on_update: bool = False


def _one_of(value: str | None, allowed: str | list[str] | None) -> bool:
    if allowed is None:
        return True
    choices = [allowed] if isinstance(allowed, str) else allowed
    return value is not None and value.strip().upper() in {c.strip().upper() for c in choices}


def series_matches(match: MatchConfig, series: SeriesFacts) -> bool:
    """Whether *series* meets every condition set in *match*."""
    if not _one_of(series.modality, match.Modality):
        return False
    if not _one_of(series.body_part, match.BodyPartExamined):
        return False
    if not _one_of(series.calling_ae, match.calling_ae_title):
        return False
    if match.SeriesDescription is not None and not re.search(
        match.SeriesDescription, series.series_description or ""
    ):
        return False
    if match.ImageType is not None:
        values = {v.strip().upper() for v in (series.image_type or "").split("\\")}
        if match.ImageType.strip().upper() not in values:
            return False
    if match.min_temporal_positions is not None and (
        series.temporal_positions < match.min_temporal_positions
    ):
        return False
    if match.min_instances is not None and series.instance_count < match.min_instances:
        return False
    return True


class Router:
    """Applies the configured routes to a study's series."""

    def __init__(self, routes: Iterable[RouteConfig], pipeline_defaults: dict[str, dict[str, Any]] | None = None) -> None:
        self.routes = list(routes)
        self.pipeline_defaults = pipeline_defaults or {}

    def decide(self, series: list[SeriesFacts]) -> list[RouteDecision]:
        decisions: list[RouteDecision] = []
        for route in self.routes:
            matched = [s.series_uid for s in series if series_matches(route.match, s)]
            if not matched:
                continue
            chosen = matched if route.level == "series" else [s.series_uid for s in series]
            for pipeline in route.pipelines:
                options = {**self.pipeline_defaults.get(pipeline, {}), **route.options}
                decisions.append(
                    RouteDecision(
                        route=route.name,
                        pipeline=pipeline,
                        series_uids=tuple(chosen),
                        destinations=tuple(route.destinations),
                        options=options,
                        rerun_on_update=route.rerun_on_update,
                    )
                )
        return decisions
