"""The SparkSession a night runs on: its scratch files under ``var/``, shuffle encrypted.

Personal data (names, ID numbers, addresses) passes through Spark's shuffle and spill files,
so they are encrypted (``spark.io.encryption.enabled``) and kept under ``<var>/spark/``, which
is its owner's alone like the rest of ``var/``; so is the SQL warehouse folder.

>>> spark = session(Path("var"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from pyspark.sql import SparkSession

from etl.config import spark_settings
from store.layout import spark_dir

__all__ = ["MASTER_ENV", "TASKS_PER_CORE", "SparkStopped", "guarded", "session", "spark_dir"]

MASTER_ENV = "GOVMDM_SPARK_MASTER"
"""Environment variable naming the Spark master (``yarn``, ``k8s://…``, ``local[4]``). Without
it a night started by ``spark-submit`` uses the master it was submitted to, and any other
night a ``local[2]`` Spark in this process."""
_LOCAL = "local[2]"
_JAVA_OPTIONS = "spark.driver.extraJavaOptions"

_EXIT_WAIT_S = 30
"""How long a driver JVM that no longer answers is given to end, for its exit status."""

OUT_OF_MEMORY_EXIT = 3
"""The exit status of a JVM that ``-XX:+ExitOnOutOfMemoryError`` stopped."""
_MEMORY_FIX = (
    "raise spark.driver.memory under spark: in config/city.yaml (e.g. spark.driver.memory: 4g; "
    "on a cluster, spark.executor.memory too), then run the stage again"
)

TASKS_PER_CORE = 4
"""Shuffle partitions per core, and the tasks per core of the steps that run a Python kernel:
as many tasks as cores would leave a core idle while the slowest finishes, and a core idle
is time more cores do not shorten."""


def session(
    var_dir: Path, master: str | None = None, conf: Mapping[str, str] | None = None
) -> SparkSession:
    """The running SparkSession, or a new one writing only under ``<var>/spark/``.

    ``master`` (default: ``$GOVMDM_SPARK_MASTER``, else ``local[2]`` unless started by
    ``spark-submit``) and ``conf`` (Spark settings, ``spark:`` of city.yaml) are used only when
    no session is running yet: settings such as ``spark.driver.memory`` take effect only when
    the session starts its JVM (under ``spark-submit`` they come on its command line).
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    root = spark_dir(var_dir).resolve()
    for sub in ("tmp", "warehouse"):
        (root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    builder = (
        SparkSession.builder.appName("govmdm")
        .config("spark.local.dir", str(root / "tmp"))
        .config("spark.sql.warehouse.dir", str(root / "warehouse"))
        .config("spark.io.encryption.enabled", "true")  # shuffle and spill hold personal data
        # pandas frames the driver hands over (random pairs, edges, clustering rows) go to the
        # JVM as Arrow batches, not pickled row by row while every executor waits
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
    )
    conf = spark_settings(conf or {})  # a JVM out of memory exits: the night fails
    java = f"-Djava.io.tmpdir={root / 'tmp'} -Dderby.system.home={root / 'warehouse'}"
    own_java = conf.pop(_JAVA_OPTIONS, "")  # the city's JVM options come after govmdm's
    builder = builder.config(_JAVA_OPTIONS, f"{java} {own_java}".strip())
    master = master or os.environ.get(MASTER_ENV)
    if master is None and "PYSPARK_GATEWAY_PORT" not in os.environ:  # not inside spark-submit
        master = _LOCAL
    if master is not None:
        builder = builder.master(master)
    if master is not None and master.startswith("local"):
        # local workers run this interpreter, whose environment holds govmdm and its kernels
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        for key, value in _shuffle(_cores(master)).items():
            builder = builder.config(key, value)
    for key, value in conf.items():  # the city's settings over govmdm's
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if master is None:
        # submitted without a master of ours (spark-submit --master ...): the cores are those
        # of the context spark-submit started; what the city or spark-submit set stays
        given = spark.sparkContext.getConf()
        for key, value in _shuffle(spark.sparkContext.defaultParallelism).items():
            if not given.contains(key):
                spark.conf.set(key, value)
    spark.sparkContext.setLogLevel("ERROR")
    logging.getLogger("py4j").setLevel(logging.WARNING)  # not every gateway connection
    return spark


def _shuffle(cores: int) -> dict[str, str]:
    """Shuffle settings for ``cores``: :data:`TASKS_PER_CORE` partitions a core, and as many
    kept by adaptive execution.

    Spark's 200 shuffle partitions are for clusters: on one machine each round of the joins
    would start 200 tasks for a few cores. Adaptive execution merges small partitions, by
    default down to one a core (``parallelismFirst``, the floor being the default parallelism)
    or to 1 MB each (``minPartitionSize``); but a shuffle's bytes do not measure its Python
    work (the pairs compared are a few bytes each), so one skewed partition then keeps a core
    idle. Its floor is set to the partitions asked for; it still merges partitions far
    smaller than their share, and those of a city's larger ``spark.sql.shuffle.partitions``.
    """
    partitions = str(TASKS_PER_CORE * cores)
    return {
        "spark.sql.shuffle.partitions": partitions,
        "spark.sql.adaptive.coalescePartitions.minPartitionNum": partitions,
        "spark.sql.adaptive.coalescePartitions.minPartitionSize": "1b",
    }


def _cores(master: str) -> int:
    """The cores a ``local``, ``local[N]`` or ``local[*]`` master runs on."""
    inside = master.partition("[")[2].partition("]")[0].split(",")[0]
    return int(inside) if inside.isdigit() else (os.cpu_count() or 1) if inside else 1


class SparkStopped(RuntimeError):
    """A step on Spark failed because a JVM ran out of memory, or the driver's JVM is gone."""


@contextlib.contextmanager
def guarded(spark: SparkSession, what: str | Callable[[], str]) -> Iterator[None]:
    """Run a step on ``spark``: when it fails because a JVM ran out of memory or the driver's
    JVM stopped, :class:`SparkStopped` names the step (``what``, or what it returns when the
    step failed) and the fix, with Spark's own error as its cause.

    Every JVM govmdm starts exits when out of memory (:data:`etl.config.SPARK_JVM_OPTIONS`):
    the driver's calls then fail, whatever they were (a refused connection, a broken pipe), and
    this says why.

    >>> with guarded(spark, "person: golden records"):  # doctest: +SKIP
    ...     table = frame.toArrow()
    """
    try:
        yield
    except SparkStopped:
        raise
    except Exception as exc:
        step = what() if callable(what) else what
        stopped = _stopped(spark, exc, step)
        if stopped is None:
            raise
        raise stopped from exc


def _stopped(spark: SparkSession, exc: Exception, step: str) -> SparkStopped | None:
    """The clear error for ``exc``, raised by ``step``, when a JVM ran out of memory or the
    driver's is gone; None when neither."""
    status = _driver_exit(spark)
    if status == OUT_OF_MEMORY_EXIT:
        return SparkStopped(
            f"{step}: Spark's driver JVM ran out of memory and stopped "
            f"(java.lang.OutOfMemoryError; exit status {status}). Fix: {_MEMORY_FIX}"
        )
    if status is not None:
        how = f"exit status {status}" if isinstance(status, int) else "it does not answer"
        return SparkStopped(
            f"{step}: Spark's driver JVM stopped ({how}), out of memory if its output says "
            f"'Terminating due to java.lang.OutOfMemoryError'. Fix: {_MEMORY_FIX}"
        )
    try:
        text = str(exc)
    except Exception:  # a Java error's text is fetched from the JVM
        text = ""
    if "OutOfMemoryError" in text:
        return SparkStopped(
            f"{step}: a Spark JVM ran out of memory (java.lang.OutOfMemoryError). "
            f"Fix: {_MEMORY_FIX}"
        )
    return None


def _driver_exit(spark: SparkSession) -> int | str | None:
    """How the driver's JVM ended: its exit status when this process started it (one that no
    longer answers is given :data:`_EXIT_WAIT_S` to end), "gone" when it does not answer and
    has no status here (it started this process: ``spark-submit``); None while it runs.
    After an out-of-memory exit, a Java exception's text cannot be fetched from it."""
    gateway = spark.sparkContext._gateway
    process = getattr(gateway, "proc", None)
    if process is not None and process.poll() is not None:
        status: int = process.poll()
        return status
    try:
        spark.sparkContext._jvm.java.lang.System.currentTimeMillis()  # type: ignore[union-attr]
    except Exception:  # no answer is the answer
        if process is None:
            return "gone"
        # a JVM that stopped answering is on its way out (it closes its sockets before its
        # process ends): its exit status says why
        try:
            exited: int = process.wait(timeout=_EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            return "gone"
        return exited
    return None
