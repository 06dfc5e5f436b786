"""The built-in ``inventory`` pipeline: a Structured Report listing what the node received.

It needs no model, so it proves the whole path (receive → route → job → SR →
PACS) on any study, and it stays useful as a diagnostic: a PACS administrator
can route a study to it and see in the viewer exactly which series and how
many instances reached the node.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import highdicom as hd
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from inference.base import Pipeline, PipelineInputError, StudyInput

_TITLE = hd.sr.CodedConcept("18748-4", "LN", "Diagnostic imaging report")
_NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")


class StudyInventoryPipeline(Pipeline):
    """Summarises a study's series (modality, description, instance count) in an SR."""

    name = "inventory"
    queue = "cpu"
    version = "1.0"
    summary = "Structured Report listing the series and instances the node received"

    def run(self, study: StudyInput, options: Mapping[str, Any]) -> Sequence[Dataset]:
        """Options: ``series_number`` of the SR (default 9901); ``hold_s`` to wait before
        finishing, so an administrator can rehearse a worker failure on a real job."""
        hold = float(options.get("hold_s", 0))
        if hold > 0:
            time.sleep(min(hold, 600))
        headers = [dcmread(p, stop_before_pixels=True) for p in study.all_paths]
        if not headers:
            raise PipelineInputError(f"study {study.study_uid} has no instances to list")
        by_series: dict[str, list[Dataset]] = defaultdict(list)
        for ds in headers:
            by_series[str(ds.SeriesInstanceUID)].append(ds)

        items: list[hd.sr.ContentItem] = [
            hd.sr.TextContentItem(
                name=codes.DCM.Summary,
                value=f"{len(by_series)} series, {len(headers)} instances received",
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        ]
        for series in study.series:
            members = by_series.get(series.series_uid, [])
            if not members:
                continue
            first = members[0]
            group = hd.sr.ContainerContentItem(
                name=codes.DCM.ImageLibraryGroup,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
            group.ContentSequence = [
                hd.sr.UIDRefContentItem(
                    name=codes.DCM.SeriesInstanceUID,
                    value=series.series_uid,
                    relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
                ),
                hd.sr.TextContentItem(
                    name=codes.DCM.Modality,
                    value=str(first.get("Modality", "unknown")) or "unknown",
                    relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
                ),
                hd.sr.TextContentItem(
                    name=codes.DCM.Comment,
                    value=_describe(first),
                    relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
                ),
                hd.sr.NumContentItem(
                    name=codes.DCM.NumberOfFrames,
                    value=len(members),
                    unit=_NO_UNITS,
                    relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
                ),
            ]
            items.append(group)

        root = hd.sr.ContainerContentItem(name=_TITLE, template_id=None)
        root.ContentSequence = items
        first = headers[0]
        sr = hd.sr.ComprehensiveSR(
            evidence=headers,
            content=root,
            series_instance_uid=hd.UID(),
            series_number=int(options.get("series_number", 9901)),
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="pacsnode",
            series_description="pacsnode study inventory (research use only)",
            institution_name=first.get("InstitutionName"),
            is_complete=True,
            is_final=False,
            is_verified=False,
        )
        sr.ManufacturerModelName = "inventory"
        sr.SoftwareVersions = [_pacsnode_version(), f"inventory {self.version}"]
        return [sr]


def _describe(ds: Dataset) -> str:
    description = str(ds.get("SeriesDescription", "") or "(no description)")
    number = ds.get("SeriesNumber")
    return f"{description} (series {number})" if number not in (None, "") else description


def _pacsnode_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"pacsnode {version('pacsnode')}"
    except PackageNotFoundError:
        return "pacsnode"
