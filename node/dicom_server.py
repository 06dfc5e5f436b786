"""A lean DICOM association acceptor for Storage and Verification (C-STORE and C-ECHO SCP).

Why not pynetdicom's own server: its association and DUL reactors poll with
sleeps and hand every PDU through queues, which caps one association near
300 instances/s before any work is done, below the PACS it sits beside. This
acceptor keeps pynetdicom for what it is good at — decoding and encoding the
association PDUs and negotiating presentation contexts — and runs the data
phase as a plain blocking loop per connection: read a PDU, collect the PDVs,
hand a complete instance to the store callback, answer.

Only what a storage node needs is spoken: A-ASSOCIATE, P-DATA (C-STORE-RQ,
C-ECHO-RQ), A-RELEASE and A-ABORT. Anything else is answered with a failure
status or an A-ABORT; the connection is closed and the server keeps serving.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.uid import UID
from pynetdicom import ALL_TRANSFER_SYNTAXES, PYNETDICOM_IMPLEMENTATION_UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import (
    AllStoragePresentationContexts,
    PresentationContext,
    build_context,
    negotiate_unrestricted,
)
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

log = logging.getLogger("pacsnode.dicom")

IMPLEMENTATION_VERSION = "PACSNODE_01"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
MAX_PDU_RECEIVE = 1 << 20          # what we ask peers to send at most per P-DATA PDU
MAX_ASSOCIATE_RQ = 1 << 16         # an A-ASSOCIATE-RQ larger than this is hostile
MAX_COMMAND_BYTES = 1 << 16        # a DIMSE command set larger than this is hostile

C_STORE_RQ, C_STORE_RSP, C_ECHO_RQ, C_ECHO_RSP = 0x0001, 0x8001, 0x0030, 0x8030
STATUS_UNRECOGNISED_OPERATION = 0x0211


class ProtocolError(Exception):
    """The peer broke the DICOM upper layer protocol; the association is aborted."""


@dataclass(frozen=True)
class StoreRequest:
    """One received C-STORE: who sent it and the encoded dataset (no file meta)."""

    calling_ae: str
    peer: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset: bytes


@dataclass(frozen=True)
class StoreResponse:
    status: int
    comment: str | None = None


class AssociationPolicy:
    """Decides whether an association request is accepted (AE titles and load)."""

    def __init__(self, ae_title: str, allowed_calling: list[str], check_called: bool,
                 max_associations: int) -> None:
        self.ae_title = ae_title
        self.allowed_calling = set(allowed_calling)
        self.check_called = check_called
        self.max_associations = max_associations

    def rejection(self, calling: str, called: str, active: int) -> str | None:
        """The reason to reject, or None to accept."""
        if self.allowed_calling and calling not in self.allowed_calling:
            return "calling_ae_not_allowed"
        if self.check_called and called != self.ae_title:
            return "called_ae_mismatch"
        if active >= self.max_associations:
            return "busy"
        return None


# (result, source, diagnostic) of the A-ASSOCIATE-RJ for each rejection reason (PS3.8 9.3.4).
_REJECT_CODES = {
    "calling_ae_not_allowed": (0x01, 0x01, 0x03),
    "called_ae_mismatch": (0x01, 0x01, 0x07),
    "busy": (0x02, 0x03, 0x02),
}


def _supported_contexts() -> list[PresentationContext]:
    contexts = [build_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES) for cx in AllStoragePresentationContexts]
    contexts.append(build_context(Verification, ALL_TRANSFER_SYNTAXES))
    return contexts


def _element(group: int, elem: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHI", group, elem, len(value)) + value


def encode_response(command: int, message_id: int, sop_class: str, sop_instance: str | None,
                    status: int, comment: str | None = None) -> bytes:
    """A DIMSE response command set, implicit VR little endian, group length first."""
    body = _element(0x0000, 0x0002, sop_class.encode("ascii"))
    body += _element(0x0000, 0x0100, struct.pack("<H", command))
    body += _element(0x0000, 0x0120, struct.pack("<H", message_id))
    body += _element(0x0000, 0x0800, struct.pack("<H", 0x0101))  # no data set follows
    body += _element(0x0000, 0x0900, struct.pack("<H", status))
    if sop_instance:
        body += _element(0x0000, 0x1000, sop_instance.encode("ascii"))
    if comment:
        text = comment.encode("ascii", "replace")[:64]
        body += _element(0x0000, 0x0902, text + (b" " if len(text) % 2 else b""))
    return _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body


def decode_command(data: bytes) -> dict[int, bytes]:
    """The elements of an implicit VR little endian command set, by element number."""
    elements: dict[int, bytes] = {}
    offset = 0
    while offset + 8 <= len(data):
        group, elem, length = struct.unpack_from("<HHI", data, offset)
        offset += 8
        if group != 0x0000 or offset + length > len(data):
            raise ProtocolError("malformed DIMSE command set")
        elements[elem] = data[offset:offset + length]
        offset += length
    if offset != len(data):
        raise ProtocolError("trailing bytes after the DIMSE command set")
    return elements


def _uid(value: bytes | None) -> str:
    return (value or b"").rstrip(b"\x00 ").decode("ascii", "replace")


def _us(value: bytes | None) -> int:
    if value is None or len(value) < 2:
        raise ProtocolError("a required DIMSE command element is missing")
    return int(struct.unpack_from("<H", value)[0])


class _Connection:
    """One association, from A-ASSOCIATE-RQ to release or abort."""

    def __init__(self, server: "DicomServer", sock: socket.socket, peer: str) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.calling_ae = ""
        self.contexts: dict[int, tuple[str, str]] = {}  # context id → (abstract syntax, transfer syntax)
        self.peer_max_pdu = 0

    # -- transport ---------------------------------------------------------------

    def _recv_exact(self, size: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            chunk = self.sock.recv(min(size - len(chunks), 1 << 20))
            if not chunk:
                raise ConnectionError("peer closed the connection")
            chunks += chunk
        return bytes(chunks)

    def _read_pdu(self, limit: int) -> tuple[int, bytes]:
        header = self._recv_exact(6)
        pdu_type, _, length = struct.unpack(">BBI", header)
        if length > limit:
            raise ProtocolError(f"PDU of type 0x{pdu_type:02X} claims {length} bytes (limit {limit})")
        return pdu_type, header + self._recv_exact(length)

    def _send_pdata(self, context_id: int, command: bytes) -> None:
        # One PDV, command, last fragment (message control header 0x03).
        pdv = struct.pack(">IBB", len(command) + 2, context_id, 0x03) + command
        self.sock.sendall(struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv)

    def _abort(self) -> None:
        try:
            self.sock.sendall(struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, 0x02, 0x00))
        except OSError:
            pass

    # -- phases ------------------------------------------------------------------

    def run(self) -> None:
        accepted = False
        try:
            self.sock.settimeout(self.server.acse_timeout)
            accepted = self._associate()
            if accepted:
                self.sock.settimeout(self.server.network_timeout)
                self._data_phase()
        except ProtocolError as exc:
            self.server.on_event("protocol_error", {"peer": self.peer, "detail": str(exc)})
            self._abort()
        except (ConnectionError, TimeoutError, ssl.SSLError, OSError) as exc:
            log.debug("connection ended", extra={"peer": self.peer, "detail": str(exc)})
        finally:
            try:
                self.sock.close()
            except OSError:
                pass
            if accepted:
                self.server.release()
                self.server.on_event("closed", {"peer": self.peer})

    def _associate(self) -> bool:
        pdu_type, raw = self._read_pdu(MAX_ASSOCIATE_RQ)
        if pdu_type != 0x01:
            raise ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}")
        pdu = A_ASSOCIATE_RQ()
        try:
            pdu.decode(raw)
            request = pdu.to_primitive()
        except Exception as exc:
            raise ProtocolError(f"undecodable A-ASSOCIATE-RQ: {exc}") from exc
        self.calling_ae = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
        for item in request.user_information:
            if isinstance(item, MaximumLengthNotification):
                self.peer_max_pdu = int(item.maximum_length_received or 0)
        reason = self.server.admit(self.calling_ae, called)
        if reason is not None:
            # Recorded before answering, so whoever sees the rejection also finds it counted.
            self.server.on_event("rejected", {"reason": reason, "calling_ae": self.calling_ae,
                                              "called_ae": called, "peer": self.peer})
            self._reject(request, reason)
            return False
        results, _roles = negotiate_unrestricted(
            request.presentation_context_definition_list, self.server.supported_contexts, None
        )
        for cx in results:
            if cx.result == 0x00 and cx.context_id is not None:
                self.contexts[cx.context_id] = (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
        self._accept(request, results)
        self.server.on_event("established", {"calling_ae": self.calling_ae, "peer": self.peer})
        return True

    def _user_information(self) -> list:
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = MAX_PDU_RECEIVE
        impl_uid = ImplementationClassUIDNotification()
        impl_uid.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
        impl_version = ImplementationVersionNameNotification()
        impl_version.implementation_version_name = IMPLEMENTATION_VERSION
        return [max_length, impl_uid, impl_version]

    def _accept(self, request: A_ASSOCIATE, results: list[PresentationContext]) -> None:
        primitive = A_ASSOCIATE()
        primitive.application_context_name = UID(APPLICATION_CONTEXT)
        primitive.calling_ae_title = request.calling_ae_title
        primitive.called_ae_title = request.called_ae_title
        primitive.result = 0x00
        primitive.result_source = 0x01
        primitive.presentation_context_definition_results_list = results
        primitive.user_information = self._user_information()
        pdu = A_ASSOCIATE_AC()
        pdu.from_primitive(primitive)
        self.sock.sendall(pdu.encode())

    def _reject(self, request: A_ASSOCIATE, reason: str) -> None:
        result, source, diagnostic = _REJECT_CODES[reason]
        primitive = A_ASSOCIATE()
        primitive.result, primitive.result_source, primitive.diagnostic = result, source, diagnostic
        pdu = A_ASSOCIATE_RJ()
        pdu.from_primitive(primitive)
        self.sock.sendall(pdu.encode())

    def _data_phase(self) -> None:
        command = bytearray()
        dataset = bytearray()
        context_id = 0
        fields: dict[int, bytes] | None = None
        while True:
            pdu_type, raw = self._read_pdu(MAX_PDU_RECEIVE + 1024)
            if pdu_type == 0x05:  # A-RELEASE-RQ
                self.sock.sendall(struct.pack(">BBI", 0x06, 0, 4) + b"\x00" * 4)
                return
            if pdu_type == 0x07:  # A-ABORT
                return
            if pdu_type != 0x04:
                raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02X} during the data phase")
            offset = 6
            while offset < len(raw):
                if offset + 6 > len(raw):
                    raise ProtocolError("truncated PDV item")
                item_length, pdv_context, control = struct.unpack_from(">IBB", raw, offset)
                end = offset + 4 + item_length
                if item_length < 2 or end > len(raw):
                    raise ProtocolError("PDV item length exceeds its PDU")
                if pdv_context not in self.contexts:
                    raise ProtocolError(f"PDV on presentation context {pdv_context}, which was not accepted")
                fragment = raw[offset + 6:end]
                offset = end
                if control & 0x01:  # command fragment
                    if fields is not None:
                        raise ProtocolError("command fragment received while a data set was expected")
                    command += fragment
                    if len(command) > MAX_COMMAND_BYTES:
                        raise ProtocolError("DIMSE command set too large")
                    if control & 0x02:
                        context_id = pdv_context
                        fields = decode_command(bytes(command))
                        command.clear()
                        if _us(fields.get(0x0800)) == 0x0101:  # no data set: answer now
                            self._answer(context_id, fields, None)
                            fields = None
                else:
                    if fields is None or pdv_context != context_id:
                        raise ProtocolError("data set fragment without its command")
                    dataset += fragment
                    if control & 0x02:
                        self._answer(context_id, fields, bytes(dataset))
                        dataset.clear()
                        fields = None

    def _answer(self, context_id: int, fields: dict[int, bytes], dataset: bytes | None) -> None:
        command = _us(fields.get(0x0100))
        message_id = _us(fields.get(0x0110))
        sop_class = _uid(fields.get(0x0002))
        if command == C_ECHO_RQ:
            self._send_pdata(context_id, encode_response(C_ECHO_RSP, message_id, sop_class, None, 0x0000))
            return
        if command != C_STORE_RQ or dataset is None:
            self._send_pdata(context_id, encode_response(
                command | 0x8000, message_id, sop_class, None, STATUS_UNRECOGNISED_OPERATION,
                "pacsnode accepts C-STORE and C-ECHO only"))
            return
        abstract, transfer_syntax = self.contexts[context_id]
        request = StoreRequest(
            calling_ae=self.calling_ae,
            peer=self.peer,
            sop_class_uid=sop_class or abstract,
            sop_instance_uid=_uid(fields.get(0x1000)),
            transfer_syntax=transfer_syntax,
            dataset=dataset,
        )
        try:
            response = self.server.store(request)
        except Exception:  # a bug in the store path must not kill the association silently
            log.exception("store handler failed")
            response = StoreResponse(0xA700, "internal error; instance not stored")
        self._send_pdata(context_id, encode_response(
            C_STORE_RSP, message_id, request.sop_class_uid, request.sop_instance_uid,
            response.status, response.comment))


class DicomServer:
    """Accepts associations on a TCP port and runs each on its own thread."""

    def __init__(
        self,
        host: str,
        port: int,
        policy: AssociationPolicy,
        store: Callable[[StoreRequest], StoreResponse],
        on_event: Callable[[str, dict[str, str]], None],
        ssl_context: ssl.SSLContext | None = None,
        acse_timeout: float = 30,
        network_timeout: float = 60,
    ) -> None:
        self.policy = policy
        self.store = store
        self.on_event = on_event
        self.ssl_context = ssl_context
        self.acse_timeout = acse_timeout
        self.network_timeout = network_timeout
        self.supported_contexts = _supported_contexts()
        self._active = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.create_server((host, port), reuse_port=False, backlog=64)
        self._thread = threading.Thread(target=self._accept_loop, name="dicom-accept", daemon=True)

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._thread.join(timeout=5)

    def admit(self, calling: str, called: str) -> str | None:
        """Count the association in if the policy allows it; the reason to reject otherwise."""
        with self._lock:
            reason = self.policy.rejection(calling, called, self._active)
            if reason is None:
                self._active += 1
            return reason

    def release(self) -> None:
        with self._lock:
            self._active -= 1

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, address = self._sock.accept()
            except OSError:
                if self._stop.is_set():
                    return
                continue
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(client, f"{address[0]}:{address[1]}"),
                             name=f"association-{address[0]}:{address[1]}", daemon=True).start()

    def _serve(self, client: socket.socket, peer: str) -> None:
        if self.ssl_context is not None:
            client.settimeout(self.acse_timeout)
            try:
                client = self.ssl_context.wrap_socket(client, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                self.on_event("tls_failed", {"peer": peer, "detail": str(exc)})
                client.close()
                return
        _Connection(self, client, peer).run()
