"""Study completeness: a study is complete once nothing has arrived for ``stable_seconds``.

On completion the study is routed and its jobs are queued. A late instance
re-opens the study; when it completes again, routing is re-evaluated and only
(route, pipeline) pairs that have not run yet are queued, unless the route
says ``rerun_on_update``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from inference.registry import UnknownPipelineError, available_pipelines
from node import metrics
from node.index import Index, NewJob, SeriesRecord
from node.jobs import JobDispatcher
from node.routing import Router, SeriesFacts

log = logging.getLogger("pacsnode.assembler")


def series_facts(record: SeriesRecord) -> SeriesFacts:
    return SeriesFacts(
        series_uid=record.series_uid,
        modality=record.modality,
        series_description=record.series_description,
        series_number=record.series_number,
        body_part=record.body_part,
        image_type=record.image_type,
        calling_ae=record.calling_ae,
        temporal_positions=record.temporal_positions,
        instance_count=record.instance_count,
    )


class StudyAssembler:
    """Declares studies complete and turns routing decisions into jobs."""

    def __init__(
        self,
        index: Index,
        router: Router,
        dispatcher: JobDispatcher,
        stable_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.index = index
        self.router = router
        self.dispatcher = dispatcher
        self.stable_seconds = stable_seconds
        self.clock = clock

    def tick(self) -> list[int]:
        """Complete every stable study; returns the ids of jobs created."""
        created: list[int] = []
        for study_uid, last_received in self.index.studies_stable_since(self.clock() - self.stable_seconds):
            if not self.index.mark_study_complete(study_uid, last_received):
                continue  # an instance arrived in between: not stable after all
            metrics.STUDIES_COMPLETED.inc()
            created.extend(self.route_study(study_uid))
        return created

    def route_study(self, study_uid: str) -> list[int]:
        study = self.index.study(study_uid)
        if study is None:
            return []
        series = [series_facts(s) for s in self.index.series_of(study_uid)]
        decisions = self.router.decide(series)
        existing = self.index.job_keys_for_study(study_uid)
        installed = available_pipelines()
        created: list[int] = []
        for decision in decisions:
            key = f"{study_uid}|{decision.route}|{decision.pipeline}"
            if key in existing:
                if not decision.rerun_on_update:
                    continue
                key = f"{key}|update{study.completions}"
            pipeline_cls = installed.get(decision.pipeline)
            job_id = self.index.create_job(
                NewJob(
                    key=key,
                    study_uid=study_uid,
                    route=decision.route,
                    pipeline=decision.pipeline,
                    queue=pipeline_cls.queue if pipeline_cls else "cpu",
                    series_uids=list(decision.series_uids),
                    options=decision.options,
                    destinations=list(decision.destinations),
                    last_instance_at=study.last_received_at,
                )
            )
            if job_id is None:
                continue
            created.append(job_id)
            job = self.index.job(job_id)
            assert job is not None
            if pipeline_cls is None:
                self.index.fail_job(job_id, None, str(UnknownPipelineError(
                    f"route {decision.route!r} names pipeline {decision.pipeline!r}, which is not installed "
                    f"(available: {', '.join(sorted(installed))})")))
                continue
            self.dispatcher.dispatch(job)
            log.info("job queued", extra={"job_id": job_id, "route": decision.route,
                                          "pipeline": decision.pipeline, "series": len(decision.series_uids)})
        if not decisions:
            log.info("study complete; no route matched", extra={"series": len(series)})
        return created
