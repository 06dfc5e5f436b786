"""Finding pipelines by name: the built-ins plus any installed through entry points."""

from __future__ import annotations

from importlib.metadata import entry_points

from inference.base import Pipeline

ENTRY_POINT_GROUP = "pacsnode.pipelines"


class UnknownPipelineError(KeyError):
    """A route or command names a pipeline that is not installed."""

    def __str__(self) -> str:
        return str(self.args[0])


_registered: dict[str, type[Pipeline]] = {}


def register_pipeline(cls: type[Pipeline]) -> type[Pipeline]:
    """Make a pipeline class available by its name (usable as a class decorator).

    For pipelines defined in code rather than installed through entry points;
    a registered name may not shadow a built-in.
    """
    if cls.name in _builtin():
        raise ValueError(f"pipeline name {cls.name!r} is taken by a built-in pipeline")
    _registered[cls.name] = cls
    return cls


def _builtin() -> dict[str, type[Pipeline]]:
    from inference.inventory import StudyInventoryPipeline
    from inference.liver.classification import LiverClassificationPipeline
    from inference.liver.pipeline import LiverSegmentationPipeline
    from inference.perfusion.pipeline import PerfusionPipeline

    return {cls.name: cls for cls in (StudyInventoryPipeline, PerfusionPipeline, LiverSegmentationPipeline,
                                         LiverClassificationPipeline)}


def available_pipelines() -> dict[str, type[Pipeline]]:
    """All pipelines by name; an installed plugin may not shadow a built-in."""
    found = {**_registered, **_builtin()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in found:
            found[ep.name] = ep.load()
    return found


def get_pipeline(name: str) -> Pipeline:
    pipelines = available_pipelines()
    try:
        return pipelines[name]()
    except KeyError:
        raise UnknownPipelineError(
            f"no pipeline named {name!r} is installed (available: {', '.join(sorted(pipelines))})"
        ) from None
