"""Rules judged on a department table as a whole: ``freshness``, ``volume`` and ``delivery``
from the extraction ledger, ``consistency`` with the authority once the night is linked, and the
built-in rules every department table has (no mass deletion, no 乱码 or NUL; on person tables, no
guardian's ID number as the person's own).

See :mod:`quality.rules` for what each kind checks and why.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
import zoneinfo
from collections import Counter
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal, Self

import pandas as pd
import sqlalchemy as sa
from pydantic import Field

from etl.config import FIELDS, CityConfig, DepartmentConfig, TableConfig, parse_stamp
from quality.results import RuleResult
from quality.rule_base import (
    DIMENSION_HELP,
    Dimension,
    Loc,
    Placement,
    Problem,
    Rule,
    Stage,
    choose,
)
from quality.tonight import EXTRACTION_STATUS, UNPUBLISHED, Batch, Tonight, not_extracted
from store.tables import conflict_table, crosswalk_table

__all__ = [
    "DELETION_RULE",
    "ENCODING_RULE",
    "FRESHNESS_DAYS",
    "GUARDIAN_RULE",
    "Consistency",
    "Deletions",
    "Delivery",
    "Encoding",
    "Freshness",
    "GuardianIds",
    "Volume",
    "deletion_rules",
    "encoding_rules",
    "guardian_rules",
]

FRESHNESS_DAYS: Final[Mapping[str, int]] = {"daily": 1, "weekly": 7, "monthly": 31}
_BEIJING_EPOCH = dt.datetime(1970, 1, 1, 8)  # epoch change stamps are Beijing wall time
_FREQUENCY = {"daily": "每日", "weekly": "每周", "monthly": "每月"}
_MODE = {"full": "全量抽取", "incremental": "增量抽取"}


# --- rules on the ledger -----------------------------------------------------------------------


class _LedgerRule(Rule):
    """A rule on one department table's extraction, judged from the ledger."""

    judged_at: ClassVar[Stage] = "ledger"
    table_level: ClassVar[bool] = True


class Freshness(_LedgerRule):
    """The newest change stamp is at most ``threshold`` days old at the end of the night's day."""

    kind: Literal["freshness"]
    dimension: Dimension = Field(default="时效性", description=DIMENSION_HELP)

    def _bad_threshold(self, threshold: float) -> tuple[str, str] | None:
        return _not_positive(threshold, "days")

    def _threshold(self, dept: DepartmentConfig) -> float:
        return self.written_threshold or float(FRESHNESS_DAYS[dept.update_frequency])

    def judge(self, batch: Batch) -> RuleResult:
        night, entry, table = batch.night, batch.entry, batch.table
        assert table is not None and batch.department is not None
        if entry is None or entry["status"] != "ok":
            return self.not_run(night, f"{not_extracted(entry)}，无法判断数据时效")
        stamps = [_change_stamp(entry["watermark_after"], table, night.city.timezone)]
        frame = batch.frame
        if (
            frame is not None
            and "updated_at" in frame.columns
            and frame["updated_at"].notna().any()
        ):
            stamps.append(pd.Timestamp(frame["updated_at"].max()).to_pydatetime())
        newest = max((s for s in stamps if s is not None), default=None)
        frequency = _FREQUENCY[batch.department.update_frequency]
        promise = f"承诺{frequency}更新，允许 {self.threshold:g} 天"
        if newest is None:
            return self.passed(night, False, f"没有可用的变更时间（{promise}）")
        end_of_day = dt.datetime.combine(night.as_of + dt.timedelta(days=1), dt.time())
        age = (end_of_day - newest).total_seconds() / 86400
        message = (
            f"最新变更时间 {newest:%Y-%m-%d %H:%M}，距 {night.as_of} 日终 {age:.1f} 天（{promise}）"
        )
        return self.passed(night, age <= self.threshold, message)


def _change_stamp(text: str | None, table: TableConfig, timezone: str) -> dt.datetime | None:
    """A ledger watermark as naive local time, read the way the table's change column is."""
    if not text:
        return None
    try:
        if table.change_kind == "epoch_seconds":
            return _BEIJING_EPOCH + dt.timedelta(seconds=float(text))
        if table.change_kind == "string" and table.change_format:
            return parse_stamp(text, table.change_format, timezone)
        stamp = dt.datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        return None
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(zoneinfo.ZoneInfo(timezone)).replace(tzinfo=None)
    return stamp


def _not_positive(threshold: float, unit: str) -> tuple[str, str] | None:
    """A threshold that is a number of days or a change, not a share, must be positive."""
    return None if threshold > 0 else (f"{threshold} is not positive", f"give the {unit}")


class Volume(_LedgerRule):
    """Rows read tonight against the median of earlier nights of the same extraction mode."""

    can_block: ClassVar[bool] = True
    default_threshold: ClassVar[float] = 0.5

    kind: Literal["volume"]
    dimension: Dimension = Field(
        "完整性", description=DIMENSION_HELP
    )  # 记录完整性: rows gone missing from a delivery
    window: int = Field(7, ge=1, description="earlier nights compared, e.g. 7")

    def _bad_threshold(self, threshold: float) -> tuple[str, str] | None:
        return _not_positive(threshold, "largest relative change, e.g. 0.3")

    def judge(self, batch: Batch) -> RuleResult:
        night, entry = batch.night, batch.entry
        if entry is None or entry["status"] != "ok":
            return self.not_run(night, f"{not_extracted(entry)}，无法比较数据量")
        mode = _MODE[entry["mode"]]
        earlier = self._earlier(night, entry)
        if not earlier:
            return self.not_run(night, f"没有可比较的历史批次（此前没有{mode}的夜间）")
        tonight = int(entry["rows_read"])
        baseline = statistics.median(int(r["rows_read"]) for r in earlier)
        change = (
            abs(tonight - baseline) / baseline if baseline else (0.0 if tonight == 0 else math.inf)
        )
        message = (
            f"今晚{mode}读取 {tonight:,} 行，此前 {len(earlier)} 晚中位数 "
            f"{baseline:,.0f} 行，变化 {change:.0%}（允许不超过 {self.threshold:.0%}）"
        )
        return self.passed(night, change <= self.threshold, message)

    def _earlier(self, night: Tonight, entry: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Up to ``window`` earlier nights of the table read the same way, oldest first."""
        same = [
            r
            for r in night.ledger
            if r["department"] == entry["department"]
            and r["table_name"] == entry["table_name"]
            and r["status"] == "ok"
            and r["mode"] == entry["mode"]
            and r["run_id"] < night.run_id
        ]
        return sorted(same, key=lambda r: r["run_id"])[-self.window :]


class Delivery(_LedgerRule):
    """The table was extracted tonight (``extraction``) or kept its agreed schema (``schema``)."""

    kind: Literal["delivery"]
    dimension: Dimension = Field(default="可访问性", description=DIMENSION_HELP)
    check: Literal["extraction", "schema"] = Field(
        "extraction", description="`extraction` or `schema`"
    )

    def _bad_threshold(self, threshold: float) -> tuple[str, str] | None:
        return "a delivery rule passes or fails", "remove `threshold`"

    def judge(self, batch: Batch) -> RuleResult:
        night, entry = batch.night, batch.entry
        if self.check == "schema":
            if entry is None:
                return self.not_run(night, "今晚没有该表的抽取记录，表结构未能检查")
            if entry["status"] == "drift":
                return self.passed(night, False, f"表结构发生变更：{entry['message']}")
            if entry["status"] != "ok":
                why = EXTRACTION_STATUS.get(entry["status"], entry["status"])
                return self.not_run(night, f"{why}，表结构未能检查")
            return self.passed(night, True, "表结构与约定一致")
        if entry is None or entry["status"] != "ok":
            first = (entry["message"] or "").splitlines()[0] if entry and entry["message"] else ""
            message = f"{not_extracted(entry)}：{first}" if first else not_extracted(entry)
            return self.passed(night, False, message)
        return self.passed(night, True, f"今晚已抽取 {entry['rows_read']:,} 行（{entry['mode']}）")


# --- rules after linking -----------------------------------------------------------------------


class Consistency(Rule):
    """The department's linked rows hold no value contradicting the authority's."""

    judged_at: ClassVar[Stage] = "linked"

    kind: Literal["consistency"]
    # 相同数据一致性
    dimension: Dimension = Field(default="一致性", description=DIMENSION_HELP)
    attributes: tuple[str, ...] | None = Field(None, description="the attributes compared")

    def _fitted(
        self, table: TableConfig, dept: DepartmentConfig, problems: list[Problem], at: Loc
    ) -> Self:
        known = FIELDS[table.entity]
        for j, attribute in enumerate(self.attributes or ()):
            if attribute not in known:
                problems.append(
                    Problem(
                        (*at, "attributes", j),
                        f"'{attribute}' is not a {table.entity} attribute",
                        choose(attribute, known, f"{table.entity} fields"),
                    )
                )
        return self

    def judge(self, batch: Batch) -> RuleResult:
        night = batch.night
        if not night.published:
            return self.not_run(night, UNPUBLISHED)
        dept = str(self.table_department)
        x, c = crosswalk_table.c, conflict_table.c
        where = [c.run_id == night.run_id, c.department == dept, c.source_table == self.target]
        if self.attributes:
            where.append(c.attribute.in_(self.attributes))
        linked = sa.select(sa.func.count()).where(
            x.department == dept, x.source_table == self.target
        )
        with night.engine.connect() as conn:
            checked = int(conn.execute(linked).scalar_one())
            rows = conn.execute(sa.select(c.source_key, c.attribute).where(*where)).all()
        keys = sorted({r.source_key for r in rows})
        by_attribute = Counter(r.attribute for r in rows)
        ok = not checked or 1 - len(keys) / checked >= self.threshold
        detail = "，".join(f"{a} {n}" for a, n in by_attribute.most_common()) or "无"
        message = (
            f"{checked:,} 条已关联记录中 {len(keys):,} 条与权威部门不一致（按属性：{detail}）"
            f"；要求一致率不低于 {self.threshold:.0%}"
        )
        return self.result(night, "passed" if ok else "failed", checked, len(keys), keys, message)


# --- built-in rules ----------------------------------------------------------------------------


class Deletions(_LedgerRule):
    """Built in: a night deletes at most the table's ``max_deleted_share`` of its keys."""

    kind: Literal["delivery"] = "delivery"
    dimension: Dimension = Field(default="完整性", description=DIMENSION_HELP)

    def judge(self, batch: Batch) -> RuleResult:
        night, entry = batch.night, batch.entry
        if entry is None or entry["status"] != "ok":
            return self.not_run(night, f"{not_extracted(entry)}，无法判断删除量")
        gone, before = entry.get("rows_deleted"), entry.get("keys_before")
        if gone is None or not before:
            return self.passed(night, True, "今晚未核对删除（未做主键比对或首次抽取）")
        scale = "整表被清空" if gone == before else f"占 {gone / before:.1%}"
        said = f"今晚发现 {gone:,} 行在源表中被删除（此前共 {before:,} 行，{scale}"
        guard = entry.get("deletion_guard")
        if guard == "held":
            message = (
                f"{said}，超过允许的 {self.threshold:.0%}）。本批数据已暂扣，基础库保留上一晚的"
                "数据；数据工程团队已收到提醒，核实后方可放行"
            )
            return self.passed(night, False, message)
        if guard == "accepted":
            return self.passed(night, True, f"{said}），已由数据工程团队确认放行")
        return self.passed(night, True, f"{said}），未超过允许的 {self.threshold:.0%}）")


class Encoding(_LedgerRule):
    """Built in: no value of the table holds bytes that are not UTF-8 (乱码), nor a NUL
    character, which no database text column can hold. Judged on the batch's reason codes
    (``<column>:invalid_encoding``, whose rows were rejected; ``<column>:nul_character``, whose
    rows went on with the NUL replaced), but reported and scored as a delivery rule of the
    table."""

    kind: Literal["delivery"] = "delivery"
    dimension: Dimension = Field(default="规范性", description=DIMENSION_HELP)

    def judge(self, batch: Batch) -> RuleResult:
        night, frame = batch.night, batch.frame
        if batch.missing:
            return self.not_run(night, batch.missing)
        assert frame is not None
        found = {code: Counter[str]() for code in ("invalid_encoding", "nul_character")}
        keys = []
        for key, reasons in zip(frame["source_key"], frame["reasons"], strict=True):
            bad = False
            for c in reasons if reasons is not None else ():
                column, _, code = c.rpartition(":")
                if code in found:
                    found[code][column] += 1
                    bad = True
            if bad:
                keys.append(str(key))
        rows = f"检查 {len(frame):,} 行"
        if not keys:
            return self.result(night, "passed", len(frame), 0, (), f"{rows}，未发现乱码或空字符")
        said = [rows]
        for code, what, then in (
            ("invalid_encoding", "乱码", "这些行已拒收，其余数据照常处理"),
            ("nul_character", "空字符（NUL）", "已替换为空格（主键中以␀代替），这些行照常处理"),
        ):
            if columns := found[code]:
                where = "，".join(f"列 {c} {n} 行" for c, n in columns.most_common())
                said.append(f"{sum(columns.values()):,} 个值含{what}（{where}），{then}")
        return self.result(night, "failed", len(frame), len(keys), tuple(keys), "；".join(said))


class GuardianIds(_LedgerRule):
    """Built in: a person's row holds that person's own ID number, not a guardian's. Judged on
    the batch's reason codes (``id_number:id_of_another_person``: the number's birth date is a
    generation before the row's own, as when a hospital files a child under a parent's number);
    such numbers are kept as guardian IDs and never link the row as its own."""

    kind: Literal["consistency"] = "consistency"
    dimension: Dimension = Field(default="准确性", description=DIMENSION_HELP)

    def judge(self, batch: Batch) -> RuleResult:
        night, frame = batch.night, batch.frame
        if batch.missing:
            return self.not_run(night, batch.missing)
        assert frame is not None
        keys = [
            str(key)
            for key, reasons in zip(frame["source_key"], frame["reasons"], strict=True)
            if reasons is not None and GUARDIAN_REASON in reasons
        ]
        rows = f"检查 {len(frame):,} 行"
        if not keys:
            return self.result(
                night, "passed", len(frame), 0, (), f"{rows}，未发现登记他人身份证号码"
            )
        message = (
            f"{rows}，{len(keys):,} 行的身份证号码不是本人的：号码中的出生日期比本人早12年以上"
            "（多为未成年人登记了监护人的号码）。这些号码已不作为本人号码使用，按监护人号码保留"
        )
        return self.result(night, "failed", len(frame), len(keys), tuple(keys), message)


GUARDIAN_REASON: Final = "id_number:id_of_another_person"
"""The reason code standardization gives a person row holding someone else's ID number."""
GUARDIAN_RULE: Final = "{code}-GID{index:02d}"
"""The ID of the built-in rule on ID numbers that are not the row's own person's."""
ENCODING_RULE: Final = "{code}-ENC{index:02d}"
"""The ID of the built-in rule on values that are not valid UTF-8."""
DELETION_RULE: Final = "{code}-DEL{index:02d}"
"""The ID of the built-in mass-deletion rule of each department table."""


def _built_in(dept: DepartmentConfig, table: TableConfig, threshold: float) -> Placement:
    return Placement(
        department=dept.code,
        target=table.name,
        column=None,
        golden=False,
        table_department=dept.code,
        threshold=threshold,
    )


def encoding_rules(city: CityConfig) -> list[Rule]:
    """The built-in rule on every department table: no value may hold bytes that are not
    UTF-8 (乱码) or a NUL. Rows with bad bytes are rejected (``<column>:invalid_encoding``),
    rows with a NUL go on (``<column>:nul_character``), and the rest of the table goes on; the
    report names the columns."""
    return [
        Encoding(
            id=ENCODING_RULE.format(code=dept.code, index=i + 1),
            description=(
                "数据中不得含有无法识别的字符编码（乱码，不是有效的UTF-8）或空字符（NUL）；"
                "含乱码的行已拒收，空字符已替换后照常处理"
            ),
            fix=(
                "按报告所列的列和主键，在本部门系统中以UTF-8重新录入或转换这些值、"
                "删去其中的空字符后重新推送"
            ),
            severity="error",
        ).placed(_built_in(dept, table, 1.0))
        for dept in city.departments
        for i, table in enumerate(dept.tables)
    ]


def guardian_rules(city: CityConfig) -> list[Rule]:
    """The built-in rule on every person table that maps an ID number: the number must be the
    row's own person's (:class:`GuardianIds`); the report lists the rows holding a guardian's."""
    return [
        GuardianIds(
            id=GUARDIAN_RULE.format(code=dept.code, index=i + 1),
            description="身份证号码应为本人的号码，不得以监护人（如父母）的号码登记未成年人",
            fix=(
                "按报告所列主键核对这些记录：为本人补录其本人的身份证号码（未成年人可查户口簿），"
                "监护人的号码请填入监护人信息栏"
            ),
            severity="warning",
        ).placed(_built_in(dept, table, 1.0))
        for dept in city.departments
        for i, table in enumerate(dept.tables)
        if table.entity == "person" and any(m.field == "id_number" for m in table.columns.values())
    ]


def deletion_rules(city: CityConfig) -> list[Rule]:
    """The built-in rule on every department table: a night may not delete more than the
    table's ``max_deleted_share`` of its keys (nor empty it) unless data engineering accepted
    it (``govmdm accept-deletions``). Blocking: the batch is held back and the base libraries
    keep the department's rows; its report says why."""
    return [
        Deletions(
            id=DELETION_RULE.format(code=dept.code, index=i + 1),
            description=(
                f"一晚之内删除的记录不应超过全表的 {table.max_deleted_share:.0%}，"
                "也不应整表清空；超过时本批数据暂扣，基础库保留上一晚的数据，待核实"
            ),
            fix=(
                "如系误删或导出程序故障（例如前置表被清空后重新导入了一部分），请恢复"
                "数据后重新推送；如确为真实的批量删除，请书面告知数据工程团队，由其执行"
                "确认命令后放行"
            ),
            severity="blocking",
        ).placed(_built_in(dept, table, table.max_deleted_share))
        for dept in city.departments
        for i, table in enumerate(dept.tables)
    ]
