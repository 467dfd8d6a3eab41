"""``mailharness load``: the command line it builds, and short headless runs against the
reference server (Locust runs in a subprocess of the command; nothing here imports it)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from loadsupport import load_server

from conformance.cli import main
from conformance.cli_load import CpuMonitor, LoadOptions, _summary, locust_command, params_path

TARGET = "host: 127.0.0.1\ndomain: example.test\nservices: {mx: {port: 25, tls: none}}\n"


def options(**kw) -> LoadOptions:
    base = {
        "profile": "submission",
        "target": Path("t.yaml"),
        "users": 4,
        "spawn_rate": None,
        "run_time": "10s",
    }
    return LoadOptions(**{**base, **kw})


def test_locust_command_line():
    lf = Path("/x/loadtest/locustfile.py")
    cmd = locust_command(options(rate=20.0, csv="out/run", seed=7), lf, Path("r.json"))
    assert cmd[1:5] == ["-m", "locust", "-f", str(lf)]
    text = " ".join(cmd)
    for part in (
        "--target-file t.yaml",
        "--profile submission",
        "-u 4",
        "-r 4",
        "-t 10s",
        "--rate 20 --rate-shape constant",
        "--csv out/run",
        "--headless",
        "--seed 7",
        "--mailharness-results r.json",
    ):
        assert part in text, (part, text)
    # capacity search without a run time: its own bound
    cap = locust_command(
        options(run_time=None, rate=50.0, capacity=True, rate_steps=3, step_time=4.0), lf, None
    )
    assert "-t 17s" in " ".join(cap) and "--capacity" in cap
    scenario = locust_command(options(profile=None, scenario=Path("s.yaml")), lf, None)
    assert "--profile scenario --scenario s.yaml" in " ".join(scenario)
    worker = locust_command(options(worker=True, master_host="192.0.2.1"), lf, None)
    assert "--worker --master-host 192.0.2.1" in " ".join(worker) and "-u" not in worker
    assert "--processes 2" in " ".join(locust_command(options(processes=2), lf, None))
    master = " ".join(locust_command(options(master=True, expect_workers=2), lf, None))
    assert "--master --expect-workers 2" in master
    web = locust_command(options(web=True), lf, None)
    assert "--headless" not in web and "--web-host" in web and "--autostart" in web


def test_params_file_goes_next_to_the_results():
    assert params_path(options(csv="out/run")) == Path("out/run_params.json")
    assert params_path(options(html=Path("r/report.html"))) == Path("r/report_params.json")
    assert params_path(options()) == Path("load-params.json")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--profile", "mx"], "give --target"),
        (["--profile", "mx", "--target", "{t}"], "give --run-time"),
        (["--profile", "mx", "--target", "{t}", "-t", "5s", "--capacity"], "--capacity needs"),
        (["--target", "{t}", "-t", "5s"], "give --profile or --scenario"),
        (["--profile", "mx", "--target", "{t}", "-t", "5x"], "write seconds like"),
        (["--profile", "mx", "--target", "{t}", "--worker", "--processes", "2"], "--worker"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args, message):
    target = tmp_path / "t.yaml"
    target.write_text(TARGET)
    result = CliRunner().invoke(main, ["load", *(a.format(t=target) for a in args)])
    assert result.exit_code == 2 and message in result.output, result.output


def test_profile_needing_a_missing_service_exits_2(tmp_path: Path):
    target = tmp_path / "t.yaml"
    target.write_text(TARGET)
    args = ["load", "--profile", "delivery", "--target", str(target), "-t", "2s"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "needs a submission or submissions service" in result.output


def test_cpu_saturation_warning():
    mon = CpuMonitor(0)
    mon.samples = {11: [95.0, 97.0, 99.0, 60.0], 12: [40.0, 50.0, 95.0]}
    mon.names = {11: "worker", 12: "worker"}
    params = {"options": {"rate": None}, "results": {}}
    lines = _summary(params, mon, [])
    assert params["cpu"]["saturated"] and list(mon.saturated()) == [11]
    assert any("load generator itself is the bottleneck: worker pid 11" in x for x in lines)
    quiet = CpuMonitor(0)
    assert not any("WARNING" in x for x in _summary(params, quiet, []))
    said = _summary(params, quiet, ["CPU usage above 90%! This may constrain your throughput"])
    assert any("bottleneck" in x for x in said) and params["cpu"]["locust_warnings"]


# -- headless runs --------------------------------------------------------------------


def stats_rows(prefix: Path) -> dict[tuple[str, str], dict[str, str]]:
    with Path(f"{prefix}_stats.csv").open(newline="") as f:
        return {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}


def load_cli(*args: str):
    return CliRunner().invoke(main, ["load", *args], catch_exceptions=False)


@pytest.mark.slow
def test_headless_run_records_parameters_and_csv(dev_setup, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with load_server(dev_setup, tmp_path / "srv", accounts=3) as srv:
        prefix = tmp_path / "out" / "run"
        result = load_cli(
            "--profile",
            "submission",
            "--target",
            str(srv.target_file),
            "-u",
            "2",
            "-t",
            "3s",
            "--csv",
            str(prefix),
            "--seed",
            "42",
            "--html",
            str(tmp_path / "out" / "report.html"),
        )
    assert result.exit_code == 0, result.output
    params = json.loads(Path(f"{prefix}_params.json").read_text())
    assert params["options"]["users"] == 2 and params["options"]["profile"] == "submission"
    assert params["seed"] == 42 and params["locust_version"] and params["version"]
    assert params["target"]["services"]["submission"].startswith("127.0.0.1:")
    assert params["started_at"] <= params["ended_at"] and params["exit_code"] == 0
    assert "--seed" in params["locust_command"] and params["cpu"]["sampled"]
    rows = stats_rows(prefix)
    assert int(rows[("SMTP", "DATA")]["Request Count"]) > 0
    assert rows[("", "Aggregated")]["Failure Count"] == "0"
    assert (tmp_path / "out" / "report.html").stat().st_size > 1000


@pytest.mark.slow
def test_rate_mode_keeps_to_the_target_rate(dev_setup, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with load_server(dev_setup, tmp_path / "srv", accounts=3) as srv:
        prefix = tmp_path / "run"
        result = load_cli(
            "--profile",
            "submission",
            "--target",
            str(srv.target_file),
            "-u",
            "5",
            "-t",
            "5s",
            "--rate",
            "20",
            "--csv",
            str(prefix),
        )
    assert result.exit_code == 0, result.output
    params = json.loads(Path(f"{prefix}_params.json").read_text())
    started = params["results"]["open_model"]["started"]
    sent = int(stats_rows(prefix)[("SMTP", "DATA")]["Request Count"])
    # 20/s for 5 s; a user's first visit is unpaced (up to 5 more)
    assert 85 <= started <= 110 and 85 <= sent <= 110, (started, sent, result.output[-2000:])
    assert params["results"]["open_model"]["missed"] == 0
    assert "open model:" in result.output


@pytest.mark.slow
def test_capacity_search_finds_the_highest_sustained_step(dev_setup, tmp_path: Path, monkeypatch):
    # one user and 0.2 s per message: 2/s is sustained, 20/s leaves most arrivals missed
    monkeypatch.chdir(tmp_path)
    slow = {"listener": "submission", "command": "DATA_END", "delay": 0.2}
    with load_server(dev_setup, tmp_path / "srv", accounts=2, faults=[slow]) as srv:
        result = load_cli(
            "--profile",
            "submission",
            "--target",
            str(srv.target_file),
            "-u",
            "1",
            "--rate",
            "20",
            "--rate-start",
            "2",
            "--rate-steps",
            "2",
            "--step-time",
            "3",
            "--capacity",
            "--max-p95-ms",
            "5000",
        )
    params = json.loads((tmp_path / "load-params.json").read_text())
    cap = params["results"]["capacity"]
    assert cap["sustainable_rate"] == 2.0 and cap["limit_reached"], (cap, result.output[-3000:])
    assert [s["passed"] for s in cap["steps"]] == [True, False]
    assert "arrivals missed" in cap["stopped_because"]
    assert "capacity: highest sustainable rate 2.00 msg/s" in result.output
