"""The listener against real dcmtk peers and hostile input: durable, idempotent, and never silent."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import MRImageStorage, Verification  # type: ignore[attr-defined]

from tests.node_harness import (
    DCMTK_ENV,
    NodeProcess,
    make_pki,
    write_mr_series,
)

pytestmark = pytest.mark.e2e


@pytest.fixture()
def node(tmp_path):
    proc = NodeProcess(tmp_path / "node", dicom={"allowed_calling_aes": ["STORESCU", "ECHOSCU", "PYNETDICOM"]},
                       study={"stable_seconds": 300})
    proc.start()
    yield proc
    proc.stop()


def _send_raw(port: int, path: Path, calling: str = "PYNETDICOM") -> int:
    """C-STORE a file's bytes as they are (no re-encoding), as a broken modality would."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSNODE")
    assert assoc.is_established
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
        assoc.release()
    return int(status.Status)


def _metric(node: NodeProcess, name: str) -> float:
    import urllib.request

    body = urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_echo_and_store_are_durable_and_indexed(node, tmp_path):
    echo = subprocess.run(["echoscu", "-aet", "ECHOSCU", "-aec", "PACSNODE", "127.0.0.1", str(node.dicom_port)],
                          env=DCMTK_ENV, capture_output=True, text=True)
    assert echo.returncode == 0, echo.stderr
    files = write_mr_series(tmp_path / "in", count=6)
    result = node.storescu(*files)
    assert result.returncode == 0, result.stderr
    status = node.status()
    [study] = status["studies"]
    assert study["instances"] == 6
    stored = sorted((node.workdir / "spool" / "studies").rglob("*.dcm"))
    assert len(stored) == 6
    # Byte-identical datasets: what the sender sent is what is on disk.
    sent = {dcmread(f).SOPInstanceUID: dcmread(f).PixelData for f in files}
    assert {dcmread(f).SOPInstanceUID: dcmread(f).PixelData for f in stored} == sent
    assert _metric(node, "pacsnode_instances_received_total") == 6


def test_the_same_instance_twice_is_stored_once(node, tmp_path):
    files = write_mr_series(tmp_path / "in", count=3)
    assert node.storescu(*files).returncode == 0
    again = node.storescu(*files)
    assert again.returncode == 0, again.stderr  # no error to the sender
    [study] = node.status()["studies"]
    assert study["instances"] == 3
    assert len(list((node.workdir / "spool" / "studies").rglob("*.dcm"))) == 3


def test_unknown_calling_ae_is_rejected_and_counted(node, tmp_path):
    files = write_mr_series(tmp_path / "in", count=1)
    result = node.storescu(*files, calling_ae="STRANGER")
    assert result.returncode != 0
    assert "Association Rejected" in result.stderr or "rejected" in result.stderr.lower()
    assert _metric(node, 'pacsnode_associations_rejected_total{reason="calling_ae_not_allowed"}') == 1
    assert '"reason": "calling_ae_not_allowed"' in node.log()
    assert '"calling_ae": "STRANGER"' in node.log()


def test_wrong_called_ae_is_rejected(node, tmp_path):
    files = write_mr_series(tmp_path / "in", count=1)
    result = node.storescu(*files, called_ae="SOMEONEELSE")
    assert result.returncode != 0
    assert _metric(node, 'pacsnode_associations_rejected_total{reason="called_ae_mismatch"}') == 1


def test_truncated_dataset_is_refused_with_a_failure_status(node, tmp_path):
    [good] = write_mr_series(tmp_path / "in", count=1)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[:-500])
    status = _send_raw(node.dicom_port, truncated)
    assert status == 0xC000
    assert _metric(node, 'pacsnode_instances_rejected_total{reason="truncated"}') == 1
    assert node.status()["studies"] == []


def test_dataset_without_sop_instance_uid_is_refused(node, tmp_path):
    [good] = write_mr_series(tmp_path / "in", count=1)
    ds = dcmread(good)
    sop_uid = ds.SOPInstanceUID
    del ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    broken = tmp_path / "no_uid.dcm"
    ds.save_as(broken, enforce_file_format=True)
    assert _send_raw(node.dicom_port, broken) == 0xA900
    assert "SOPInstanceUID" in node.log()
    assert node.status()["studies"] == []


def test_garbage_on_the_port_does_not_hurt_the_node(node, tmp_path):
    for payload in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x01\x00\x00\xff\xff\xff\xff" + b"\x00" * 64, b"\x00" * 3):
        with socket.create_connection(("127.0.0.1", node.dicom_port), timeout=5) as s:
            s.sendall(payload)
            s.settimeout(5)
            try:
                s.recv(1024)
            except (TimeoutError, ConnectionResetError):
                pass
    files = write_mr_series(tmp_path / "in", count=2)
    assert node.storescu(*files).returncode == 0
    assert node.status()["studies"][0]["instances"] == 2


def test_full_disk_answers_out_of_resources(tmp_path):
    node = NodeProcess(tmp_path / "node", spool={"min_free_mb": 1_000_000_000})
    node.start()
    try:
        files = write_mr_series(tmp_path / "in", count=1)
        result = node.storescu(*files, extra=("-v",))
        assert result.returncode != 0
        assert "refused: outofresources" in (result.stdout + result.stderr).lower(), result.stderr
        assert not list((node.workdir / "spool" / "studies").rglob("*.dcm"))
        assert _metric(node, 'pacsnode_instances_rejected_total{reason="disk_full"}') == 1
        import json
        import urllib.request
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/healthz", timeout=5)
            raise AssertionError("healthz should report 503 when the spool is full")
        except urllib.error.HTTPError as err:
            assert err.code == 503
            report = json.loads(err.read())
            assert report["checks"]["spool"]["ok"] is False
    finally:
        node.stop()


def test_unwritable_spool_answers_failure_not_success(tmp_path):
    node = NodeProcess(tmp_path / "node")
    node.start()
    try:
        studies = node.workdir / "spool" / "studies"
        files = write_mr_series(tmp_path / "in", count=1)
        ds = dcmread(files[0])
        blocker = studies / ds.StudyInstanceUID  # a file where the study folder must go
        blocker.write_bytes(b"not a folder")
        result = node.storescu(*files, extra=("-v",))
        assert result.returncode != 0
        assert "refused: outofresources" in (result.stdout + result.stderr).lower(), result.stderr
        assert _metric(node, 'pacsnode_instances_rejected_total{reason="write_failed"}') == 1
        assert node.status()["studies"] == []
    finally:
        node.stop()


def test_tls_listener_with_a_self_signed_ca(tmp_path):
    pki = make_pki(tmp_path / "pki", ("node", "client"))
    node = NodeProcess(tmp_path / "node", dicom={"tls": {
        "enabled": True, "certificate": pki["node.pem"], "private_key": pki["node.key"],
        "ca_certificates": pki["ca.pem"]}})
    node.start()
    try:
        files = write_mr_series(tmp_path / "in", count=2)
        tls = ("+tls", pki["client.key"], pki["client.pem"], "+cf", pki["ca.pem"])
        result = node.storescu(*files, extra=tls)
        assert result.returncode == 0, result.stderr
        assert node.status()["studies"][0]["instances"] == 2
        # Without a client certificate from the CA, the handshake fails and nothing is stored.
        plain = node.storescu(*write_mr_series(tmp_path / "other", count=1))
        assert plain.returncode != 0
        assert len(node.status()["studies"]) == 1
    finally:
        node.stop()


def _compressed_variants(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """(original, compressed) pairs in each transfer syntax, made by dcmtk's and pydicom's encoders."""
    import numpy as np
    from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless

    out: dict[str, tuple[Path, Path]] = {}
    [src] = write_mr_series(tmp_path / "src", count=1)
    for name, tool in (("jpeg-lossless", ["dcmcjpeg", "+e1"]), ("jpeg-ls", ["dcmcjpls"]), ("rle", ["dcmcrle"])):
        target = tmp_path / f"{name}.dcm"
        subprocess.run([*tool, str(src), str(target)], check=True, env=DCMTK_ENV)
        out[name] = (src, target)
    ds = dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.compress(JPEG2000Lossless)
    ds.save_as(tmp_path / "j2k.dcm")
    out["jpeg2000"] = (src, tmp_path / "j2k.dcm")
    ds = dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflate.dcm")
    out["deflate"] = (src, tmp_path / "deflate.dcm")
    # 8-bit image for baseline JPEG (lossy: compared within a tolerance).
    ds = dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = (np.arange(32 * 32) % 200).astype(np.uint8).tobytes()
    ds.save_as(tmp_path / "8bit.dcm")
    subprocess.run(["dcmcjpeg", "+eb", str(tmp_path / "8bit.dcm"), str(tmp_path / "baseline.dcm")],
                   check=True, env=DCMTK_ENV)
    out["jpeg-baseline"] = (tmp_path / "8bit.dcm", tmp_path / "baseline.dcm")
    return out


# storescu's option that proposes each file's transfer syntax.
_PROPOSE = {"jpeg-lossless": "-xs", "jpeg-ls": "-xt", "rle": "-xr", "jpeg2000": "-xv", "deflate": "-xd",
            "jpeg-baseline": "-xy"}


def test_compressed_transfer_syntaxes_are_stored_as_sent_and_decodable(node, tmp_path):
    import numpy as np

    variants = _compressed_variants(tmp_path)
    for name, (original, compressed) in variants.items():
        result = node.storescu(compressed, extra=("-v", _PROPOSE[name]))
        assert result.returncode == 0, f"{name}: {result.stderr}"
        sop = dcmread(compressed).SOPInstanceUID
        [stored] = [p for p in (node.workdir / "spool" / "studies").rglob(f"{sop}.dcm")]
        stored_ds = dcmread(stored)
        assert stored_ds.file_meta.TransferSyntaxUID == dcmread(compressed).file_meta.TransferSyntaxUID, name
        decoded = stored_ds.pixel_array.astype(np.int32)
        expected = dcmread(original).pixel_array.astype(np.int32)
        if name == "jpeg-baseline":
            assert np.abs(decoded - expected).mean() < 3, name
        else:
            assert np.array_equal(decoded, expected), name


def test_association_limit_rejects_the_extra_peer(tmp_path):
    node = NodeProcess(tmp_path / "node", dicom={"max_associations": 1})
    node.start()
    try:
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context(Verification)
        held = ae.associate("127.0.0.1", node.dicom_port, ae_title="PACSNODE")
        assert held.is_established
        result = node.storescu(*write_mr_series(tmp_path / "in", count=1))
        assert result.returncode != 0
        held.release()
        assert _metric(node, 'pacsnode_associations_rejected_total{reason="busy"}') == 1
        assert node.storescu(*write_mr_series(tmp_path / "in2", count=1)).returncode == 0
    finally:
        node.stop()


def test_private_sop_class_is_stored_not_refused(node, tmp_path):
    """A vendor's private object must reach the node like any other."""
    [path] = write_mr_series(tmp_path / "in", count=1)
    ds = dcmread(path)
    private_class = "1.2.826.0.1.3680043.8.498.1.77"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = private_class
    private = tmp_path / "private.dcm"
    ds.save_as(private, enforce_file_format=True)
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(private_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="PACSNODE")
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0x0000
    [stored] = list((node.workdir / "spool" / "studies").rglob("*.dcm"))
    assert dcmread(stored).SOPClassUID == private_class
