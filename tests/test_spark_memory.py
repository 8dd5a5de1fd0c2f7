"""A Spark JVM out of memory fails the stage with an error naming the step and the fix; it
does not leave the night waiting for ever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.spark]

EXIT_ON_OOM = "-XX:+ExitOnOutOfMemoryError"


def test_every_jvm_of_the_session_exits_when_out_of_memory(spark: Any) -> None:
    conf = spark.sparkContext.getConf()
    assert conf.get("spark.driver.extraJavaOptions").split()[-1] == EXIT_ON_OOM
    assert conf.get("spark.executor.extraJavaOptions").split()[-1] == EXIT_ON_OOM
    jvm = spark.sparkContext._jvm
    flags = jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments()
    assert EXIT_ON_OOM in list(flags)  # the running driver's, not only asked for


def test_the_citys_java_options_follow_govmdms() -> None:
    from etl.config import spark_settings

    got = spark_settings({"spark.driver.extraJavaOptions": "-XX:-ExitOnOutOfMemoryError"})
    assert got == {
        "spark.driver.extraJavaOptions": f"{EXIT_ON_OOM} -XX:-ExitOnOutOfMemoryError",
        "spark.executor.extraJavaOptions": EXIT_ON_OOM,
    }  # the last flag wins: a city can still say otherwise


_RUN_OUT = """
import sys
from pathlib import Path
from spark.session import guarded, session

spark = session(Path(sys.argv[1]), master="local[2]", conf={"spark.driver.memory": "512m"})
# 320 MB in eight tasks: the driver's JVM holds them and serializes each task with its slice,
# out of memory in the thread that launches tasks, not in this call
blobs = [bytes([i]) * 40_000_000 for i in range(8)]
with guarded(spark, "link person: golden records"):
    spark.sparkContext.parallelize(blobs, 8).map(len).collect()
print("collected")
"""


def test_a_driver_out_of_memory_fails_the_step_instead_of_hanging(tmp_path: Path) -> None:
    """Spark's driver dies of OutOfMemoryError in the thread that launches tasks: the job
    used to wait for that thread for ever, the night stalled with nothing flagged. Its JVM
    exits now, and the step fails with what ran out and what to raise."""
    env = {**os.environ}
    env.pop("PYSPARK_SUBMIT_ARGS", None)
    process = subprocess.Popen(
        [sys.executable, "-c", _RUN_OUT, str(tmp_path / "var")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its JVM with it, if it has to be stopped
    )
    try:
        out, err = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("the Spark job still waited 300 s after its driver ran out of memory")
    assert process.returncode != 0 and "collected" not in out
    last = err.strip().splitlines()[-1]
    assert last.startswith(
        "spark.session.SparkStopped: link person: golden records: Spark's driver JVM ran out "
        "of memory and stopped (java.lang.OutOfMemoryError; exit status 3)"
    ), err[-3000:]
    assert "Fix: raise spark.driver.memory under spark: in config/city.yaml" in last


def test_a_driver_that_stopped_answering_is_waited_for_its_exit_status() -> None:
    """A JVM dying of OutOfMemoryError closes its sockets before its process ends: the call
    that failed sees a refused connection while the process still runs. Its exit status (here
    a process that ends with 3 a moment after it stopped answering) still names the cause."""
    from types import SimpleNamespace

    from spark.session import OUT_OF_MEMORY_EXIT, _driver_exit

    def refused() -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    dying = subprocess.Popen([sys.executable, "-c", "import time, sys; time.sleep(1); sys.exit(3)"])
    jvm = SimpleNamespace(
        java=SimpleNamespace(
            lang=SimpleNamespace(System=SimpleNamespace(currentTimeMillis=refused))
        )
    )
    context = SimpleNamespace(_gateway=SimpleNamespace(proc=dying), _jvm=jvm)
    try:
        assert _driver_exit(SimpleNamespace(sparkContext=context)) == OUT_OF_MEMORY_EXIT  # type: ignore[arg-type]
    finally:
        dying.kill()
        dying.wait()
