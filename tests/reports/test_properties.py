"""The report's numbers against scikit-learn, and its threshold replay against the rules,
on random data."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    f1_score,
    precision_score,
    recall_score,
)

from moderation.database import get_sessionmaker, session_scope
from moderation.decisions.models import Action
from moderation.decisions.rules import decide
from moderation.policies.schemas import PolicyDocument
from moderation.policies.service import document_for_version
from moderation.reports.metrics import binary_metrics, cohen_kappa, wilson_interval
from moderation.reports.service import ReportRequest, agreement_report
from moderation.reports.thresholds import SWEEP_PERCENTS
from moderation.tenants.service import create_tenant
from moderation.vlm.verdict import ModelVerdict
from tests.reports.factories import CATEGORIES, add_item, make_policy, verdict

ACTIONS = ["allow", "restrict", "block"]


def reference_kappa(
    models: list[str] | tuple[str, ...], people: list[str] | tuple[str, ...]
) -> float:
    """scikit-learn's kappa; NaN (with a warning we expect) where both raters used one label."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return float(cohen_kappa_score(models, people, labels=ACTIONS))


@pytest.fixture(scope="module")
def sessions(migrated: str):
    return get_sessionmaker(migrated)


labels = st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=60)


@given(
    st.lists(st.tuples(st.sampled_from(ACTIONS), st.sampled_from(ACTIONS)), min_size=1, max_size=80)
)
def test_kappa_matches_scikit_learn(pairs):
    matrix = [[0] * 3 for _ in ACTIONS]
    for model, person in pairs:
        matrix[ACTIONS.index(model)][ACTIONS.index(person)] += 1
    models, people = zip(*pairs, strict=True)
    expected = reference_kappa(models, people)
    ours = cohen_kappa(matrix)
    if expected != expected:  # scikit-learn answers NaN where both raters used one label
        assert ours in (0.0, 1.0)
    else:
        assert ours == pytest.approx(expected, abs=1e-9)


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=80))
def test_binary_metrics_match_scikit_learn(pairs):
    predicted = [p for p, _ in pairs]
    actual = [a for _, a in pairs]
    tp = sum(p and a for p, a in pairs)
    fp = sum(p and not a for p, a in pairs)
    fn = sum(a and not p for p, a in pairs)
    tn = len(pairs) - tp - fp - fn
    ours = binary_metrics(tp, fp, fn, tn)
    for value, reference in (
        (ours.precision.value, precision_score(actual, predicted, zero_division=float("nan"))),
        (ours.recall.value, recall_score(actual, predicted, zero_division=float("nan"))),
        (ours.f1, f1_score(actual, predicted, zero_division=float("nan"))),
    ):
        if reference != reference:
            assert value is None
        else:
            assert value == pytest.approx(reference, abs=1e-12)


@given(st.integers(0, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_interval_holds_the_estimate_and_stays_in_bounds(case):
    successes, trials = case
    interval = wilson_interval(successes, trials)
    if trials == 0:
        assert interval is None
        return
    assert interval is not None
    low, high = interval
    assert 0.0 <= low <= successes / trials <= high <= 1.0


item = st.fixed_dictionaries(
    {
        "rating": st.sampled_from(["safe", "unsafe"]),
        "confidence": st.integers(30, 100).map(lambda n: n / 100),
        "categories": st.sets(st.sampled_from(CATEGORIES), min_size=1, max_size=2),
        "severity": st.integers(1, 4),
        "auto": st.sampled_from([*ACTIONS, "review"]),
        "human": st.one_of(st.none(), st.sampled_from(ACTIONS)),
        "human_categories": st.sets(st.sampled_from(CATEGORIES), max_size=2),
    }
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(item, min_size=1, max_size=25))
def test_stored_data_report_matches_scikit_learn(sessions, items):
    with session_scope(sessions) as session:
        tenant = create_tenant(session, "property", with_policy_templates=False).id
        version = make_policy(session, tenant)
        for entry in items:
            unsafe = entry["rating"] == "unsafe"
            parsed = verdict(
                entry["rating"],
                entry["confidence"],
                *(
                    [
                        (c, entry["severity"], entry["confidence"])
                        for c in sorted(entry["categories"])
                    ]
                    if unsafe
                    else []
                ),
            )
            human = None
            if entry["human"] is not None:
                enforce = entry["human"] != "allow"
                human = (entry["human"], sorted(entry["human_categories"]) if enforce else [])
            reason = "below_threshold" if entry["auto"] == "review" else None
            add_item(
                session, tenant, version, parsed=parsed, auto=(entry["auto"], reason), human=human
            )
        report = agreement_report(session, ReportRequest(tenant_id=tenant))
    section = report.versions[0]

    reviewed = [e for e in items if e["human"] is not None]
    paired = [e for e in reviewed if e["auto"] != "review"]
    assert section.reviewed == len(reviewed)
    assert section.agreement.denominator == len(paired)
    if paired:
        models = [e["auto"] for e in paired]
        people = [e["human"] for e in paired]
        assert section.agreement.value == pytest.approx(accuracy_score(people, models))
        expected = reference_kappa(models, people)
        if expected == expected:
            assert section.kappa == pytest.approx(expected, abs=1e-9)

    def check(ours, actual: list[bool], predicted: list[bool]) -> None:
        for value, reference in (
            (ours.precision.value, precision_score(actual, predicted, zero_division=float("nan"))),
            (ours.recall.value, recall_score(actual, predicted, zero_division=float("nan"))),
            (ours.f1, f1_score(actual, predicted, zero_division=float("nan"))),
        ):
            if reference != reference or not reviewed:
                assert value is None
            else:
                assert value == pytest.approx(reference, abs=1e-12)

    if reviewed:
        check(
            section.flagging,
            [e["human"] != "allow" for e in reviewed],
            [e["rating"] == "unsafe" for e in reviewed],
        )
        by_category = {c.category: c for c in section.categories}
        for category in CATEGORIES:
            check(
                by_category[category].flagging,
                [e["human"] != "allow" and category in e["human_categories"] for e in reviewed],
                [e["rating"] == "unsafe" and category in e["categories"] for e in reviewed],
            )


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["safe", "unsafe"]),
            # Confidences with up to four decimals: the sweep must floor them exactly.
            st.integers(0, 10_000).map(lambda n: n / 10_000),
            st.lists(
                st.tuples(
                    st.sampled_from(CATEGORIES),
                    st.integers(1, 4),
                    st.integers(0, 10_000).map(lambda n: n / 10_000),
                ),
                min_size=1,
                max_size=3,
            ),
            st.one_of(st.none(), st.sampled_from(ACTIONS)),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_threshold_sweep_equals_running_the_rules_on_every_verdict(sessions, rows):
    """The sweep's shortcuts (grouping, flooring, breakpoints) change nothing the rules decide."""
    with session_scope(sessions) as session:
        tenant = create_tenant(session, "sweep", with_policy_templates=False).id
        version = make_policy(session, tenant)
        policy: PolicyDocument = document_for_version(session, version)
        verdicts = []
        for rating, confidence, violations, human in rows:
            parsed = verdict(rating, confidence, *(violations if rating == "unsafe" else []))
            verdicts.append((ModelVerdict.model_validate(parsed), human))
            add_item(
                session,
                tenant,
                version,
                parsed=parsed,
                auto=("review", "below_threshold"),
                human=(human, ["hate"] if human in ("restrict", "block") else [])
                if human
                else None,
            )
        section = agreement_report(session, ReportRequest(tenant_id=tenant)).versions[0]

    for percent, point in zip(SWEEP_PERCENTS, section.thresholds.min_confidence, strict=True):
        outcomes = [
            (decide(v, policy, min_confidence=percent / 100).action, h) for v, h in verdicts
        ]
        automatic = [(a, h) for a, h in outcomes if a is not Action.review]
        assert point.automatic.numerator == len(automatic), percent
        reviewed = [(a, h) for a, h in automatic if h is not None]
        assert point.error.denominator == len(reviewed)
        assert point.error.numerator == sum(a.value != h for a, h in reviewed)
        enforced = [(a, h) for a, h in reviewed if a in (Action.restrict, Action.block)]
        assert point.precision.denominator == len(enforced)
        assert point.precision.numerator == sum(h != "allow" for _, h in enforced)
    # Every category setting, against the rules run on every verdict under that setting.
    for option in section.thresholds.categories:
        changed = policy.model_copy(
            update={
                "categories": [
                    c.model_copy(
                        update={"block_at": option.block_at, "restrict_at": option.restrict_at}
                    )
                    if c.id == option.category
                    else c
                    for c in policy.categories
                ]
            }
        )
        outcomes = [(decide(v, changed), h) for v, h in verdicts]
        automatic = [(o, h) for o, h in outcomes if o.action is not Action.review]
        assert option.automatic.numerator == len(automatic), option
        assert option.error.numerator == sum(
            h is not None and o.action.value != h for o, h in automatic
        )
        for_category = [
            h
            for o, h in automatic
            if h is not None
            and o.action in (Action.restrict, Action.block)
            and any(c["category"] == option.category for c in o.categories)
        ]
        assert option.precision.denominator == len(for_category)
        # Reviewers named "hate" whenever they restricted or blocked.
        upheld = sum(h != "allow" for h in for_category) if option.category == "hate" else 0
        assert option.precision.numerator == upheld
        if option.current:
            assert option.automatic == section.thresholds.current.automatic
            assert option.error == section.thresholds.current.error
