"""The DICOM listener: C-STORE and C-ECHO SCP built on pynetdicom.

A C-STORE is answered with Success only after the instance is on disk (temp
file, fsync, atomic rename) and indexed. The handler does nothing else: study
completion, routing and pipelines happen elsewhere, so senders never wait on them.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from dataclasses import dataclass, replace
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from node import metrics
from node.audit import AuditLog
from node.config import DicomConfig
from node.index import Index, IndexDatabaseError, InstanceRecord
from node.sender import disable_nagle
from node.spool import Spool, SpoolError, SpoolFullError

log = logging.getLogger("pacsnode.listener")

# Accept any storage SOP class, private ones included: a node in front of
# imaging AI must not drop a vendor's object it does not know.
_config.UNRESTRICTED_STORAGE_SERVICE = True
# pynetdicom's own per-message logging names patients; keep it quiet.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False



class _CappedSleepTime:
    """The ``time`` module with ``sleep`` capped, for pynetdicom's polling reactors."""

    def __init__(self, cap_s: float) -> None:
        self._cap = cap_s

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self._cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def tune_reactor_polling(cap_s: float) -> None:
    """Shorten the sleeps of pynetdicom's association and DUL reactors.

    Both poll with fixed 1 ms sleeps, which adds about a millisecond to every
    C-STORE round trip and caps one association near 300 instances/s; capped
    at 0.2 ms the bare receive rate rises by about a quarter, for a few percent
    of a core per open association.
    """
    import pynetdicom.association
    import pynetdicom.dul

    shim: Any = _CappedSleepTime(cap_s)
    pynetdicom.association.time = shim  # type: ignore[attr-defined]
    pynetdicom.dul.time = shim  # type: ignore[attr-defined]


STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_DATASET_MISMATCH = 0xA900

# Values larger than this are measured but not read when parsing a received header.
_DEFER_BYTES = 4096


class RejectedInstance(Exception):
    """A received dataset the node will not store, with the DICOM status to answer."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class ParsedHeader:
    """What the node files a received instance by (path, size and sender still to fill in)."""

    record: InstanceRecord

    @property
    def sop_instance_uid(self) -> str:
        return self.record.sop_instance_uid


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if keyword == "ImageType":
        return "\\".join(str(v) for v in (value if isinstance(value, list | tuple) else [value]))
    return str(value)


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def parse_received(data: bytes, affected_sop_uid: str | None) -> ParsedHeader:
    """Parse the header of an encoded instance (file meta included) and check it is storable.

    Large values (pixel data) are not read, only measured: a value that runs
    past the end of what was received means a truncated transfer. Every
    attribute the node files the instance by is decoded here, so a malformed
    value is refused now rather than failing later.
    """
    try:
        ds = dcmread(BytesIO(data), defer_size=_DEFER_BYTES)
        missing = [k for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
                   if not str(ds.get(k, "")).strip()]
        if not missing:
            record = instance_record(ds, "", len(data), None)
            if not record.sop_class_uid:
                record = replace(record, sop_class_uid=str(ds.file_meta.get("MediaStorageSOPClassUID", "")))
    except Exception as exc:  # pydicom raises many error types on hostile input
        raise RejectedInstance(
            STATUS_CANNOT_UNDERSTAND, "unparseable", f"dataset cannot be decoded: {exc}"
        ) from exc
    if missing:
        raise RejectedInstance(
            STATUS_DATASET_MISMATCH,
            "missing_uid",
            f"dataset has no {', '.join(missing)}; it cannot be filed",
        )
    if affected_sop_uid and record.sop_instance_uid != str(affected_sop_uid).strip():
        raise RejectedInstance(
            STATUS_DATASET_MISMATCH,
            "uid_mismatch",
            "SOP Instance UID in the dataset differs from the C-STORE request's",
        )
    if ds.file_meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        # (A deflated stream was inflated to parse it: offsets no longer match the bytes.)
        _check_complete(ds, len(data))
    return ParsedHeader(record)


def _check_complete(ds: Dataset, received: int) -> None:
    """Reject a dataset whose last deferred value (pixel data) ends past the received bytes."""
    for tag in list(ds.keys())[-3:]:
        raw = ds.get_item(tag, keep_deferred=True)
        length = getattr(raw, "length", None)
        tell = getattr(raw, "value_tell", None)
        if raw is None or tell is None or length in (None, 0xFFFFFFFF):
            continue
        if tell + length > received:
            raise RejectedInstance(
                STATUS_CANNOT_UNDERSTAND,
                "truncated",
                f"dataset is truncated ({received - tell} of {length} bytes of {tag} received)",
            )


class StorageListener:
    """Receives instances into the spool and index; answers C-ECHO."""

    def __init__(
        self, config: DicomConfig, spool: Spool, index: Index, audit: AuditLog | None = None
    ) -> None:
        self.config = config
        self.spool = spool
        self.index = index
        self.audit = audit
        self._server: ThreadedAssociationServer | None = None
        self._lock = threading.Lock()
        self._ae = self._build_ae()

    def _build_ae(self) -> AE:
        if self.config.reactor_poll_s < 0.001:
            tune_reactor_polling(self.config.reactor_poll_s)
        ae = AE(ae_title=self.config.ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        ae.maximum_associations = self.config.max_associations
        ae.maximum_pdu_size = self.config.max_pdu_size
        ae.network_timeout = self.config.network_timeout_s
        ae.acse_timeout = self.config.acse_timeout_s
        ae.dimse_timeout = self.config.dimse_timeout_s
        ae.require_called_aet = self.config.check_called_ae
        if self.config.allowed_calling_aes:
            ae.require_calling_aet = list(self.config.allowed_calling_aes)
        return ae

    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self.config.tls
        if not tls.enabled:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(tls.certificate), str(tls.private_key))
        if tls.ca_certificates:
            ctx.load_verify_locations(str(tls.ca_certificates))
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_peer_certificate else ssl.CERT_NONE
        return ctx

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("listener is not running")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Start serving in background threads."""
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_CONN_OPEN, disable_nagle),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        self._server = self._ae.start_server(
            (self.config.host, self.config.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=self._ssl_context(),
        )
        log.info(
            "listening",
            extra={"ae_title": self.config.ae_title, "port": self.port,
                   "tls": self.config.tls.enabled},
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # -- event handlers -------------------------------------------------------

    def _on_established(self, event: evt.Event) -> None:
        metrics.ASSOCIATIONS_ACTIVE.inc()
        event.assoc._pacsnode_counted = True  # type: ignore[attr-defined]
        log.info(
            "association accepted",
            extra={"calling_ae": event.assoc.requestor.ae_title,
                   "peer": event.assoc.requestor.address},
        )

    @staticmethod
    def _on_closed(event: evt.Event) -> None:
        if getattr(event.assoc, "_pacsnode_counted", False):
            event.assoc._pacsnode_counted = False  # type: ignore[attr-defined]
            metrics.ASSOCIATIONS_ACTIVE.dec()

    def _on_rejected(self, event: evt.Event) -> None:
        calling = event.assoc.requestor.ae_title
        request = getattr(event.assoc.requestor, "primitive", None)
        called = str(getattr(request, "called_ae_title", "") or "").strip()
        if self.config.allowed_calling_aes and calling not in self.config.allowed_calling_aes:
            reason = "calling_ae_not_allowed"
        elif self.config.check_called_ae and called != self.config.ae_title:
            reason = "called_ae_mismatch"
        else:
            reason = "busy"
        metrics.ASSOCIATIONS_REJECTED.labels(reason).inc()
        log.warning(
            "association rejected",
            extra={"reason": reason, "calling_ae": calling, "called_ae": called,
                   "peer": event.assoc.requestor.address},
        )

    @staticmethod
    def _on_echo(event: evt.Event) -> int:
        return STATUS_SUCCESS

    def _reject(self, exc: RejectedInstance, calling_ae: str) -> Dataset:
        metrics.INSTANCES_REJECTED.labels(exc.reason).inc()
        log.warning(
            "instance rejected",
            extra={"reason": exc.reason, "detail": str(exc), "calling_ae": calling_ae,
                   "status": f"0x{exc.status:04X}"},
        )
        status = Dataset()
        status.Status = exc.status
        status.ErrorComment = str(exc)[:64]
        return status

    def _on_store(self, event: evt.Event) -> Dataset | int:
        started = time.perf_counter()
        calling_ae = event.assoc.requestor.ae_title
        try:
            data = event.encoded_dataset(include_meta=True)
            header = parse_received(data, event.request.AffectedSOPInstanceUID)
            stored = self._store(header, data, calling_ae)
        except RejectedInstance as exc:
            return self._reject(exc, calling_ae)
        metrics.CSTORE_DURATION.observe(time.perf_counter() - started)
        if stored:
            metrics.INSTANCES_RECEIVED.inc()
            metrics.BYTES_RECEIVED.inc(len(data))
        return STATUS_SUCCESS

    def _store(self, header: ParsedHeader, data: bytes, calling_ae: str) -> bool:
        """Write then index the instance; True when it was new."""
        path = self.spool.instance_path(
            header.record.study_uid, header.record.series_uid, header.record.sop_instance_uid
        )
        try:
            self.spool.write_durably(path, data)
        except SpoolFullError as exc:
            raise RejectedInstance(STATUS_OUT_OF_RESOURCES, "disk_full", str(exc)) from exc
        except SpoolError as exc:
            raise RejectedInstance(STATUS_OUT_OF_RESOURCES, "write_failed", str(exc)) from exc
        record = replace(header.record, path=str(path), calling_ae=calling_ae)
        try:
            new = self.index.add_instance(record)
        except IndexDatabaseError as exc:
            raise RejectedInstance(STATUS_OUT_OF_RESOURCES, "index_failed", str(exc)) from exc
        if not new:
            log.debug("duplicate instance stored again", extra={"sop_class": record.sop_class_uid})
        elif self.audit is not None:
            self.audit.instance_received(calling_ae, record.study_uid, record.sop_class_uid)
        return new


def instance_record(ds: Dataset, path: str, size: int, calling_ae: str | None) -> InstanceRecord:
    """The index record for a stored instance, from its parsed header."""
    return InstanceRecord(
        sop_instance_uid=str(ds.SOPInstanceUID).strip(),
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        series_uid=str(ds.SeriesInstanceUID).strip(),
        study_uid=str(ds.StudyInstanceUID).strip(),
        path=path,
        size=size,
        modality=_text(ds, "Modality"),
        series_description=_text(ds, "SeriesDescription"),
        series_number=_int(ds, "SeriesNumber"),
        body_part=_text(ds, "BodyPartExamined"),
        image_type=_text(ds, "ImageType"),
        temporal_positions=_int(ds, "NumberOfTemporalPositions"),
        temporal_position=_int(ds, "TemporalPositionIdentifier"),
        calling_ae=calling_ae,
    )
