"""The records a Spark link reads: tonight's canonical Parquet, read by the executors.

:func:`canonical_records` gives what :func:`master_data.records.tonight` gives, read by Spark
from the same files: the rows of every department that goes in, less those without a source
key, with their record ID (``department/source_table/source_key``). :func:`payload_columns`
names the columns blocking and comparing read, so that only those travel through Spark.

>>> rows = canonical_records(spark, files, "person").select(*payload_columns("person", match))
... # doctest: +SKIP
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from etl.standardize import SCHEMAS
from master_data.blocking import DERIVED_KEYS
from master_data.deterministic import CORROBORATION, HARD_KEY
from master_data.engine import RecordFiles
from master_data.records import META, RECORD
from master_data.settings import EntityMatch
from master_data.tf import TF_COLUMNS
from spark.compare import compared_columns

__all__ = ["RULE_COLUMNS", "canonical_records", "payload_columns", "position_columns"]

RULE_COLUMNS = {"person": ["id_number"], "enterprise": ["uscc", "reg_no", "org_code"]}
"""The columns the deterministic rules of each entity read."""


def payload_columns(entity: str, match: EntityMatch) -> list[str]:
    """The record ID, then the canonical columns that ``match``'s blocking keys (derived keys
    included), the comparisons, the rules and the hard key of ``entity`` read, with
    ``reasons`` (a value with a reject reason is no key), in schema order."""
    wanted = {"reasons", HARD_KEY[entity], *compared_columns(entity), *RULE_COLUMNS[entity]}
    for p in match.blocking:
        for key in p.keys:
            derived = DERIVED_KEYS.get(key)
            wanted |= set(derived.needs) if derived is not None else {key}
    return [RECORD, *[c for c in SCHEMAS[entity].names if c in wanted]]


def position_columns(entity: str, match: EntityMatch) -> list[str]:
    """:func:`payload_columns`, and those scoring reads besides (term frequencies' columns,
    the column that says a row is filed under another's ID number), in schema order: what
    a link scored by position maps in every Python worker."""
    need = CORROBORATION.get(entity)
    wanted = {
        *payload_columns(entity, match),
        *(c for columns in TF_COLUMNS[entity].values() for c in columns),
        *([need.filed_under] if need is not None else []),
    }
    return [RECORD, *[c for c in SCHEMAS[entity].names if c in wanted]]


def canonical_records(spark: SparkSession, files: RecordFiles, entity: str) -> DataFrame:
    """The rows of ``files`` (canonical Parquet of ``entity``) as
    :func:`master_data.records.tonight` keeps them: those with a source key, with their
    ``record_id`` first."""
    rows = spark.read.parquet(*[str(p) for p in files.paths])
    key = F.coalesce(F.col("source_key"), F.lit(""))
    keyed = F.length(F.regexp_replace(key, r"(?U)\s", "")) > 0  # = not only white space
    names = SCHEMAS[entity].names
    return rows.where(keyed).select(F.concat_ws("/", *META).alias(RECORD), *names)
