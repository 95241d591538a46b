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
