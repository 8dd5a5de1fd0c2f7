"""Who may see what: the share policy of ``config/catalog.yaml`` and the database roles.

Each resource of the catalog — a golden table (``mdm_person``) or a department's table
(``gongan/t_rk_jbxx``) — is shared unconditionally (无条件共享), on a condition (有条件共享) or not
at all (不予共享). The same file names the three PostgreSQL roles govmdm grants to
(``govmdm_analyst``, ``govmdm_privileged``, ``govmdm_steward``), the k of the k-anonymous person
view and the time limits of analysts' statements.

>>> load_share_policy(city).for_resource("mdm_person").share_type
'conditional'
>>> login_sql("wang", "govmdm_analyst")
"CREATE ROLE wang LOGIN PASSWORD '…' IN ROLE govmdm_analyst"
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from etl.config import CityConfig, ConfigError, load_yaml_model
from store.tables import PUBLISHED_TABLES

Role = Literal["analyst", "privileged"]
ShareType = Literal["unconditional", "conditional", "not_shared"]

ANALYST_ROLE = "govmdm_analyst"
PRIVILEGED_ROLE = "govmdm_privileged"
STEWARD_ROLE = "govmdm_steward"
_ROLE_NAME = r"^[a-z_][a-z0-9_]{0,62}$"
ANALYST_URL_ENV = "GOVMDM_ANALYST_URL"
POLICY_FILE = "catalog.yaml"
DEFAULT_K = 5
FIND_PERSON_FUNCTION = "govmdm_find_person"
"""PostgreSQL: the function through which an analyst's login turns a person key into IDs."""
DECIDE_FUNCTION = "govmdm_review_decide"
"""PostgreSQL: the function through which a steward's login records a review decision."""


def ident(name: str) -> str:
    """A PostgreSQL identifier, quoted only when it must be."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


class DbRoles(BaseModel):
    """The PostgreSQL roles govmdm grants to, from ``roles:`` in ``config/catalog.yaml``.

    Roles are cluster-wide: warehouses that share a server and must not share analysts name
    their roles apart. A login is given one of them by a DBA (``GRANT govmdm_analyst TO wang``).
    """

    model_config = ConfigDict(extra="forbid")
    analyst: str = Field(
        default=ANALYST_ROLE, pattern=_ROLE_NAME, description="reads the masked views"
    )
    privileged: str = Field(
        default=PRIVILEGED_ROLE, pattern=_ROLE_NAME, description="also reads personal data in clear"
    )
    steward: str = Field(
        default=STEWARD_ROLE, pattern=_ROLE_NAME, description="decides the review queue's pairs"
    )

    def of(self, role: Role) -> str:
        """The database role behind a govmdm role."""
        return self.analyst if role == "analyst" else self.privileged

    @property
    def names(self) -> list[str]:
        """All three, analyst first."""
        return [self.analyst, self.privileged, self.steward]


def _unless_there(statement: str) -> str:
    """``statement`` in a PL/pgSQL block where finding its role or membership there already is
    done. Another warehouse on the server may be installing the same roles at this moment: its
    role, not yet committed, is missing to the check before; creating it again then waits for
    that commit and fails as a duplicate, which means the role is there."""
    return f"BEGIN {statement}; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;"


def roles_sql(roles: DbRoles | None = None) -> list[str]:
    """The roles (cluster-wide, NOLOGIN, created once, each only if missing) and the privileged
    role's membership in the analyst role. Nobody else is made a member: the warehouse owner
    least of all, so that no analyst's login can become it."""
    r = roles or DbRoles()
    create = " ".join(
        f"IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{n}') THEN "
        f"{_unless_there(f'CREATE ROLE {ident(n)} NOLOGIN')} END IF;"
        for n in r.names
    )
    member = (
        f"IF NOT pg_has_role('{r.privileged}', '{r.analyst}', 'MEMBER') THEN "
        f"{_unless_there(f'GRANT {ident(r.analyst)} TO {ident(r.privileged)}')} END IF;"
    )
    return [f"DO $$ BEGIN {create} END $$", f"DO $$ BEGIN {member} END $$"]


def dba_sql(roles: DbRoles | None = None) -> str:
    """What a DBA runs once when the warehouse owner may not create roles."""
    r = roles or DbRoles()
    create = "; ".join(f"CREATE ROLE {ident(n)} NOLOGIN" for n in r.names)
    return f"{create}; GRANT {ident(r.analyst)} TO {ident(r.privileged)}"


def login_sql(login: str, role: str) -> str:
    """A person's own login in one govmdm role, as the README tells a DBA to create it.

    >>> login_sql("wang", "govmdm_analyst")
    "CREATE ROLE wang LOGIN PASSWORD '…' IN ROLE govmdm_analyst"
    """
    name = login if login.startswith("<") else ident(login)  # a placeholder stays readable
    return f"CREATE ROLE {name} LOGIN PASSWORD '…' IN ROLE {ident(role)}"


class SharePolicyEntry(BaseModel):
    """How one resource of the catalog is shared."""

    model_config = ConfigDict(extra="forbid")
    share_type: ShareType = Field(
        description="unconditional (无条件共享), conditional (有条件共享) or not_shared (不予共享)"
    )
    condition: str | None = Field(
        None, description="for conditional: on what condition, e.g. 仅限履行法定职责所需"
    )
    basis: str | None = Field(None, description="the legal or policy basis, e.g. 个人信息保护法")

    @model_validator(mode="after")
    def _conditional_says_how(self) -> SharePolicyEntry:
        if self.share_type == "conditional" and not (self.condition or "").strip():
            raise ValueError(
                "a conditional resource must state its condition: add `condition: <条件>`"
            )
        return self


class SharePolicy(BaseModel):
    """``config/catalog.yaml``: share types per resource, the database roles, the query limit."""

    model_config = ConfigDict(extra="forbid")
    default: SharePolicyEntry = Field(
        default_factory=lambda: SharePolicyEntry(
            share_type="conditional", condition="经数据共享平台申请审批后共享", basis=None
        ),
        description="for resources not listed under resources",
    )
    resources: dict[str, SharePolicyEntry] = Field(
        default_factory=dict,
        description="resource ID (mdm_person, or department/table) → its share policy",
    )
    k_anonymity: int = Field(
        default=DEFAULT_K,
        ge=2,
        le=1000,
        description="every combination of quasi-identifiers in v_person stands for at least "
        "this many persons (GB/T 37964 k-anonymity)",
    )
    roles: DbRoles = Field(
        default_factory=DbRoles, description="PostgreSQL role names (cluster-wide)"
    )
    query_timeout_s: float = Field(
        default=30, gt=0, le=3600, description="an analyst's statement is cancelled after this long"
    )
    export_timeout_s: float = Field(
        default=600, gt=0, le=86400, description="the same for each view read by govmdm export"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_privileged_users(cls, data: Any) -> Any:
        if isinstance(data, dict) and "privileged_users" in data:
            raise ValueError(
                "privileged_users is no longer read: a list anyone can edit, or point --config "
                "at, cannot grant anything. Fix: remove the key; on PostgreSQL a DBA grants the "
                "privileged role to a person's own login (GRANT govmdm_privileged TO li); on "
                "SQLite the warehouse file's owner is privileged"
            )
        return data

    def for_resource(self, resource_id: str) -> SharePolicyEntry:
        """The policy of one resource: its own, else the default."""
        return self.resources.get(resource_id, self.default)


def policy_path(city: CityConfig) -> Path:
    """``config/catalog.yaml`` beside the city's other configuration."""
    return city.config_dir / POLICY_FILE


def load_share_policy(city: CityConfig) -> SharePolicy:
    """The sharing policy; defaults (everything conditional, default role names) without a file.

    Resource IDs are checked against the city: a golden table (``mdm_person``) or a
    department's table (``gongan/t_rk_jbxx``).
    """
    path = policy_path(city)
    if not path.is_file():
        return SharePolicy()
    policy = load_yaml_model(path, SharePolicy)
    known = {t.name for t in PUBLISHED_TABLES} | {
        f"{d.code}/{t.name}" for d in city.departments for t in d.tables
    }
    problems = [
        f"{path}: resources.{key}: no such resource. Fix: {_resource_fix(key, known)}"
        for key in policy.resources
        if key not in known
    ]
    if problems:
        raise ConfigError(problems)
    return policy


def _resource_fix(key: str, known: set[str]) -> str:
    """How to fix an unknown resource ID: the configured department keeping that table, if
    one does (the catalogue names another city's department), else what IDs look like."""
    table = key.split("/", 1)[-1]
    keeping = sorted(k for k in known if "/" in k and k.split("/", 1)[1] == table)
    if keeping:
        return f"the table is {' or '.join(keeping)} in this city's departments: write that"
    return (
        "use a golden table (mdm_person, mdm_enterprise, …) or department/table, e.g. "
        f"{sorted(known - {key})[0]}, or remove the entry"
    )
