"""The city's configuration: the real config/ loads and matches the sample city's tables; broken
configs fail with the file, the key and a fix; connection names resolve from the environment."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from etl.config import (
    ENTERPRISE_FIELDS,
    FIELDS,
    PERSON_FIELDS,
    CityConfig,
    ConfigError,
    ConnectionNotConfigured,
    load_city_config,
    resolve_connection,
    save_settings_snapshot,
)
from etl.sample_city import departments as sample
from etl.sample_city import pools

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No connection variables leak in from the developer's shell; var/ is private per test."""
    for code in ("GONGAN", "RENSHE", "MINZHENG", "WEIJIAN", "SHICHANG", "SHUIWU"):
        monkeypatch.delenv(f"AIRFLOW_CONN_{code}", raising=False)
        monkeypatch.delenv(f"GOVMDM_CONN_{code}", raising=False)
    monkeypatch.setenv("GOVMDM_VAR", str(tmp_path / "var"))


@pytest.fixture
def city() -> CityConfig:
    return load_city_config(CONFIG)


# --- the real configuration ---------------------------------------------------------------------


def test_real_config_loads(city: CityConfig) -> None:
    assert city.name == "福州市"
    assert city.division_code == "350100"
    assert city.timezone == "Asia/Shanghai"
    assert city.root == ROOT
    assert sorted(d.code for d in city.departments) == sorted(d.code for d in sample.DEPARTMENTS)
    for dept in city.departments:
        assert dept.source_file == CONFIG / "departments" / f"{dept.code}.yaml"
        for entity in FIELDS:
            mapped = {f for t in dept.tables_for(entity) for f in t.field_columns}
            assert set(dept.authority_for.fields(entity)) <= mapped, dept.code


def test_authorities_are_one_source_per_field(city: CityConfig) -> None:
    expected = {
        **{("person", f): "gongan" for f in PERSON_FIELDS},
        ("person", "phone"): "weijian",
        ("person", "employer_uscc"): "renshe",
        **{("enterprise", f): "shichang" for f in ENTERPRISE_FIELDS},
        ("enterprise", "org_code"): "shuiwu",
    }
    for (entity, field), code in expected.items():
        authority = city.authority(entity, field)
        assert authority is not None and authority.code == code, (entity, field)


@pytest.mark.parametrize("dept", sample.DEPARTMENTS, ids=lambda d: d.code)
def test_config_maps_the_real_tables(city: CityConfig, dept: sample.Department) -> None:
    (table,) = city.department(dept.code).tables
    assert city.department(dept.code).name == dept.title
    assert table.name == dept.table_name
    assert table.entity == dept.entity
    assert table.primary_key == [dept.key]
    assert table.change_column == dept.change_column()
    assert set(table.source_columns) == {c.name for c in dept.table.columns}
    # the change column is configured the way stamp_value writes it
    when = dt.datetime(2024, 5, 1, 13, 45, 9)
    stamp = dept.stamp_value(when)
    if table.change_kind == "string":
        assert table.change_format is not None
        assert dt.datetime.strptime(stamp, table.change_format) == when
    elif table.change_kind == "epoch_seconds":
        assert isinstance(stamp, int)
    else:
        assert isinstance(stamp, dt.datetime)


def test_gongan_code_tables(city: CityConfig) -> None:
    columns = city.department("gongan").tables[0].columns
    assert columns["xb"].codes == {"1": "男", "2": "女"}
    assert columns["hjzt"].codes == {"10": "正常", "20": "死亡"}
    assert columns["csrq"].format == "%Y%m%d"
    ethnicity = columns["mz"].codes or {}
    assert {code for code, _, _ in pools.ETHNICITIES} <= set(ethnicity)
    assert ethnicity["01"] == "汉族" and ethnicity["22"] == "畲族"  # GB/T 3304


def test_snapshot_round_trips_without_urls(
    city: CityConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_GONGAN", "postgres://reader:s3cret@db:5432/rk")
    resolve_connection(city, city.department("gongan"))
    path = save_settings_snapshot(city, tmp_path / "run" / "settings.json")
    text = path.read_text(encoding="utf-8")
    assert "s3cret" not in text and "postgres" not in text
    assert "市公安局" in text  # readable Chinese, not \\u escapes
    assert CityConfig.model_validate(json.loads(text)).model_dump() == city.model_dump()


def test_library_does_not_import_airflow() -> None:
    code = (
        "import sys, etl.config; sys.exit(any(m.split('.')[0] == 'airflow' for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


# --- broken configurations ------------------------------------------------------------------------


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")


def _gongan(old: str, new: str) -> Callable[[Path], None]:
    return lambda cfg: _edit(cfg / "departments" / "gongan.yaml", old, new)


def _empty_departments(cfg: Path) -> None:
    for f in (cfg / "departments").glob("*.yaml"):
        f.unlink()


BROKEN: list[tuple[str, Callable[[Path], None], list[str]]] = [
    (
        "unknown canonical field",
        _gongan("sfzh: id_number", "sfzh: id_numbr"),
        ["gongan.yaml: tables[0].columns.sfzh", "'id_numbr'", "Fix: did you mean `id_number`?"],
    ),
    (
        "field of the other entity",
        _gongan("hjdz: address", "hjdz: address\n      zjhm: uscc"),
        ["gongan.yaml: tables[0].columns.zjhm", "it is an enterprise field", "Fix:"],
    ),
    (
        "unknown key",
        _gongan("primary_key: [rkbh]", "primry_key: [rkbh]"),
        ["gongan.yaml: tables[0].primry_key", "unknown key", "Fix: did you mean `primary_key`?"],
    ),
    (
        "URL in connection",
        _gongan("connection: gongan", "connection: postgres://reader:hunter2@db:5432/rk"),
        [
            "gongan.yaml: connection (line 8)",
            "never put URLs or secrets in config",
            "Fix:",
            "AIRFLOW_CONN_GONGAN",
            "GOVMDM_CONN_GONGAN",
        ],
    ),
    (
        "password in connection",
        _gongan("connection: gongan", "connection: gongan_password_hunter2"),
        ["gongan.yaml: connection", "never put URLs or secrets in config", "Fix:"],
    ),
    (
        "two authorities for one attribute",
        lambda cfg: _edit(
            cfg / "departments" / "shuiwu.yaml",
            "enterprise: [org_code]",
            "enterprise: [org_code, name]",
        ),
        [
            "shuiwu.yaml: authority_for.enterprise[1]",
            "two authorities",
            "shichang (",
            "shichang.yaml",
            "shuiwu (",
            "Fix: 一数一源",
        ],
    ),
    (
        "YAML syntax error",
        _gongan("    entity: person\n", "    entity: person\n    primary_key: [rkbh\n"),
        ["gongan.yaml: line 16", "YAML syntax error", "Fix:"],
    ),
    (
        "duplicate YAML key",
        _gongan("      xm: name\n", "      xm: name\n      xm: address\n"),
        ["gongan.yaml: line 21", "duplicate key 'xm' (first at line 20)", "Fix:"],
    ),
    (
        "empty departments dir",
        _empty_departments,
        ["departments: (directory): no department files", "Fix: add one file per department"],
    ),
    (
        "bad e-mail",
        _gongan("email: lin.zhiqiang@example.gov.cn", "email: lin.zhiqiang.example.gov.cn"),
        ["gongan.yaml: contact.email (line 7)", "not a valid e-mail address", "Fix:"],
    ),
    (
        "authority attribute not mapped",
        _gongan("      hjdz: address\n", ""),
        ["gongan.yaml: authority_for.person[4]", "`address`", "Fix: map a column of t_rk_jbxx"],
    ),
    (
        "canonical field mapped twice",
        _gongan("hjdz: address", "hjdz: address\n      xzdz: address"),
        ["gongan.yaml: tables[0].columns.xzdz", "already mapped from column 'hjdz'", "Fix:"],
    ),
    (
        "unquoted code keeps no leading zero",
        _gongan('"01": 汉族', "01: 汉族"),
        ["gongan.yaml: tables[0].columns.mz.codes.1", "read by YAML as a number", "Fix: quote"],
    ),
    (
        "string change column without format",
        _gongan('    change_format: "%Y%m%d%H%M%S"\n', ""),
        ["gongan.yaml: tables[0].change_format", "needs its format", "Fix: add `change_format:`"],
    ),
    (
        "unknown date format",
        _gongan('format: "%Y%m%d"', "format: yyyymmdd"),
        ["gongan.yaml: tables[0].columns.csrq.format", "no % directives", "Fix:"],
    ),
    (
        "bad update frequency",
        _gongan("update_frequency: daily", "update_frequency: nightly"),
        ["gongan.yaml: update_frequency", "'nightly' is not allowed", "Fix: use one of"],
    ),
    (
        "file name does not match code",
        lambda cfg: (cfg / "departments" / "gongan.yaml").rename(cfg / "departments" / "ga.yaml"),
        ["ga.yaml: code", "does not match the file name", "Fix: name the file gongan.yaml"],
    ),
    (
        "empty city file",
        lambda cfg: (cfg / "city.yaml").write_text("# nothing yet\n", encoding="utf-8"),
        ["city.yaml: (file): the file is empty", "Fix:"],
    ),
    (
        "no number of workers",
        lambda cfg: _edit(
            cfg / "city.yaml", "timezone: Asia/Shanghai", "timezone: Asia/Shanghai\nworkers: 0"
        ),
        ["city.yaml: workers", "0 is not a number of processes", "Fix: write a whole number"],
    ),
    (
        "workers in words",
        lambda cfg: _edit(
            cfg / "city.yaml", "timezone: Asia/Shanghai", "timezone: Asia/Shanghai\nworkers: two"
        ),
        ["city.yaml: workers", "'two' is not a number of processes", "Fix: write a whole number"],
    ),
    (
        "spark memory not as Spark writes it",
        lambda cfg: _append(cfg / "city.yaml", "spark:\n  spark.driver.memory: 8 GB\n"),
        [
            "city.yaml: spark.spark.driver.memory (line 10)",
            "'8 GB' is not a size Spark reads",
            "Fix: write a number and a unit without a space, e.g. 512m or 4g",
        ],
    ),
    (
        "spark key without spark.",
        lambda cfg: _append(cfg / "city.yaml", "spark:\n  driver.memory: 4g\n"),
        [
            "city.yaml: spark.driver.memory (line 10)",
            "'driver.memory' is not a Spark setting",
            "Fix: write Spark's own key, e.g. spark.driver.memory",
        ],
    ),
    (
        "spark setting govmdm keeps",
        lambda cfg: _append(cfg / "city.yaml", "spark:\n  spark.io.encryption.enabled: false\n"),
        [
            "city.yaml: spark.spark.io.encryption.enabled",
            "is govmdm's to set",
            "Fix: remove the line",
        ],
    ),
    (
        "spark value a list",
        lambda cfg: _append(cfg / "city.yaml", "spark:\n  spark.executor.cores: [2, 4]\n"),
        ["city.yaml: spark.spark.executor.cores", "a list is not a value", "Fix: write one value"],
    ),
    (
        "spark settings not a mapping",
        lambda cfg: _append(cfg / "city.yaml", "spark: 4g\n"),
        ["city.yaml: spark (line 9)", "text is not a mapping of Spark settings", "Fix:"],
    ),
    (
        "spark secret in city.yaml",
        lambda cfg: _append(
            cfg / "city.yaml", "spark:\n  spark.hadoop.fs.s3a.secret.key: hunter2\n"
        ),
        [
            "city.yaml: spark.spark.hadoop.fs.s3a.secret.key (line 10)",
            "a secret never goes in a configuration file",
            "Fix: give it to Spark in the Spark client's spark-defaults.conf",
        ],
    ),
    (
        "unquoted division code",
        lambda cfg: _edit(cfg / "city.yaml", 'division_code: "350100"', "division_code: 350100"),
        ["city.yaml: division_code (line 4)", "read by YAML as a number", "Fix: quote it"],
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN]
)
def test_broken_config_names_file_key_and_fix(
    tmp_path: Path, mutate: Callable[[Path], None], expected: list[str]
) -> None:
    cfg = tmp_path / "config"
    shutil.copytree(CONFIG, cfg)
    mutate(cfg)
    with pytest.raises(ConfigError) as caught:
        load_city_config(cfg)
    message = str(caught.value)
    for part in expected:
        assert part in message, f"{part!r} not in:\n{message}"
    for line in caught.value.problems:
        assert line.startswith(str(cfg)) and ". Fix: " in line, line
    assert "hunter2" not in message  # secrets are never echoed


def test_every_problem_of_every_file_is_listed(tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    shutil.copytree(CONFIG, cfg)
    _edit(cfg / "departments" / "gongan.yaml", "sfzh: id_number", "sfzh: id_numbr")
    _edit(cfg / "departments" / "renshe.yaml", "connection: renshe", "connection: mysql://x@y/z")
    _edit(cfg / "city.yaml", "timezone: Asia/Shanghai", "timezone: Asia/Fuzhou")
    with pytest.raises(ConfigError) as caught:
        load_city_config(cfg)
    problems = caught.value.problems
    assert len(problems) == 3, problems
    assert [Path(p.split(":")[0]).name for p in problems] == [
        "city.yaml",
        "gongan.yaml",
        "renshe.yaml",
    ]
    assert str(caught.value) == "\n".join(problems)


def test_missing_config_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nowhere: \(directory\): not found\. Fix: "):
        load_city_config(tmp_path / "nowhere")


def test_missing_city_file(tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    shutil.copytree(CONFIG, cfg)
    (cfg / "city.yaml").unlink()
    with pytest.raises(ConfigError, match=r"city\.yaml: \(file\): not found\. Fix: create it"):
        load_city_config(cfg)


# --- connections ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("airflow", "url"),
    [
        (
            "postgres://reader:p%40ss@db.example.gov.cn:5432/rk",
            "postgresql+psycopg://reader:p%40ss@db.example.gov.cn:5432/rk",
        ),
        (
            "postgresql://reader:pw@db:5432/rk?sslmode=require",
            "postgresql+psycopg://reader:pw@db:5432/rk?sslmode=require",
        ),
        ("mysql://reader:pw@db:3306/rk", "mysql+pymysql://reader:pw@db:3306/rk?charset=utf8mb4"),
        ("sqlite:////srv/gongan.sqlite", "sqlite:////srv/gongan.sqlite"),
        ("sqlite://%2Fsrv%2Fgongan.sqlite", "sqlite:////srv/gongan.sqlite"),
        (
            json.dumps(
                {
                    "conn_type": "postgres",
                    "host": "db",
                    "login": "reader",
                    "password": "p@ss",
                    "port": 5432,
                    "schema": "rk",
                }
            ),
            "postgresql+psycopg://reader:p%40ss@db:5432/rk",
        ),
        (
            json.dumps(
                {"conn_type": "mysql", "host": "db", "login": "r", "password": "pw", "schema": "rk"}
            ),
            "mysql+pymysql://r:pw@db/rk?charset=utf8mb4",
        ),
    ],
)
def test_airflow_connection_becomes_sqlalchemy_url(
    city: CityConfig, monkeypatch: pytest.MonkeyPatch, airflow: str, url: str
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_GONGAN", airflow)
    assert resolve_connection(city, city.department("gongan")) == url


def test_connection_precedence(city: CityConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    gongan = city.department("gongan")
    default = city.var_dir / "city" / "sources" / "gongan.sqlite"
    default.parent.mkdir(parents=True)
    default.touch()
    assert resolve_connection(city, gongan) == f"sqlite:///{default}"
    monkeypatch.setenv("GOVMDM_CONN_GONGAN", "postgresql+psycopg://me@localhost/rk")
    assert resolve_connection(city, gongan) == "postgresql+psycopg://me@localhost/rk"
    monkeypatch.setenv("AIRFLOW_CONN_GONGAN", "mysql://reader:pw@db/rk")
    assert resolve_connection(city, gongan) == "mysql+pymysql://reader:pw@db/rk?charset=utf8mb4"


def test_embedded_default_under_govmdm_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    var = tmp_path / "elsewhere"
    monkeypatch.setenv("GOVMDM_VAR", str(var))
    city = load_city_config(CONFIG)
    assert city.var_dir == var
    (var / "city" / "sources").mkdir(parents=True)
    (var / "city" / "sources" / "shuiwu.sqlite").touch()
    url = resolve_connection(city, city.department("shuiwu"))
    assert url == f"sqlite:///{var}/city/sources/shuiwu.sqlite"


def test_unconfigured_connection_names_both_variables(city: CityConfig) -> None:
    with pytest.raises(ConnectionNotConfigured) as caught:
        resolve_connection(city, city.department("weijian"))
    message = str(caught.value)
    assert caught.value.department == "weijian" and caught.value.connection == "weijian"
    for part in ("weijian.yaml", "weijian", "AIRFLOW_CONN_WEIJIAN", "GOVMDM_CONN_WEIJIAN", "Fix:"):
        assert part in message
    assert isinstance(caught.value, ConfigError)


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("AIRFLOW_CONN_GONGAN", "oracle://reader:hunter2@db/rk", "'oracle' is not supported"),
        ("AIRFLOW_CONN_GONGAN", '{"conn_type": "postgres", "password": "hunter2"', "invalid JSON"),
        ("GOVMDM_CONN_GONGAN", "reader:hunter2 at db", "not a SQLAlchemy URL"),
    ],
)
def test_bad_connection_variable_is_named_not_echoed(
    city: CityConfig, monkeypatch: pytest.MonkeyPatch, var: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as caught:
        resolve_connection(city, city.department("gongan"))
    message = str(caught.value)
    assert var in message and expected in message and "Fix:" in message
    assert "hunter2" not in message
