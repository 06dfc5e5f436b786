"""Hostile and broken input: the parser rejects cleanly and the node keeps serving."""

from __future__ import annotations

import random
import socket
import struct
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.index import InstanceRecord
from node.listener import RejectedInstance, parse_received
from tests.node_harness import DCMTK_ENV, NodeProcess, write_mr_series


@pytest.fixture(scope="module")
def valid_instance(tmp_path_factory) -> bytes:
    [path] = write_mr_series(tmp_path_factory.mktemp("valid"), count=1, size=16)
    return path.read_bytes()


def _parse(data: bytes) -> None:
    try:
        result = parse_received(data, None)
    except RejectedInstance as exc:
        assert exc.status in (0xC000, 0xA900, 0xA700)
        assert str(exc)
    else:
        assert isinstance(result, InstanceRecord) and result.sop_instance_uid


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=4096))
def test_random_bytes_are_rejected_not_crashing(data):
    _parse(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=10_000), flips=st.lists(
    st.tuples(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=255)), max_size=8))
def test_truncated_and_corrupted_datasets_are_rejected_not_crashing(valid_instance, cut, flips):
    data = bytearray(valid_instance[: len(valid_instance) - cut % len(valid_instance)])
    for position, value in flips:
        if data:
            data[position % len(data)] = value
    _parse(bytes(data))


def test_oversized_length_and_deep_nesting(valid_instance):
    # An element claiming 4 GB follows the header.
    huge = valid_instance[:400] + struct.pack("<HH2sHI", 0x0009, 0x0010, b"UN", 0, 0xFFFFFFF0)
    _parse(huge)
    # A sequence nested 500 deep (undefined lengths, never closed).
    nested = valid_instance[:400] + (struct.pack("<HH2sHI", 0x0009, 0x1001, b"SQ", 0, 0xFFFFFFFF)
                                     + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)) * 500
    _parse(nested)


@pytest.mark.e2e
def test_node_survives_random_pdus_and_keeps_serving(tmp_path):
    node = NodeProcess(tmp_path / "node", dicom={"network_timeout_s": 2, "acse_timeout_s": 2})
    node.start()
    rng = random.Random(1234)
    try:
        for i in range(40):  # bounded: 40 short connections to our own node on loopback
            pdu_type = rng.choice([0x01, 0x02, 0x04, 0x05, 0x07, 0xFF, rng.randrange(256)])
            length = rng.choice([0, 4, 0xFFFFFFFF, rng.randrange(1 << 16)])
            body = rng.randbytes(rng.randrange(0, 512))
            payload = struct.pack(">BBI", pdu_type, 0, length) + body
            if i % 5 == 0:
                payload = payload[: rng.randrange(1, 6)]  # truncated PDU header
            with socket.create_connection(("127.0.0.1", node.dicom_port), timeout=5) as s:
                s.sendall(payload)
                s.settimeout(0.5)
                try:
                    s.recv(1024)
                except (TimeoutError, ConnectionResetError, OSError):
                    pass
        assert node.proc is not None and node.proc.poll() is None, "the node died"
        echo = subprocess.run(["echoscu", "-aec", "PACSNODE", "127.0.0.1", str(node.dicom_port)],
                              env=DCMTK_ENV, capture_output=True, text=True, timeout=30)
        assert echo.returncode == 0, echo.stderr
        assert node.storescu(*write_mr_series(tmp_path / "in", count=2)).returncode == 0
    finally:
        node.stop()
