import time

import pytest

from tl_core.config import TrainConfig
from tl_core.jobs import JobBusy, JobManager

TINY = dict(backbone="mobilenet_v3_small", pretrained=False, strategy="full", image_size=48, batch_size=16, patience=0)


def test_one_job_per_device_stop_and_history(tmp_path):
    jobs = JobManager(tmp_path)
    job = jobs.start("demo", TrainConfig(**TINY, epochs=30))
    with pytest.raises(JobBusy, match="already running"):
        jobs.start("demo", TrainConfig(**TINY, epochs=1))
    deadline = time.time() + 120
    while not job.snapshot().history and time.time() < deadline:
        time.sleep(0.1)
    snap = job.snapshot()
    assert snap.status == "running" and snap.history[0].epoch == 1 and snap.run_dir
    assert jobs.stop()
    t = time.time()
    assert jobs.wait(job, 30) == "stopped" and time.time() - t < 10
    assert jobs.current() is job and not jobs.active()
    assert any("Stop requested" in line for line in job.snapshot().log)
    again = jobs.start("demo", TrainConfig(**TINY, epochs=1))
    assert jobs.wait(again, 120) == "finished"


def test_a_failing_job_reports_message_and_suggestion(tmp_path):
    jobs = JobManager(tmp_path)
    job = jobs.start(str(tmp_path / "missing"), TrainConfig(**TINY, epochs=1))
    assert jobs.wait(job, 30) == "failed"
    snap = job.snapshot()
    assert "does not exist" in snap.error and snap.suggestion
