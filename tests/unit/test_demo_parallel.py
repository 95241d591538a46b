"""`kinject.recipes.engine.run_parallel`: per-domain demo work in worker processes, order and errors kept."""

from __future__ import annotations

import pytest

from kinject.recipes.engine import demo_workers, run_parallel


def test_workers_follow_jobs_cores_and_the_env_override(monkeypatch):
    monkeypatch.setenv("KINJECT_DEMO_WORKERS", "1")
    assert demo_workers(4) == 1
    monkeypatch.setenv("KINJECT_DEMO_WORKERS", "3")
    assert demo_workers(2) == 2 and demo_workers(5) == 3
    monkeypatch.delenv("KINJECT_DEMO_WORKERS")
    assert 1 <= demo_workers(2) <= 2


@pytest.mark.parametrize("workers", ["1", "2"])
def test_results_keep_job_order_and_worker_errors_reach_the_caller(monkeypatch, workers):
    monkeypatch.setenv("KINJECT_DEMO_WORKERS", workers)
    assert run_parallel(divmod, [(7, 2), (9, 4), (20, 6)]) == [(3, 1), (2, 1), (3, 2)]
    with pytest.raises(ZeroDivisionError):
        run_parallel(divmod, [(4, 2), (1, 0)])


def _fake_stages(calls: list[str]):
    from kinject.recipes.engine import Stage

    def make(name):
        return lambda ctx, out: calls.append(name)

    spec = [("world", 10, "main"), ("ppr", 40, "side"), ("expert", 50, "main"), ("grip", 80, "side"),
            ("eval", 100, "main")]
    return [Stage(n, make(n), n, o, lane) for n, o, lane in spec]


class _LaneThatDidNothing:
    """Stands in for the background process only to check the scheduling; the process itself is
    exercised for real below."""
    started: list[list[str]] = []

    def __init__(self, out, quick, names, run_id=""):
        _LaneThatDidNothing.started.append(names)
        self.names, self.wall_s, self.cpu_s, self.waited_s = names, 0.0, 0.0, 0.0
        self.proc = type("P", (), {"returncode": 0})()

    def running(self):
        return False

    def wait(self):
        pass

    def stop(self):
        pass


@pytest.fixture
def fake_demo(monkeypatch):
    """kinject.recipes.engine with the fake stages above, the side lane on, and the list of stage calls."""
    import kinject.recipes.engine as demo

    calls: list[str] = []
    monkeypatch.setattr(demo, "registered_stages", lambda: _fake_stages(calls))
    monkeypatch.setattr(demo, "SideLane", _LaneThatDidNothing)
    monkeypatch.setenv("KINJECT_DEMO_SIDE_LANE", "1")
    _LaneThatDidNothing.started = []
    return demo, calls


def test_side_stages_are_deferred_behind_the_main_lane_and_rerun_in_process(fake_demo, monkeypatch, tmp_path):
    demo, calls = fake_demo
    demo.run_demo(tmp_path)
    assert _LaneThatDidNothing.started == [["world", "ppr", "grip"]]
    assert calls == ["world", "expert", "ppr", "grip", "eval"]  # side stages before the first later main stage

    calls.clear()
    monkeypatch.setenv("KINJECT_DEMO_SIDE_LANE", "0")
    demo.run_demo(tmp_path)
    assert calls == ["world", "ppr", "expert", "grip", "eval"]  # plain order
    assert len(_LaneThatDidNothing.started) == 1


def test_only_side_stages_run_in_process_without_a_lane(fake_demo, tmp_path):
    demo, calls = fake_demo
    demo.run_demo(tmp_path, only=["ppr", "grip"])
    assert calls == ["ppr", "grip"] and _LaneThatDidNothing.started == []


def test_the_background_lane_is_a_real_demo_process_with_its_own_log(tmp_path):
    from kinject.recipes.engine import SideLane, stage

    with pytest.raises(ValueError, match="lane must be"):
        stage("x", 1, lane="sideways")
    lane = SideLane(tmp_path, True, ["no-such-stage"])  # selects nothing: the process starts and exits 0
    lane.wait()
    assert lane.proc.returncode == 0
    log = (tmp_path / "side-lane.log").read_text()
    assert f"outputs under {tmp_path}" in log and f"{tmp_path / 'timings.json'}" in log


# ------------------------------------------------------------------ cores: never more busy processes
def test_job_slots_leave_the_side_lanes_core_alone():
    from kinject.recipes.engine import job_slots

    assert job_slots(2, 2, side_lane_busy=True) == 1
    assert job_slots(2, 2, side_lane_busy=False) == 2
    assert job_slots(2, 4, side_lane_busy=True) == 2  # never more than the pool's workers
    assert job_slots(2, 1, side_lane_busy=True) == 1  # always progress


def _interval(path: str, secs: float) -> None:
    """A job that records when it ran (module level: pickled to a spawned worker)."""
    import time as t

    a = t.time()
    t.sleep(secs)
    with open(path, "a") as f:
        f.write(f"{a} {t.time()}\n")


class _BusyLane:
    def running(self):
        return True


def test_jobs_run_one_at_a_time_while_the_side_lane_holds_a_core(monkeypatch, tmp_path):
    import kinject.recipes.engine as demo

    monkeypatch.setenv("KINJECT_DEMO_WORKERS", "2")
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(demo, "_side_lane", _BusyLane())
    log = tmp_path / "intervals"
    demo.run_parallel(_interval, [(str(log), 0.4), (str(log), 0.4), (str(log), 0.4)])
    spans = sorted(tuple(map(float, ln.split())) for ln in log.read_text().splitlines())
    assert len(spans) == 3
    assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:])), spans  # no two jobs overlapped


def test_the_lane_is_seen_finished_without_being_reaped(tmp_path):
    """`running` must not reap the lane (its CPU time would land in the stage that polled)."""
    import subprocess
    import sys
    import time

    from kinject.recipes.engine import SideLane, children_cpu_s

    lane = SideLane.__new__(SideLane)
    lane.t0, lane.log, lane.names = time.perf_counter(), tmp_path / "log", []
    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    lane.proc = subprocess.Popen([sys.executable, "-c", code])
    while lane.running():
        time.sleep(0.05)
    assert lane.proc.returncode is None  # exited, not yet reaped
    before = children_cpu_s()
    lane.wait()
    assert lane.proc.returncode == 0 and lane.cpu_s >= 0.25 and children_cpu_s() - before >= 0.25


# ------------------------------------------------------------------ timings.json
def _burn(ctx, out):
    import time

    t = time.process_time()
    while time.process_time() - t < 0.2:
        pass


def _child(ctx, out):
    import subprocess
    import sys

    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    subprocess.run([sys.executable, "-c", code], check=True)


def _fails(ctx, out):
    raise RuntimeError("stage failed")


def test_timings_record_wall_own_and_child_cpu_and_merge_resumed_runs(monkeypatch, tmp_path):
    import json

    import kinject.recipes.engine as demo
    from kinject.recipes.engine import Stage

    stages = [Stage("burn", _burn, "", 10), Stage("child", _child, "", 20)]
    monkeypatch.setattr(demo, "registered_stages", lambda: stages)
    monkeypatch.setenv("KINJECT_DEMO_SIDE_LANE", "0")
    monkeypatch.delenv(demo.RUN_ID_ENV, raising=False)
    demo.run_demo(tmp_path)
    data = json.loads((tmp_path / "timings.json").read_text())
    burn, child = data["stages"]["burn"], data["stages"]["child"]
    assert burn["attempts"][0]["self_cpu_s"] >= 0.15
    assert burn["wall_s"] >= burn["attempts"][0]["self_cpu_s"] - 0.05 and burn["ok"] is True
    assert child["attempts"][0]["children_cpu_s"] >= 0.25 and child["cpu_s"] >= 0.25
    (run1,) = data["runs"]
    assert data["runs"][run1]["wall_s"] >= burn["wall_s"] + child["wall_s"] - 0.01
    assert data["runs"][run1]["cores"] and data["runs"][run1]["side_lane"] is False

    stages.append(Stage("fails", _fails, "", 30))  # a resumed run: attempts add up, failures recorded
    with pytest.raises(RuntimeError):
        demo.run_demo(tmp_path)
    data = json.loads((tmp_path / "timings.json").read_text())
    assert len(data["runs"]) == 2 and len(data["stages"]["burn"]["attempts"]) == 2
    run2 = next(r for r in data["runs"] if r != run1)
    assert data["stages"]["burn"]["run"] == run2 and data["stages"]["fails"]["ok"] is False
    assert data["runs"][run2]["wall_s"] > 0
    assert not list(tmp_path.glob("timings.json.*"))  # atomic writes leave no temporary file


def test_side_lane_attempts_and_the_in_process_pass_add_up_in_one_run(tmp_path):
    from kinject.recipes.engine import Stage, StageTimings

    st = Stage("grip", _burn, "", 80, "side")
    StageTimings(tmp_path, "r1", "side lane").stage(st, 10.0, 9.0, 1.0, True)
    main = StageTimings(tmp_path, "r1")
    main.stage(st, 0.5, 0.25, 0.0, True)
    e = main.read()["stages"]["grip"]
    assert (e["wall_s"], e["cpu_s"], e["lane"]) == (10.5, 10.25, "side")
    assert [a["process"] for a in e["attempts"]] == ["side lane", "main"]
