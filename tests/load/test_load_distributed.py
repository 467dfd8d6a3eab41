"""Distributed runs on loopback: Locust's own master and two worker processes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from loadsupport import ROOT, free_port, load_server

pytestmark = pytest.mark.slow


def mailharness(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "conformance", "load", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def stats(prefix: Path) -> dict[tuple[str, str], dict[str, str]]:
    with Path(f"{prefix}_stats.csv").open(newline="") as f:
        return {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}


def test_two_worker_processes_share_the_load(dev_setup, tmp_path: Path):
    """``--processes 2``: the open model's rate is split, delivery counts come from both."""
    with load_server(dev_setup, tmp_path / "srv", accounts=4) as srv:
        prefix = tmp_path / "run"
        out = finish(
            mailharness(
                "--profile",
                "delivery",
                "--target",
                str(srv.target_file),
                "-u",
                "4",
                "-t",
                "4s",
                "--rate",
                "20",
                "--processes",
                "2",
                "--csv",
                str(prefix),
                "--delivery-timeout",
                "5",
                "--",
                "--message-size",
                "2KB",
                cwd=tmp_path,
            )
        )
    params = json.loads(Path(f"{prefix}_params.json").read_text())
    results = params["results"]
    assert params["exit_code"] == 0, out[-4000:]
    assert results["processes"]["workers_reported"] == 2, results
    assert results["open_model"]["processes"] == 2, results  # both workers paced arrivals
    delivery = results["delivery"]
    assert delivery["submitted"] > 40 and delivery["seen"] == delivery["submitted"], delivery
    assert delivery["lost"] == delivery["duplicated"] == 0
    rows = stats(prefix)
    # the master's statistics hold both workers' requests
    assert int(rows[("DELIVERY", "delivery end-to-end")]["Request Count"]) == delivery["seen"]
    assert int(rows[("SMTP", "DATA")]["Request Count"]) == delivery["submitted"]
    assert rows[("", "Aggregated")]["Failure Count"] == "0", out[-4000:]
    # 20 messages/s for about 4 s in all, not 20 per worker
    assert 60 <= delivery["submitted"] <= 110, delivery


def test_master_and_two_workers_on_loopback(dev_setup, tmp_path: Path):
    """``--master`` and two ``--worker`` commands, as on separate machines."""
    port = str(free_port())
    with load_server(dev_setup, tmp_path / "srv", accounts=4) as srv:
        target = str(srv.target_file)
        prefix = tmp_path / "run"
        master = mailharness(
            "--profile",
            "submission",
            "--target",
            target,
            "-u",
            "4",
            "-t",
            "3s",
            "--master",
            "--expect-workers",
            "2",
            "--master-port",
            port,
            "--csv",
            str(prefix),
            cwd=tmp_path,
        )
        workers = [
            mailharness(
                "--worker",
                "--master-port",
                port,
                "--profile",
                "submission",
                "--target",
                target,
                cwd=tmp_path,
            )
            for _ in range(2)
        ]
        out = finish(master)
        worker_out = [finish(w, timeout=30) for w in workers]
    assert master.returncode == 0, out[-4000:]
    assert all(w.returncode == 0 for w in workers), worker_out
    rows = stats(prefix)
    assert int(rows[("SMTP", "DATA")]["Request Count"]) > 0, out[-4000:]
    assert rows[("", "Aggregated")]["Failure Count"] == "0"
    params = json.loads(Path(f"{prefix}_params.json").read_text())
    assert params["results"]["processes"]["workers_reported"] == 2  # both took part
