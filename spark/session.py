"""The SparkSession a night runs on: its scratch files under ``var/``, shuffle encrypted.

Personal data (names, ID numbers, addresses) passes through Spark's shuffle and spill files,
so they are encrypted (``spark.io.encryption.enabled``) and kept under ``<var>/spark/``, which
is its owner's alone like the rest of ``var/``; so is the SQL warehouse folder.

>>> spark = session(Path("var"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from pyspark.sql import SparkSession

from store.layout import spark_dir

__all__ = ["MASTER_ENV", "session", "spark_dir"]

MASTER_ENV = "GOVMDM_SPARK_MASTER"
"""Environment variable naming the Spark master (``yarn``, ``k8s://…``, ``local[4]``). Without
it a night started by ``spark-submit`` uses the master it was submitted to, and any other
night a ``local[2]`` Spark in this process."""
_LOCAL = "local[2]"
_JAVA_OPTIONS = "spark.driver.extraJavaOptions"


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
    conf = dict(conf or {})
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
        # Spark's 200 shuffle partitions are for clusters: on one machine each round of the
        # joins would start 200 tasks for a few cores
        builder = builder.config("spark.sql.shuffle.partitions", str(2 * _cores(master)))
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if master is None and not spark.sparkContext.getConf().contains("spark.sql.shuffle.partitions"):
        # submitted without a master of ours (spark-submit --master ...): the cores are those
        # of the context spark-submit started
        cores = spark.sparkContext.defaultParallelism
        spark.conf.set("spark.sql.shuffle.partitions", str(2 * cores))
    spark.sparkContext.setLogLevel("ERROR")
    logging.getLogger("py4j").setLevel(logging.WARNING)  # not every gateway connection
    return spark


def _cores(master: str) -> int:
    """The cores a ``local``, ``local[N]`` or ``local[*]`` master runs on."""
    inside = master.partition("[")[2].partition("]")[0].split(",")[0]
    return int(inside) if inside.isdigit() else (os.cpu_count() or 1) if inside else 1
