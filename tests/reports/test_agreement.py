"""The agreement report's numbers, on data small enough to check by hand."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session

from moderation.core.errors import NotFound, ValidationFailed
from moderation.core.time import utcnow
from moderation.database import get_sessionmaker, session_scope
from moderation.decisions.models import DecisionSource
from moderation.reports.schemas import AgreementReport, VersionReport
from moderation.reports.service import ReportRequest, agreement_report
from moderation.tenants.service import create_tenant
from tests.reports.factories import add_item, add_shadow_outcome, make_policy, verdict


@pytest.fixture
def session(migrated: str) -> Iterator[Session]:
    with session_scope(get_sessionmaker(migrated)) as session:
        yield session


def new_tenant(session: Session) -> uuid.UUID:
    return create_tenant(session, f"reports-{uuid.uuid4().hex[:6]}", with_policy_templates=False).id


def only_section(report: AgreementReport) -> VersionReport:
    assert len(report.versions) == 1
    return report.versions[0]


# The policy of the hand-built fixture: min_confidence 0.8; hate blocks at 3 and restricts at 2;
# violence blocks at 3 and never restricts.
#
#  items  verdict                        automatic decision      reviewer's final decision
#  1-5    unsafe hate sev 3 conf .90     block                   4 block [hate], 1 allow
#  6-8    unsafe hate sev 2 conf .90     restrict                2 restrict [hate], 1 block [hate]
#  9-14   safe conf .95                  allow                   5 allow, 1 restrict [violence]
#  15-16  unsafe violence sev 2 conf .90 review (below_threshold) 1 restrict [violence], 1 allow
#  17-18  safe conf .60                  review (low_confidence) 2 allow
#  19-20  unsafe violence sev 4 conf .85 block                   2 block [violence]
FIXTURE: list[tuple[int, dict[str, Any], tuple[str, str | None], tuple[str, list[str]]]] = [
    (4, verdict("unsafe", 0.9, ("hate", 3, 0.9)), ("block", None), ("block", ["hate"])),
    (1, verdict("unsafe", 0.9, ("hate", 3, 0.9)), ("block", None), ("allow", [])),
    (2, verdict("unsafe", 0.9, ("hate", 2, 0.9)), ("restrict", None), ("restrict", ["hate"])),
    (1, verdict("unsafe", 0.9, ("hate", 2, 0.9)), ("restrict", None), ("block", ["hate"])),
    (5, verdict("safe", 0.95), ("allow", None), ("allow", [])),
    (1, verdict("safe", 0.95), ("allow", None), ("restrict", ["violence"])),
    (
        1,
        verdict("unsafe", 0.9, ("violence", 2, 0.9)),
        ("review", "below_threshold"),
        ("restrict", ["violence"]),
    ),
    (1, verdict("unsafe", 0.9, ("violence", 2, 0.9)), ("review", "below_threshold"), ("allow", [])),
    (2, verdict("safe", 0.6), ("review", "low_confidence"), ("allow", [])),
    (2, verdict("unsafe", 0.85, ("violence", 4, 0.85)), ("block", None), ("block", ["violence"])),
]


@pytest.fixture
def hand_built(session: Session) -> tuple[uuid.UUID, uuid.UUID]:
    tenant = new_tenant(session)
    version = make_policy(session, tenant, thresholds={"hate": (3, 2), "violence": (3, None)})
    latency = iter(range(100, 2100, 100))  # 100, 200, ..., 2000 ms
    for count, parsed, auto, human in FIXTURE:
        for _ in range(count):
            add_item(
                session,
                tenant,
                version,
                parsed=parsed,
                auto=auto,
                human=human,
                latency_ms=next(latency),
            )
    assert sum(count for count, *_ in FIXTURE) == 20
    return tenant, version


def test_hand_built_fixture_matches_the_arithmetic_on_paper(session, hand_built):
    tenant, _ = hand_built
    section = only_section(agreement_report(session, ReportRequest(tenant_id=tenant)))

    assert section.submissions == 20 and section.reviewed == 20 and section.pending == 0
    # Automatic: 16 of 20 (5+3+6+2); review: 4 of 20 (2 below_threshold + 2 low_confidence).
    assert (section.automatic_rate.numerator, section.automatic_rate.denominator) == (16, 20)
    assert section.review_rate.value == pytest.approx(0.2)
    assert {r.reason: r.items for r in section.review_reasons} == {
        "below_threshold": 2,
        "low_confidence": 2,
    }

    # Rows: automatic allow / restrict / block / review; columns: reviewer allow / restrict /
    # block.
    assert section.decisions.counts == [[5, 1, 0], [0, 2, 1], [1, 0, 6], [3, 1, 0]]

    # Agreement over the 16 automatic decisions: diagonal 5 + 2 + 6 = 13, so 13/16 = 0.8125.
    assert (section.agreement.numerator, section.agreement.denominator) == (13, 16)
    assert section.agreement.value == pytest.approx(0.8125)
    # Kappa on [[5,1,0],[0,2,1],[1,0,6]]: N = 16, row totals 6, 3, 7, column totals 6, 3, 7.
    #   p_o = 13/16 = 208/256
    #   p_e = (6*6 + 3*3 + 7*7) / 16^2 = 94/256
    #   kappa = (208 - 94) / (256 - 94) = 114/162 = 0.703703...
    assert section.kappa == pytest.approx(114 / 162)
    # Overturned (allowed <-> restricted/blocked): allow->restrict 1, block->allow 1: 2/16.
    assert (section.overturn_rate.numerator, section.overturn_rate.denominator) == (2, 16)

    # Flagging, verdict "unsafe" against reviewer restrict/block, over all 20:
    #   unsafe verdicts: items 1-8, 15-16, 19-20 = 12; reviewers enforced 4+3+1+2 = 10 -> TP 10,
    #   FP 2. Safe verdicts: 8; reviewers enforced 1 (item 14) -> FN 1, TN 7.
    #   precision = 10/12 = 0.8333, recall = 10/11 = 0.9091, F1 = 2*10/(2*10+2+1) = 20/23.
    flagging = section.flagging
    assert (
        flagging.true_positives,
        flagging.false_positives,
        flagging.false_negatives,
        flagging.true_negatives,
    ) == (10, 2, 1, 7)
    assert flagging.precision.value == pytest.approx(10 / 12)
    assert flagging.recall.value == pytest.approx(10 / 11)
    assert flagging.f1 == pytest.approx(20 / 23)
    # Wilson 95% for 10/12: centre (p + z^2/2n) / (1 + z^2/n) = (0.8333 + 0.1601) / 1.3201
    # = 0.7525; half-width z*sqrt(p(1-p)/n + z^2/4n^2) / 1.3201 = 1.96*0.13507/1.3201 = 0.2005.
    assert flagging.precision.low == pytest.approx(0.5520, abs=5e-4)
    assert flagging.precision.high == pytest.approx(0.9530, abs=5e-4)

    categories = {c.category: c for c in section.categories}
    # hate: the model named it on items 1-8 (8); reviewers on 1-4 and 6-8 (7); both 7.
    #   TP 7, FP 1, FN 0, TN 20 - 8 - 7 + 7 = 12; precision 7/8, recall 7/7.
    hate = categories["hate"].flagging
    assert (hate.true_positives, hate.false_positives, hate.false_negatives) == (7, 1, 0)
    assert hate.true_negatives == 12
    assert hate.precision.value == pytest.approx(0.875) and hate.recall.value == 1.0
    # violence: model on 15-16, 19-20 (4); reviewers on 14, 15, 19, 20 (4); both 3.
    #   TP 3, FP 1, FN 1, TN 15; precision 3/4, recall 3/4, F1 3/4.
    violence = categories["violence"].flagging
    assert (violence.true_positives, violence.false_positives) == (3, 1)
    assert (violence.false_negatives, violence.true_negatives) == (1, 15)
    assert violence.f1 == pytest.approx(0.75)

    # Enforcement under the current thresholds, per category: hate blocked or restricted on
    # items 1-8, upheld for hate on 7; violence blocked on 19-20, upheld on both.
    assert (
        categories["hate"].enforcement_precision.numerator,
        categories["hate"].enforcement_precision.denominator,
    ) == (7, 8)
    assert categories["violence"].enforcement_precision.value == 1.0

    # Latencies 100..2000 ms, one call each: the median of 20 is (1000 + 1100) / 2.
    assert section.cost.median_latency_ms == pytest.approx(1050)
    assert section.cost.median_tokens == pytest.approx(1000)
    assert section.cost.total_tokens == 20_000
    assert section.cost.items_with_model_calls == 20

    # The replay at the policy's own threshold reproduces the stored automatic decisions.
    current = section.thresholds.current
    assert (current.automatic.numerator, current.automatic.denominator) == (16, 20)
    assert (current.error.numerator, current.error.denominator) == (3, 16)
    # Restrictions and blocks: items 1-8 and 19-20 (10); reviewers enforced 9 of them.
    assert (current.precision.numerator, current.precision.denominator) == (9, 10)


def test_threshold_sweep_moves_items_to_review_as_the_threshold_rises(session, hand_built):
    tenant, _ = hand_built
    section = only_section(agreement_report(session, ReportRequest(tenant_id=tenant)))
    points = {round(p.min_confidence, 2): p for p in section.thresholds.min_confidence}
    assert points[0.8].automatic.numerator == 16
    # Above 0.85 the two violence blocks (conf .85) go to review: 14 automatic.
    assert points[0.86].automatic.numerator == 14
    # Above 0.90 only the safe .95 verdicts are confident: 6 automatic, all allow.
    assert points[0.91].automatic.numerator == 6
    assert points[0.91].precision.denominator == 0
    # Below 0.60 the two safe .60 verdicts are allowed too, and reviewers agreed with both.
    assert points[0.6].automatic.numerator == 18
    assert points[0.6].error.numerator == 3
    # Enforcement precision: 9/10 at every threshold up to 0.85 (items 1-8 and 19-20), 7/8
    # from 0.86 to 0.90 (items 1-8), nothing enforced from 0.91. So 95% is out of reach...
    assert not section.suggestion.reached
    assert section.suggestion.point is not None
    assert section.suggestion.point.precision.value == pytest.approx(0.9)
    assert any("No min_confidence" in line for line in section.summary)
    # ...and 85% is reached at the lowest threshold swept, which automates the two safe .60
    # verdicts too: 18 of 20 instead of 16, so 10% fewer items go to review.
    relaxed = only_section(
        agreement_report(session, ReportRequest(tenant_id=tenant, target_precision=0.85))
    )
    assert relaxed.suggestion.reached and relaxed.suggestion.min_confidence == 0.5
    assert relaxed.suggestion.more_to_review == pytest.approx(-0.1)
    assert any("Lower min_confidence from 0.80 to 0.50" in line for line in relaxed.summary)


def test_reviewer_decisions_decide_which_is_final(session):
    tenant = new_tenant(session)
    version = make_policy(session, tenant)
    item = add_item(
        session,
        tenant,
        version,
        parsed=verdict("safe", 0.95),
        auto=("allow", None),
        human=("block", ["hate"]),
    )
    # An appeal decided later replaces the first reviewer's decision.
    from moderation.decisions.models import Action, Decision

    session.add(
        Decision(
            submission_id=item,
            action=Action.allow,
            source=DecisionSource.appeal,
            categories=[],
            actor="reviewer-2",
            created_at=utcnow(),
        )
    )
    add_item(session, tenant, version, parsed=verdict("safe", 0.95), auto=("allow", None))
    add_item(session, tenant, version, parsed=None, auto=None)  # still queued
    section = only_section(agreement_report(session, ReportRequest(tenant_id=tenant)))
    assert section.submissions == 3 and section.pending == 1 and section.reviewed == 1
    assert section.decisions.counts[0] == [1, 0, 0]
    assert section.agreement.value == 1.0


def test_reports_see_only_the_callers_tenant_range_and_version(session):
    tenant, other = new_tenant(session), new_tenant(session)
    version = make_policy(session, tenant)
    versions = {tenant: version, other: make_policy(session, other)}
    for owner in (tenant, other, other):
        add_item(
            session,
            owner,
            versions[owner],
            parsed=verdict("safe", 0.9),
            auto=("allow", None),
            human=("allow", []),
        )
    old = utcnow() - timedelta(days=60)
    add_item(
        session, tenant, version, parsed=verdict("safe", 0.9), auto=("allow", None), created_at=old
    )
    section = only_section(agreement_report(session, ReportRequest(tenant_id=tenant)))
    assert section.submissions == 1
    wide = agreement_report(session, ReportRequest(tenant_id=tenant, since=old - timedelta(days=1)))
    assert only_section(wide).submissions == 2
    empty = agreement_report(session, ReportRequest(tenant_id=new_tenant(session)))
    assert empty.versions == []


def test_each_policy_version_gets_its_own_section(session):
    tenant = new_tenant(session)
    first, second = make_policy(session, tenant), make_policy(session, tenant, min_confidence=0.9)
    add_item(session, tenant, first, parsed=verdict("safe", 0.85), auto=("allow", None))
    add_item(
        session, tenant, second, parsed=verdict("safe", 0.85), auto=("review", "low_confidence")
    )
    report = agreement_report(session, ReportRequest(tenant_id=tenant))
    assert len(report.versions) == 2
    by_threshold = {s.thresholds.current_min_confidence: s for s in report.versions}
    assert by_threshold[0.8].automatic_rate.value == 1.0
    assert by_threshold[0.9].review_rate.value == 1.0
    slug = report.versions[0].policy
    narrowed = agreement_report(session, ReportRequest(tenant_id=tenant, policy=slug, version=1))
    assert [s.policy for s in narrowed.versions] == [slug]


def test_failed_calls_count_in_cost_and_failures_in_review_reasons(session):
    tenant = new_tenant(session)
    version = make_policy(session, tenant)
    add_item(
        session,
        tenant,
        version,
        parsed=verdict("safe", 0.9),
        auto=("allow", None),
        calls=2,
        latency_ms=300,
        tokens=(500, 50),
    )
    add_item(session, tenant, version, parsed=None, auto=("review", "model_unavailable"), calls=0)
    section = only_section(agreement_report(session, ReportRequest(tenant_id=tenant)))
    # Two calls of 300 ms and 550 tokens each, on the one item that reached the model.
    assert section.cost.items_with_model_calls == 1
    assert section.cost.median_latency_ms == 600
    assert section.cost.median_tokens == 1100
    assert {r.reason: r.items for r in section.review_reasons} == {"model_unavailable": 1}
    assert section.thresholds.replayable_items == 1


def test_calibration_bins_stated_confidence_and_rating_probability(session):
    tenant = new_tenant(session)
    version = make_policy(session, tenant)
    # Four reviewed verdicts at confidence .95: reviewers agreed with three.
    for human in (("allow", []), ("allow", []), ("allow", []), ("block", ["hate"])):
        add_item(
            session,
            tenant,
            version,
            parsed=verdict("safe", 0.95),
            auto=("allow", None),
            human=human,
            rating_probability=0.62,
        )
    # Two flagged hate at .85; reviewers confirmed hate once.
    for human in (("block", ["hate"]), ("allow", [])):
        add_item(
            session,
            tenant,
            version,
            parsed=verdict("unsafe", 0.85, ("hate", 3, 0.85)),
            auto=("block", None),
            human=human,
        )
    section = only_section(agreement_report(session, ReportRequest(tenant_id=tenant)))
    stated = next(c for c in section.calibration if c.scale == "confidence")
    bins = {(b.low, b.high): b for b in stated.bins}
    assert bins[(0.9, 1.0)].items == 4 and bins[(0.9, 1.0)].observed.numerator == 3
    assert bins[(0.8, 0.9)].items == 2 and bins[(0.8, 0.9)].observed.numerator == 1
    # ECE = (4 * |0.95 - 0.75| + 2 * |0.85 - 0.5|) / 6 = (0.8 + 0.7) / 6 = 0.25
    assert stated.expected_calibration_error == pytest.approx(0.25)
    token = next(c for c in section.calibration if c.scale == "rating_probability")
    assert [(b.low, b.items) for b in token.bins] == [(0.6, 4)]
    hate = next(c for c in section.categories if c.category == "hate")
    assert [(b.low, b.items, b.observed.numerator) for b in hate.calibration.bins] == [(0.8, 2, 1)]


def test_parameters_are_checked(session):
    tenant = new_tenant(session)
    with pytest.raises(ValidationFailed) as bad:
        agreement_report(session, ReportRequest(tenant_id=tenant, version=2))
    assert bad.value.errors and bad.value.errors[0]["loc"] == ["query", "version"]
    now = utcnow()
    with pytest.raises(ValidationFailed):
        agreement_report(session, ReportRequest(tenant_id=tenant, since=now, until=now))
    with pytest.raises(ValidationFailed):
        agreement_report(session, ReportRequest(tenant_id=tenant, target_precision=1.0))
    with pytest.raises(NotFound):
        agreement_report(session, ReportRequest(tenant_id=tenant, policy="no-such-policy"))


def test_a_shadow_version_is_compared_with_live_and_with_reviewers(session):
    tenant = new_tenant(session)
    live, shadow = make_policy(session, tenant), make_policy(session, tenant)
    #  live automatic    shadow      reviewer
    #  block             block       block     both right
    #  allow             restrict    restrict  shadow right
    #  review            allow       allow     shadow decides, rightly
    #  block             review      (none)
    cases = [
        ("block", "block", ("block", ["hate"])),
        ("allow", "restrict", ("restrict", ["hate"])),
        ("review", "allow", ("allow", [])),
        ("block", "review", None),
    ]
    for auto, shadow_action, human in cases:
        item = add_item(
            session,
            tenant,
            live,
            parsed=verdict("safe", 0.9),
            auto=(auto, "below_threshold" if auto == "review" else None),
            human=human,
        )
        add_shadow_outcome(session, item, shadow, shadow_action)
    add_item(session, tenant, live, parsed=verdict("safe", 0.9), auto=("allow", None))
    section = only_section(agreement_report(session, ReportRequest(tenant_id=tenant)))
    (comparison,) = section.shadows
    assert comparison.items == 4 and comparison.reviewed == 3
    # Rows live, columns shadow, both in the order allow, restrict, block, review.
    assert comparison.flips == [[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1], [1, 0, 0, 0]]
    assert (comparison.same_action.numerator, comparison.same_action.denominator) == (1, 4)
    assert comparison.more_to_review == 0
    # Live: 2 of 3 reviewed decided automatically, 1 of those 2 agreed, its 1 block upheld.
    assert (comparison.live.automatic.numerator, comparison.live.automatic.denominator) == (2, 3)
    assert comparison.live.agreement.value == 0.5
    assert comparison.live.precision.value == 1.0
    # Shadow: all 3 automatic and agreed; its block and restriction both upheld.
    assert comparison.shadow.automatic.value == 1.0
    assert comparison.shadow.agreement.value == 1.0
    assert (comparison.shadow.precision.numerator, comparison.shadow.precision.denominator) == (
        2,
        2,
    )
    assert comparison.model_calls == 4 and comparison.tokens == 400
    # The shadow's calls are its own cost, not the live pipeline's.
    assert section.cost.total_tokens == 5 * 1000
    assert any(line.startswith("Shadow ") for line in section.summary)
