"""C-STORE and C-ECHO as an SCU: how the node (and its admin commands) talk to PACS."""

from __future__ import annotations

import logging
import re
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.config import DestinationConfig, TLSConfig

log = logging.getLogger("pacsnode.sender")

# Stream files from disk as they are encoded rather than decoding them first.
_config.STORE_SEND_CHUNKED_DATASET = True

MAX_CONTEXTS = 128  # the most presentation contexts one association may propose


class SendError(Exception):
    """A destination could not be reached or refused the association."""


@dataclass(frozen=True)
class SendResult:
    path: Path
    ok: bool
    status: int | None
    error: str | None = None


def parse_peer(text: str) -> DestinationConfig:
    """Parse ``AE@HOST:PORT`` (as given on the command line)."""
    match = re.fullmatch(r"([^@]{1,16})@(\[[^\]]+\]|[^:]+):(\d{1,5})", text.strip())
    if not match:
        raise ValueError(f"{text!r} is not of the form AE@HOST:PORT")
    host = match.group(2).strip("[]")
    return DestinationConfig(ae_title=match.group(1), host=host, port=int(match.group(3)))


def _client_ssl(tls: TLSConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                     cafile=str(tls.ca_certificates) if tls.ca_certificates else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # PACS certificates rarely name the host; the CA is what we pin
    if tls.certificate and tls.private_key:
        ctx.load_cert_chain(str(tls.certificate), str(tls.private_key))
    if not tls.require_peer_certificate:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def disable_nagle(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: send each DIMSE message at once (no ~40 ms Nagle delay)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class DicomSender:
    """Opens associations to one destination and sends files or echoes."""

    def __init__(self, destination: DestinationConfig, calling_ae_title: str = "PACSNODE") -> None:
        self.destination = destination
        self.calling_ae_title = destination.calling_ae_title or calling_ae_title

    def _ae(self) -> AE:
        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = self.destination.timeout_s
        ae.dimse_timeout = self.destination.timeout_s
        ae.network_timeout = self.destination.timeout_s
        ae.connection_timeout = self.destination.timeout_s
        return ae

    def _associate(self, ae: AE):  # type: ignore[no-untyped-def]
        dest = self.destination
        tls_args = (_client_ssl(dest.tls), None) if dest.tls.enabled else None
        try:
            assoc = ae.associate(
                dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args,
                evt_handlers=[(evt.EVT_CONN_OPEN, disable_nagle)],
            )
        except (OSError, ssl.SSLError) as exc:
            raise SendError(f"cannot connect to {self.describe()}: {exc}") from exc
        if not assoc.is_established:
            if assoc.is_rejected:
                why = "association rejected (check the called/calling AE titles)"
            elif assoc.is_aborted:
                why = "association aborted by the peer"
            else:
                why = "no answer (peer down, wrong port, or TLS mismatch)"
            raise SendError(f"{self.describe()}: {why}")
        return assoc

    def describe(self) -> str:
        d = self.destination
        return f"{d.ae_title}@{d.host}:{d.port}"

    def echo(self) -> int:
        """C-ECHO the destination; returns the status (0 is success)."""
        ae = self._ae()
        ae.add_requested_context(Verification)
        assoc = self._associate(ae)
        try:
            status = assoc.send_c_echo()
            if not status or "Status" not in status:
                raise SendError(f"{self.describe()}: no C-ECHO response")
            return int(status.Status)
        finally:
            assoc.release()

    def send(self, paths: Sequence[Path]) -> list[SendResult]:
        """Send files over one association per batch of SOP classes; one result per file.

        Raises :class:`SendError` only when the destination cannot be reached at all.
        """
        results: list[SendResult] = []
        headers: list[tuple[Path, str, str]] = []
        for path in paths:
            try:
                ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
                headers.append((Path(path), str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
            except Exception as exc:
                results.append(SendResult(Path(path), False, None, f"unreadable file: {exc}"))
        # Each SOP class/transfer syntax pair needs a presentation context; propose
        # at most MAX_CONTEXTS per association and split larger sets.
        batches: list[list[tuple[Path, str, str]]] = []
        current: list[tuple[Path, str, str]] = []
        contexts: set[tuple[str, str]] = set()
        for item in headers:
            key = (item[1], item[2])
            if key not in contexts and len(contexts) >= MAX_CONTEXTS // 2:
                batches.append(current)
                current, contexts = [], set()
            contexts.add(key)
            current.append(item)
        if current:
            batches.append(current)
        for batch in batches:
            results.extend(self._send_batch(batch))
        return results

    def _send_batch(self, batch: list[tuple[Path, str, str]]) -> list[SendResult]:
        ae = self._ae()
        proposed: dict[str, set[str]] = {}
        for _, sop_class, tsyntax in batch:
            proposed.setdefault(sop_class, set()).add(tsyntax)
        for sop_class, syntaxes in proposed.items():
            for tsyntax in syntaxes:
                ae.add_requested_context(sop_class, [tsyntax])
            # A fallback the peer is required to support, in case it refuses the file's syntax.
            if not syntaxes <= {ExplicitVRLittleEndian, ImplicitVRLittleEndian}:
                ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = self._associate(ae)
        results = []
        try:
            for path, _, _ in batch:
                if not assoc.is_established:
                    results.append(SendResult(path, False, None, "association lost"))
                    continue
                try:
                    status = assoc.send_c_store(path)
                except (ValueError, RuntimeError, OSError) as exc:
                    results.append(SendResult(path, False, None, str(exc)))
                    continue
                code = int(status.Status) if status and "Status" in status else None
                if code is None:
                    results.append(SendResult(path, False, None, "no response (timeout or abort)"))
                elif code in (0x0000, 0xB000, 0xB007, 0xB006):
                    results.append(SendResult(path, True, code))
                else:
                    comment = str(status.get("ErrorComment", "")) if status else ""
                    results.append(SendResult(path, False, code, f"status 0x{code:04X} {comment}".strip()))
        finally:
            if assoc.is_established:
                assoc.release()
        return results
