"""Load and soak: many concurrent associations into one node; throughput, p99 C-STORE latency, RSS, fds.

    .venv/bin/python benchmarks/bench_load.py                         # 20 associations x 500 instances
    .venv/bin/python benchmarks/bench_load.py --senders 4 --per-sender 12500 --soak   # 50,000-instance soak

Each sender is a pynetdicom SCU on its own thread, sending pre-encoded files
(so the sender's cost stays small) and timing every C-STORE round trip. All
traffic stays on 127.0.0.1; the run is bounded by the instance count. The node
runs as a real `pacsnode serve` process; its RSS and open file descriptors are
sampled before, during and after, and every instance must be indexed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml
from pynetdicom import AE, _config
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_ingest import write_instances  # noqa: E402
from tests.node_harness import PACSNODE, free_port, wait_for_port  # noqa: E402

_config.STORE_SEND_CHUNKED_DATASET = True  # send files as they are, without re-encoding


def _proc_stat(pid: int) -> tuple[int, int]:
    """(RSS KiB, open file descriptors) of a process."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def sender(port: int, files: list[Path], latencies: list[float], errors: list[str], name: str) -> None:
    ae = AE(ae_title=name)
    ae.add_requested_context(MRImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSNODE")
    if not assoc.is_established:
        errors.append(f"{name}: association failed")
        return
    try:
        for path in files:
            started = time.perf_counter()
            status = assoc.send_c_store(path)
            latencies.append(time.perf_counter() - started)
            if not status or status.Status != 0:
                errors.append(f"{name}: {path.name}: {status.Status if status else 'no response'}")
    finally:
        assoc.release()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--per-sender", type=int, default=500)
    parser.add_argument("--soak", action="store_true", help="Report RSS per 10%% of the run (flatness).")
    args = parser.parse_args(argv)
    total = args.senders * args.per_sender

    with tempfile.TemporaryDirectory(prefix="pacsnode-load-") as tmp:
        tmp_path = Path(tmp)
        # Distinct SOP Instance UIDs per sender: write one folder each (64x64 to keep disk small).
        folders = []
        for i in range(args.senders):
            folder = tmp_path / f"data{i}"
            write_instances(folder, args.per_sender, size=64)
            folders.append(sorted(folder.iterdir()))
        port, http_port = free_port(), free_port()
        config = {"dicom": {"port": port, "max_associations": args.senders + 4},
                  "http": {"port": http_port},
                  "spool": {"path": str(tmp_path / "spool"), "min_free_mb": 100},
                  "study": {"stable_seconds": 3600}, "logging": {"level": "WARNING"}}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
        proc = subprocess.Popen([PACSNODE, "serve", "--config", str(tmp_path / "c.yaml")],
                                stdout=open(tmp_path / "node.log", "wb"), stderr=subprocess.STDOUT)
        try:
            wait_for_port(http_port, timeout=30)
            time.sleep(1)
            rss_before, fds_before = _proc_stat(proc.pid)
            latencies: list[float] = []
            errors: list[str] = []
            samples: list[int] = []
            done = threading.Event()

            def sample() -> None:
                while not done.wait(0.5):
                    samples.append(_proc_stat(proc.pid)[0])

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.perf_counter()
            threads = [threading.Thread(target=sender, args=(port, files, latencies, errors, f"LOAD{i:02d}"))
                       for i, files in enumerate(folders)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.perf_counter() - started
            done.set()
            sampler.join()
            time.sleep(1)
            rss_after, fds_after = _proc_stat(proc.pid)
            status = subprocess.run([PACSNODE, "status", "--json", "--limit", "100000", "--config",
                                     str(tmp_path / "c.yaml")], capture_output=True, text=True, check=True)
            indexed = sum(s["instances"] for s in json.loads(status.stdout)["studies"])
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    latencies.sort()
    p99 = latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan")
    print(f"{args.senders} concurrent associations x {args.per_sender} instances (64x64 MR), fsync on")
    print(f"throughput: {total / seconds:.1f} instances/s over {seconds:.1f} s; errors: {len(errors)}")
    print(f"C-STORE round trip: median {statistics.median(latencies) * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms")
    print(f"indexed: {indexed} of {total}")
    print(f"node RSS: before {rss_before / 1024:.0f} MiB, peak {max(samples, default=0) / 1024:.0f} MiB,"
          f" after {rss_after / 1024:.0f} MiB; open fds before {fds_before}, after {fds_after}")
    if args.soak and samples:
        tenth = max(1, len(samples) // 10)
        print("RSS per tenth of the run (MiB):", " ".join(f"{s / 1024:.0f}" for s in samples[::tenth]))
    for line in errors[:5]:
        print("error:", line)


if __name__ == "__main__":
    main()
