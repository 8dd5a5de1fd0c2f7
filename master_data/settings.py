"""Match settings (``config/matching.yaml``): blocking, thresholds, EM and survivorship rank.

>>> settings = load_match_settings("config")
>>> settings.person.thresholds.auto_link
0.99
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from etl.config import ConfigError, load_yaml_model
from master_data.blocking import DEFAULT_MAX_BLOCK, BlockingPass
from master_data.compare import features_for
from master_data.tf import TF_COLUMNS

Entity = Literal["person", "enterprise"]
ENTITIES: tuple[Entity, ...] = ("person", "enterprise")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Thresholds(_Strict):
    """Match-probability bands: at or above ``auto_link`` link; from ``review`` up, ask a
    reviewer; below, no link. Pairs under ``keep`` are not even stored for ``explain``."""

    auto_link: float = Field(0.99, gt=0, lt=1, description="link without review from here")
    review: float = Field(0.5, gt=0, lt=1, description="queue for review from here")
    keep: float = Field(0.01, gt=0, lt=1, description="store the pair's comparison from here")

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if not self.keep <= self.review < self.auto_link:
            raise ValueError(
                f"thresholds must satisfy keep ≤ review < auto_link, got keep={self.keep}, "
                f"review={self.review}, auto_link={self.auto_link}. Fix: e.g. keep: 0.01, "
                "review: 0.5, auto_link: 0.99"
            )
        return self


class TermFrequency(_Strict):
    """Term-frequency adjustment of one feature's exact level (:mod:`master_data.tf`)."""

    floor: float = Field(
        1e-5,
        gt=0,
        lt=1,
        description="the smallest u an exact agreement on one value gets (Splink's "
        "tf_minimum_u_value): a value seen once does not outweigh everything else",
    )


class CoincidenceSettings(_Strict):
    """Features that agree together by chance more often than their u multiplied say
    (:class:`master_data.model.Coincidence`); the weight is fitted when the model is trained."""

    agree: list[str] = Field(min_length=2, description="the features agreeing together")
    without: str | None = Field(
        None, description="only where this feature is missing (it would decide otherwise)"
    )


class EntityMatch(_Strict):
    """How one entity type is linked and which department's value survives."""

    blocking: list[BlockingPass] = Field(min_length=1, description="passes, unioned")
    max_block: int = Field(DEFAULT_MAX_BLOCK, ge=2, description="skip blocks bigger than this")
    thresholds: Thresholds = Field(default_factory=lambda: Thresholds.model_validate({}))
    survivorship_rank: list[str] = Field(
        default_factory=list,
        description="departments after the authority, most trusted first; left out, the "
        "departments keeping the entity's rows, those with more authority fields first",
    )
    authority_fresh_days: dict[str, int] = Field(
        default_factory=dict,
        description="attribute → days: an authority's copy not updated for longer (counted "
        "back from the night's date) no longer speaks as the authority, e.g. `{phone: 1095}`",
    )
    term_frequency: dict[str, TermFrequency] = Field(
        default_factory=dict,
        description="features whose exact agreement weighs by how common the value is",
    )

    correlated: list[list[str]] = Field(
        default_factory=list,
        description="groups of features that agree together among different people too "
        "(a family's address and phone): agreeing on all of a group counts as its strongest",
    )
    coincidence: CoincidenceSettings | None = Field(
        None,
        description="features whose agreement together is commoner among different people "
        "than independence says (namesakes born on one day): its weight is fitted on the "
        "candidate pairs by what the other features say",
    )

    def tf_floors(self) -> dict[str, float]:
        """Feature → floor of every term-frequency-adjusted feature."""
        return {f: t.floor for f, t in sorted(self.term_frequency.items())}


class EmSettings(_Strict):
    """Expectation-maximisation: when to stop."""

    max_iter: int = Field(100, ge=1)
    tol: float = Field(1e-6, gt=0)


class MatchSettings(_Strict):
    """The whole of ``config/matching.yaml``."""

    person: EntityMatch
    enterprise: EntityMatch
    em: EmSettings = Field(default_factory=lambda: EmSettings.model_validate({}))
    state_nights_kept: int = Field(
        7, ge=2, description="master state folders kept under var/master (the newest published)"
    )

    @model_validator(mode="after")
    def _tf_features(self) -> MatchSettings:
        for entity in ENTITIES:
            known = TF_COLUMNS[entity]
            for feature in self.entity(entity).term_frequency:
                if feature not in known:
                    raise ValueError(
                        f"{entity}.term_frequency: no feature {feature!r} can be adjusted. "
                        f"Fix: use one of {', '.join(sorted(known))}"
                    )
            labels = [f.label for f in features_for(entity)]
            for i, group in enumerate(self.entity(entity).correlated):
                wrong = [f for f in group if f not in labels]
                if wrong or len(set(group)) < 2:
                    raise ValueError(
                        f"{entity}.correlated[{i}]: {group} must name two or more of the "
                        f"comparison features {', '.join(labels)}"
                        + (f"; unknown: {', '.join(wrong)}" if wrong else "")
                    )
            together = self.entity(entity).coincidence
            if together is not None:
                named = [*together.agree, *([together.without] if together.without else [])]
                wrong = [f for f in named if f not in labels]
                if (
                    wrong
                    or len(set(together.agree)) < len(together.agree)
                    or (together.without in together.agree)
                ):
                    raise ValueError(
                        f"{entity}.coincidence: agree {together.agree} and without "
                        f"{together.without} must name different comparison features of "
                        f"{', '.join(labels)}" + (f"; unknown: {', '.join(wrong)}" if wrong else "")
                    )
        return self

    def entity(self, entity: str) -> EntityMatch:
        """The settings of ``person`` or ``enterprise``."""
        match: EntityMatch = getattr(self, entity)
        return match


def load_match_settings(
    config_dir: str | Path = "config", departments: set[str] | None = None
) -> MatchSettings:
    """Read ``<config_dir>/matching.yaml``; with ``departments``, also check that every
    department named in a survivorship rank exists."""
    path = Path(config_dir) / "matching.yaml"
    settings = load_yaml_model(path, MatchSettings)
    if departments is not None:
        problems = [
            f"{path}: {entity}.survivorship_rank[{i}]: no department '{code}'. Fix: use one of "
            f"{', '.join(sorted(departments))}"
            for entity in ENTITIES
            for i, code in enumerate(settings.entity(entity).survivorship_rank)
            if code not in departments
        ]
        if problems:
            raise ConfigError(problems)
    return settings
