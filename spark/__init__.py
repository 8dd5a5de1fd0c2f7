"""The Spark engine (``engine: spark``): the local engine's kernels run inside Apache Spark.

Nothing here reimplements a stage. Each stage hands Spark the same Python function the local
engine calls (``mapInArrow`` over batches), so both engines give the same rows, written where
the local engine writes them (standardization's by the executors themselves, as part files),
and every later stage reads them the same way.
Needs the optional extra ``govmdm[spark]`` (PySpark) and Java 17.
"""
