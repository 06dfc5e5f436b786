"""The pipeline plugin interface.

A pipeline receives a study's series as files in the spool plus options, and
returns DICOM objects (pydicom Datasets) to send back to PACS. It does not
touch the network, the index or the queue: the job runner does that.

To add a pipeline, subclass :class:`Pipeline`, give it a ``name``, and either
register it in :mod:`inference.registry` or expose it through the
``pacsnode.pipelines`` entry-point group of your own package.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydicom.dataset import Dataset


class PipelineError(Exception):
    """A pipeline could not produce results; the message is shown to administrators."""


class PipelineInputError(PipelineError):
    """The study is not what the pipeline needs (wrong series, missing timing, …).

    The job fails at once with this message as its reason; it is not retried.
    """


class TransientPipelineError(PipelineError):
    """A failure that may pass (a resource briefly unavailable); the job is retried."""


@dataclass(frozen=True)
class SeriesInput:
    """One series of the study, as stored in the spool."""

    series_uid: str
    modality: str | None
    description: str | None
    number: int | None
    paths: tuple[Path, ...]


@dataclass(frozen=True)
class StudyInput:
    """What a pipeline is given: the study's series chosen by the route."""

    study_uid: str
    series: tuple[SeriesInput, ...]
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def all_paths(self) -> list[Path]:
        return [p for s in self.series for p in s.paths]


def studies_from_files(paths: Iterable[Path]) -> dict[str, StudyInput]:
    """DICOM files as the studies a pipeline is given: StudyInstanceUID → every series of that study.

    For offline runs, training data and benchmarks; the node itself builds a
    job's StudyInput from its index. Headers only are read
    (:func:`dicom_io.study.group_study`); non-DICOM files are skipped.
    """
    from dicom_io.study import group_study

    by_study: dict[str, list[SeriesInput]] = {}
    for s in group_study(list(paths)).values():
        by_study.setdefault(str(s.study_uid), []).append(
            SeriesInput(s.series_uid, s.modality, s.series_description, s.series_number, s.paths))
    return {uid: StudyInput(uid, tuple(series)) for uid, series in by_study.items()}


class Pipeline(ABC):
    """A model (or other computation) that turns a study into DICOM results."""

    #: The name routes and the CLI use.
    name: ClassVar[str]
    #: Which worker queue runs it: 'gpu' pipelines go to GPU workers when there are any.
    queue: ClassVar[Literal["cpu", "gpu"]] = "cpu"
    #: Version recorded in every object the pipeline writes.
    version: ClassVar[str] = "0"
    #: One line for `pacsnode pipelines` and the docs.
    summary: ClassVar[str] = ""

    @abstractmethod
    def run(self, study: StudyInput, options: Mapping[str, Any]) -> Sequence[Dataset]:
        """Process *study* and return the objects to send (each with new UIDs).

        Raise :class:`PipelineInputError` when the input cannot be used.
        """
