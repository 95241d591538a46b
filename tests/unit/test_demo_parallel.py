"""`kinject.demo.run_parallel`: per-domain demo work in worker processes, order and errors kept."""

from __future__ import annotations

import pytest

from kinject.demo import demo_workers, run_parallel


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
    from kinject.demo import Stage

    def make(name):
        return lambda ctx, out: calls.append(name)

    spec = [("world", 10, "main"), ("ppr", 40, "side"), ("expert", 50, "main"), ("grip", 80, "side"),
            ("eval", 100, "main")]
    return [Stage(n, make(n), n, o, lane) for n, o, lane in spec]


class _LaneThatDidNothing:
    """Stands in for the background process only to check the scheduling; the process itself is
    exercised for real below."""
    started: list[list[str]] = []

    def __init__(self, out, quick, names):
        _LaneThatDidNothing.started.append(names)

    def wait(self):
        pass

    def stop(self):
        pass


@pytest.fixture
def fake_demo(monkeypatch):
    """kinject.demo with the fake stages above, the side lane on, and the list of stage calls."""
    import kinject.demo as demo

    calls: list[str] = []
    monkeypatch.setattr(demo, "discover_stages", lambda: _fake_stages(calls))
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
    from kinject.demo import SideLane, stage

    with pytest.raises(ValueError, match="lane must be"):
        stage("x", 1, lane="sideways")
    lane = SideLane(tmp_path, True, ["no-such-stage"])  # selects nothing: the process starts and exits 0
    lane.wait()
    assert lane.proc.returncode == 0
    assert f"outputs under {tmp_path}" in (tmp_path / "side-lane.log").read_text()
