"""Validate DICOM objects with the tools others validate them with: dciodvfy, dcmdump, dsr2xml.

``assert_valid_dicom(obj)`` runs dicom3tools' ``dciodvfy`` (the IOD checker
dcmqi runs in its tests and highdicom's maintainers run by hand) and fails
with the error lines; warnings are allowed but printed, so ``pytest -s``
shows them. ``assert_dcmtk_parses`` and ``assert_dsr2xml_parses`` check that
DCMTK reads the object (the toolkit behind Orthanc and many PACS).

Each accepts a path or a pydicom Dataset (written to a temporary Part 10
file first). A missing tool skips the calling test with the install hint.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

_ENV = {**os.environ, "TCP_NODELAY": "1"}


@dataclass(frozen=True)
class DciodvfyReport:
    """What dciodvfy said about one object."""

    iod: str
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    output: str


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install {package})")
    return path


@contextmanager
def dicom_file(path_or_dataset: str | os.PathLike[str] | Dataset) -> Iterator[Path]:
    """A Part 10 file of the object: the path itself, or a temporary file for a Dataset."""
    if not isinstance(path_or_dataset, Dataset):
        yield Path(path_or_dataset)
        return
    with tempfile.TemporaryDirectory(prefix="dicom-validate-") as tmp:
        path = Path(tmp) / "object.dcm"
        path_or_dataset.save_as(path, enforce_file_format=True)
        yield path


def run_dciodvfy(path_or_dataset: str | os.PathLike[str] | Dataset) -> DciodvfyReport:
    """Run ``dciodvfy -new`` and sort its lines into errors and warnings."""
    binary = _tool("dciodvfy", "dicom3tools")
    with dicom_file(path_or_dataset) as path:
        result = subprocess.run([binary, "-new", str(path)], capture_output=True, text=True, check=False, env=_ENV, timeout=120)
    output = (result.stdout + result.stderr).strip()
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = tuple(line for line in lines if re.match(r"^(Error|Abort)\b", line))
    warnings = tuple(line for line in lines if line.startswith("Warning"))
    iod = next((line for line in lines if not re.match(r"^(Error|Abort|Warning)\b", line)), "")
    return DciodvfyReport(iod=iod, errors=errors, warnings=warnings, output=output)


def assert_valid_dicom(
    path_or_dataset: str | os.PathLike[str] | Dataset,
    *,
    ignore_errors: Iterable[str] = (),
    expected_iod: str | None = None,
) -> DciodvfyReport:
    """Fail unless dciodvfy reports no errors; print its warnings.

    ``ignore_errors``: regular expressions of error lines to tolerate (say
    why at the call site). ``expected_iod``: the IOD name dciodvfy must
    recognise (e.g. ``"Segmentation"``), so a wrong SOP class cannot pass
    unnoticed.
    """
    report = run_dciodvfy(path_or_dataset)
    patterns = [re.compile(p) for p in ignore_errors]
    errors = [e for e in report.errors if not any(p.search(e) for p in patterns)]
    if report.warnings:
        print(f"dciodvfy warnings ({report.iod}):\n  " + "\n  ".join(report.warnings))
    assert not errors, f"dciodvfy found {len(errors)} error(s) in {report.iod or 'the object'}:\n" + "\n".join(errors)
    if expected_iod is not None:
        assert report.iod == expected_iod, f"dciodvfy recognised {report.iod!r}, expected {expected_iod!r}"
    return report


def assert_dcmtk_parses(path_or_dataset: str | os.PathLike[str] | Dataset) -> str:
    """Fail unless DCMTK's dcmdump reads the whole object without errors; returns the dump."""
    binary = _tool("dcmdump", "dcmtk")
    with dicom_file(path_or_dataset) as path:
        result = subprocess.run([binary, "-q", "+L", str(path)], capture_output=True, text=True, check=False, env=_ENV,
                                timeout=120)
    problems = [line for line in result.stderr.splitlines() if line.startswith(("E:", "F:"))]
    assert result.returncode == 0 and not problems, (
        f"dcmdump could not read the object (exit {result.returncode}):\n{result.stderr}"
    )
    return result.stdout


def assert_dsr2xml_parses(path_or_dataset: str | os.PathLike[str] | Dataset) -> str:
    """Fail unless DCMTK's dsr2xml reads the structured report; returns the XML."""
    binary = _tool("dsr2xml", "dcmtk")
    with dicom_file(path_or_dataset) as path:
        result = subprocess.run([binary, "-q", str(path)], capture_output=True, text=True, check=False, env=_ENV, timeout=120)
    problems = [line for line in result.stderr.splitlines() if line.startswith(("E:", "F:"))]
    assert result.returncode == 0 and not problems and "<report" in result.stdout, (
        f"dsr2xml could not read the structured report (exit {result.returncode}):\n{result.stderr}"
    )
    return result.stdout
