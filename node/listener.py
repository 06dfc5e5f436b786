"""The DICOM listener: what happens to each received instance.

A C-STORE is answered with Success only after the instance is on disk (temp
file, fsync, atomic rename) and indexed. The handler does nothing else: study
completion, routing and pipelines happen elsewhere, so senders never wait on
them. The association protocol itself is :mod:`node.dicom_server`.
"""

from __future__ import annotations

import logging
import ssl
import struct
import time
from dataclasses import replace
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID

from node import metrics
from node.audit import AuditLog
from node.config import DicomConfig
from node.dicom_server import (
    IMPLEMENTATION_VERSION,
    AssociationPolicy,
    DicomServer,
    StoreRequest,
    StoreResponse,
)
from node.index import Index, IndexDatabaseError, InstanceRecord
from node.spool import Spool, SpoolError, SpoolFullError

log = logging.getLogger("pacsnode.listener")

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


def parse_received(data: bytes, affected_sop_uid: str | None) -> InstanceRecord:
    """Parse the header of an encoded instance (file meta included) and check it is storable.

    Returns the index record the node files it by (path and sender still to fill in).

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
    return record


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
        self._server: DicomServer | None = None

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
        return self._server.port

    def start(self) -> None:
        """Start serving in background threads."""
        policy = AssociationPolicy(
            self.config.ae_title, list(self.config.allowed_calling_aes),
            self.config.check_called_ae, self.config.max_associations,
        )
        self._server = DicomServer(
            self.config.host, self.config.port, policy, self.handle_store, self._on_event,
            ssl_context=self._ssl_context(), acse_timeout=self.config.acse_timeout_s,
            network_timeout=self.config.network_timeout_s,
        )
        self._server.start()
        log.info(
            "listening",
            extra={"ae_title": self.config.ae_title, "port": self.port,
                   "tls": self.config.tls.enabled},
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def _on_event(self, kind: str, info: dict[str, str]) -> None:
        if kind == "established":
            metrics.ASSOCIATIONS_ACTIVE.inc()
            log.info("association accepted", extra=info)
        elif kind == "closed":
            metrics.ASSOCIATIONS_ACTIVE.dec()
        elif kind == "rejected":
            metrics.ASSOCIATIONS_REJECTED.labels(info["reason"]).inc()
            log.warning("association rejected", extra=info)
        elif kind == "tls_failed":
            metrics.ASSOCIATIONS_REJECTED.labels("tls_handshake").inc()
            log.warning("TLS handshake failed", extra=info)
        elif kind == "protocol_error":
            metrics.ASSOCIATIONS_REJECTED.labels("protocol_error").inc()
            log.warning("association aborted: protocol error", extra=info)

    def handle_store(self, request: StoreRequest) -> StoreResponse:
        """Store one received instance durably; the status to answer the sender with."""
        started = time.perf_counter()
        data = _with_file_meta(request)
        try:
            header = parse_received(data, request.sop_instance_uid)
            stored = self._store(header, data, request.calling_ae)
        except RejectedInstance as exc:
            metrics.INSTANCES_REJECTED.labels(exc.reason).inc()
            log.warning(
                "instance rejected",
                extra={"reason": exc.reason, "detail": str(exc), "calling_ae": request.calling_ae,
                       "status": f"0x{exc.status:04X}"},
            )
            return StoreResponse(exc.status, str(exc))
        metrics.CSTORE_DURATION.observe(time.perf_counter() - started)
        if stored:
            metrics.INSTANCES_RECEIVED.inc()
            metrics.BYTES_RECEIVED.inc(len(data))
        return StoreResponse(STATUS_SUCCESS)

    def _store(self, header: InstanceRecord, data: bytes, calling_ae: str) -> bool:
        """Write then index the instance; True when it was new."""
        path = self.spool.instance_path(
            header.study_uid, header.series_uid, header.sop_instance_uid
        )
        try:
            self.spool.write_durably(path, data)
        except SpoolFullError as exc:
            raise RejectedInstance(STATUS_OUT_OF_RESOURCES, "disk_full", str(exc)) from exc
        except SpoolError as exc:
            raise RejectedInstance(STATUS_OUT_OF_RESOURCES, "write_failed", str(exc)) from exc
        record = replace(header, path=str(path), calling_ae=calling_ae)
        try:
            new = self.index.add_instance(record)
        except IndexDatabaseError as exc:
            raise RejectedInstance(STATUS_OUT_OF_RESOURCES, "index_failed", str(exc)) from exc
        if not new:
            log.debug("duplicate instance stored again", extra={"sop_class": record.sop_class_uid})
        elif self.audit is not None:
            self.audit.instance_received(calling_ae, record.study_uid, record.sop_class_uid)
        return new


def _meta_element(elem: int, vr: bytes, value: bytes, pad: bytes = b"\x00") -> bytes:
    if len(value) % 2:
        value += pad
    if vr == b"OB":
        return struct.pack("<HH2s2xI", 0x0002, elem, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, elem, vr, len(value)) + value


def _with_file_meta(request: StoreRequest) -> bytes:
    """The received data set in the DICOM file format (PS3.10 preamble and meta), as stored.

    Encoded directly: pydicom's general writer costs more than the rest of a C-STORE.
    """
    body = b"".join((
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", request.sop_class_uid.encode("ascii", "replace")),
        _meta_element(0x0003, b"UI", request.sop_instance_uid.encode("ascii", "replace")),
        _meta_element(0x0010, b"UI", request.transfer_syntax.encode("ascii")),
        _meta_element(0x0012, b"UI", _IMPLEMENTATION_UID),
        _meta_element(0x0013, b"SH", IMPLEMENTATION_VERSION.encode("ascii"), b" "),
        _meta_element(0x0016, b"AE", request.calling_ae.encode("ascii", "replace")[:16], b" ")
        if request.calling_ae else b"",
    ))
    group_length = _meta_element(0x0000, b"UL", struct.pack("<I", len(body)))
    return b"".join((_PREAMBLE, group_length, body, request.dataset))


_PREAMBLE = b"\x00" * 128 + b"DICM"
_IMPLEMENTATION_UID = str(PYNETDICOM_IMPLEMENTATION_UID).encode("ascii")


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
