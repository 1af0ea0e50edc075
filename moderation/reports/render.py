"""The report as JSON, as CSV (one figure per row), and as one self-contained HTML page.

The HTML page carries its styles and charts inside it (charts as base64 SVG images), so it can
be mailed or attached to a ticket and opened anywhere, with no network and no scripts.
"""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Iterator
from html import escape

from moderation.core.errors import NotAcceptable
from moderation.reports import plots
from moderation.reports.metrics import BinaryMetrics, Rate
from moderation.reports.schemas import AgreementReport, DecisionMatrix, VersionReport

JSON_MEDIA_TYPE = "application/json"
CSV_MEDIA_TYPE = "text/csv"
HTML_MEDIA_TYPE = "text/html"
DASH = "\u2013"


MEDIA_TYPES = (JSON_MEDIA_TYPE, CSV_MEDIA_TYPE, HTML_MEDIA_TYPE)


def choose_media_type(accept: str | None) -> str:
    """The form a client asked for in its Accept header (RFC 9110 quality values).

    No header, or only wildcards, means JSON. A header naming only forms this report does not
    come in is refused rather than answered with something the client did not ask for.
    """
    if not accept or not accept.strip():
        return JSON_MEDIA_TYPE
    best: tuple[float, int, str] | None = None
    for position, part in enumerate(accept.split(",")):
        fields = [f.strip() for f in part.split(";")]
        wanted = fields[0].lower()
        quality = 1.0
        for parameter in fields[1:]:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality <= 0:
            continue
        for offered in MEDIA_TYPES:
            kind = offered.split("/")[0]
            if wanted in (offered, "*/*", f"{kind}/*"):
                # Higher quality wins, then the earlier entry, then the order of MEDIA_TYPES.
                rank = (quality, -position, offered)
                if best is None or (rank[0], rank[1]) > (best[0], best[1]):
                    best = rank
                break
    if best is None:
        raise NotAcceptable(
            f"this report comes as {', '.join(MEDIA_TYPES)}; the Accept header asked for {accept!r}"
        )
    return best[2]


def render(report: AgreementReport, media_type: str) -> str:
    if media_type == CSV_MEDIA_TYPE:
        return render_csv(report)
    if media_type == HTML_MEDIA_TYPE:
        return render_html(report)
    return render_json(report)


def render_json(report: AgreementReport) -> str:
    return report.model_dump_json(indent=2)


# ---------------------------------------------------------------------------------------- CSV

CSV_COLUMNS = (
    "policy",
    "version",
    "table",
    "category",
    "row",
    "column",
    "value",
    "low",
    "high",
    "numerator",
    "denominator",
)


def _csv_rows(report: AgreementReport) -> Iterator[list[object]]:
    for section in report.versions:
        base = [section.policy, section.version]

        def line(
            table: str,
            category: str,
            row: str,
            column: str,
            value: object,
            base: list[object] = base,
        ) -> list[object]:
            return [*base, table, category, row, column, value, "", "", "", ""]

        def proportion(
            table: str, category: str, row: str, column: str, r: Rate, base: list[object] = base
        ) -> list[object]:
            return [
                *base,
                table,
                category,
                row,
                column,
                "" if r.value is None else r.value,
                "" if r.low is None else r.low,
                "" if r.high is None else r.high,
                r.numerator,
                r.denominator,
            ]

        for name in ("submissions", "pending", "reviewed"):
            yield line("totals", "", name, "", getattr(section, name))
        yield proportion("rates", "", "automatic", "", section.automatic_rate)
        yield proportion("rates", "", "review", "", section.review_rate)
        yield proportion("rates", "", "agreement", "", section.agreement)
        yield proportion("rates", "", "overturn", "", section.overturn_rate)
        yield line("rates", "", "kappa", "", "" if section.kappa is None else section.kappa)
        matrix = section.decisions
        for i, model_action in enumerate(matrix.model_actions):
            for j, reviewer_action in enumerate(matrix.reviewer_actions):
                yield line("decisions", "", model_action, reviewer_action, matrix.counts[i][j])

        def binary(category: str, metrics: BinaryMetrics) -> Iterator[list[object]]:
            yield line("flagging", category, "true_positives", "", metrics.true_positives)
            yield line("flagging", category, "false_positives", "", metrics.false_positives)
            yield line("flagging", category, "false_negatives", "", metrics.false_negatives)
            yield line("flagging", category, "true_negatives", "", metrics.true_negatives)
            yield proportion("flagging", category, "precision", "", metrics.precision)
            yield proportion("flagging", category, "recall", "", metrics.recall)
            yield line("flagging", category, "f1", "", "" if metrics.f1 is None else metrics.f1)

        yield from binary("*", section.flagging)
        for category in section.categories:
            yield from binary(category.category, category.flagging)
            yield proportion(
                "enforcement", category.category, "precision", "", category.enforcement_precision
            )
            for b in category.calibration.bins:
                yield proportion(
                    "calibration",
                    category.category,
                    f"{b.low:.1f}-{b.high:.1f}",
                    "category",
                    b.observed,
                )
        for calibration in section.calibration:
            for b in calibration.bins:
                yield proportion(
                    "calibration", "*", f"{b.low:.1f}-{b.high:.1f}", calibration.scale, b.observed
                )
        cost = section.cost
        yield line("cost", "", "items_with_model_calls", "", cost.items_with_model_calls)
        yield line("cost", "", "median_latency_ms", "", cost.median_latency_ms or "")
        yield line("cost", "", "median_tokens", "", cost.median_tokens or "")
        yield line("cost", "", "total_tokens", "", cost.total_tokens)
        for reason in section.review_reasons:
            yield line("review_reasons", "", reason.reason, "", reason.items)
        for point in section.thresholds.min_confidence:
            row = f"{point.min_confidence:.2f}"
            yield proportion("min_confidence_sweep", "", row, "automatic", point.automatic)
            yield proportion("min_confidence_sweep", "", row, "error", point.error)
            yield proportion("min_confidence_sweep", "", row, "precision", point.precision)
        for option in section.thresholds.categories:
            row = f"block_at={option.block_at} restrict_at={option.restrict_at or ''}"
            yield proportion("category_sweep", option.category, row, "automatic", option.automatic)
            yield proportion("category_sweep", option.category, row, "error", option.error)
            yield proportion("category_sweep", option.category, row, "precision", option.precision)
        for shadow in section.shadows:
            name = f"{shadow.policy}@{shadow.version}"
            yield line("shadow", name, "items", "", shadow.items)
            yield proportion("shadow", name, "same_action", "", shadow.same_action)
            for i, live_action in enumerate(shadow.actions):
                for j, shadow_action in enumerate(shadow.actions):
                    yield line("shadow_flips", name, live_action, shadow_action, shadow.flips[i][j])
            for side_name, side in (("live", shadow.live), ("shadow", shadow.shadow)):
                yield proportion("shadow", name, "automatic", side_name, side.automatic)
                yield proportion("shadow", name, "agreement", side_name, side.agreement)
                yield proportion("shadow", name, "precision", side_name, side.precision)
            yield line("shadow", name, "model_calls", "", shadow.model_calls)
            yield line("shadow", name, "tokens", "", shadow.tokens)
        for number, sentence in enumerate(section.summary, start=1):
            yield line("summary", "", str(number), "", sentence)


def render_csv(report: AgreementReport) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(_csv_rows(report))
    return buffer.getvalue()


# --------------------------------------------------------------------------------------- HTML

_CSS = """
:root { --ink:#111827; --muted:#6b7280; --line:#e5e7eb; --soft:#f9fafb; --accent:#2563eb; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans",
       sans-serif; color: var(--ink); background: #fff; }
main { max-width: 1120px; margin: 0 auto; padding: 32px 32px 64px; }
header.page { border-bottom: 3px solid var(--ink); padding-bottom: 12px; margin-bottom: 8px; }
h1 { font-size: 28px; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 22px; margin: 40px 0 4px; padding-top: 8px; border-top: 1px solid var(--line); }
h3 { font-size: 16px; margin: 28px 0 8px; }
.meta, .note { color: var(--muted); font-size: 13px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px;
         margin: 16px 0; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px;
        background: var(--soft); }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase;
               letter-spacing: .04em; }
.card .value { font-size: 24px; font-weight: 650; line-height: 1.2; margin-top: 2px; }
.card .ci { color: var(--muted); font-size: 12px; }
.advice { border-left: 4px solid var(--accent); background: #eff6ff; padding: 12px 16px 12px 36px;
          border-radius: 0 8px 8px 0; margin: 16px 0; }
.advice li { margin: 4px 0; }
.advice.empty { border-color: var(--muted); background: var(--soft); padding-left: 16px; }
table { border-collapse: collapse; margin: 8px 0 4px; font-size: 14px; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 10px; text-align: right;
         font-variant-numeric: tabular-nums; }
th:first-child, td:first-child { text-align: left; }
thead th { font-size: 12px; color: var(--muted); font-weight: 600; text-transform: uppercase;
           letter-spacing: .03em; border-bottom: 2px solid var(--line); }
table.matrix td.cell { min-width: 72px; text-align: center; }
table.matrix td.agree { outline: 2px solid #16a34a; outline-offset: -2px; }
table.matrix th.axis { text-transform: none; color: var(--ink); font-size: 13px; }
.row { display: grid; grid-template-columns: auto minmax(0, 1fr); gap: 40px;
       align-items: start; }
.row > div:first-child { min-width: 0; }
figure { margin: 12px 0; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 13px; max-width: 760px; }
details { margin: 8px 0; }
summary { cursor: pointer; color: var(--accent); }
.bad { color: #b91c1c; }
.good { color: #15803d; }
footer { margin-top: 48px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--line);
         padding-top: 12px; }
"""


def _pct(value: float | None, digits: int = 0) -> str:
    return "\u2013" if value is None else f"{value * 100:.{digits}f}%"


def _ci(r: Rate) -> str:
    if r.low is None or r.high is None:
        return "no data"
    return f"95% CI {r.low * 100:.0f}\u2013{r.high * 100:.0f}% · n={r.denominator:,}"


def _card(label: str, value: str, detail: str = "") -> str:
    extra = f'<div class="ci">{escape(detail)}</div>' if detail else ""
    return (
        f'<div class="card"><div class="label">{escape(label)}</div>'
        f'<div class="value">{escape(value)}</div>{extra}</div>'
    )


def _image(svg: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(svg).decode()
    return (
        f'<figure><img src="data:image/svg+xml;base64,{data}" alt="{escape(alt)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def _matrix(matrix: DecisionMatrix, corner: str = "model ↓ · reviewer →") -> str:
    peak = max((max(row) for row in matrix.counts), default=0) or 1
    head = "".join(f'<th class="axis">{escape(a)}</th>' for a in matrix.reviewer_actions)
    body = []
    for i, action in enumerate(matrix.model_actions):
        cells = []
        for j, reviewer in enumerate(matrix.reviewer_actions):
            count = matrix.counts[i][j]
            shade = 0.08 + 0.6 * count / peak if count else 0.0
            style = f"background: rgba(37, 99, 235, {shade:.2f});" if count else ""
            if shade > 0.45:
                style += " color: #fff;"
            css = "cell agree" if action == reviewer else "cell"
            cells.append(f'<td class="{css}" style="{style}">{count:,}</td>')
        body.append(f'<tr><th class="axis">{escape(action)}</th>{"".join(cells)}</tr>')
    return (
        f'<table class="matrix"><thead><tr><th>{escape(corner)}</th>'
        f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def _category_table(section: VersionReport) -> str:
    rows = []
    for c in section.categories:
        f = c.flagging
        rows.append(
            "<tr>"
            f"<td>{escape(c.category)}</td>"
            f"<td>{f.true_positives:,}</td><td>{f.false_positives:,}</td>"
            f"<td>{f.false_negatives:,}</td><td>{f.true_negatives:,}</td>"
            f'<td title="{escape(_ci(f.precision))}">{_pct(f.precision.value)}</td>'
            f'<td title="{escape(_ci(f.recall))}">{_pct(f.recall.value)}</td>'
            f"<td>{_pct(f.f1)}</td>"
            f'<td title="{escape(_ci(c.enforcement_precision))}">'
            f"{_pct(c.enforcement_precision.value)}"
            f' <span class="note">(n={c.enforcement_precision.denominator:,})</span></td>'
            "</tr>"
        )
    return (
        "<table><thead><tr><th>category</th><th>both flagged</th><th>model only</th>"
        "<th>reviewer only</th><th>neither</th><th>precision</th><th>recall</th><th>F1</th>"
        "<th>actions upheld</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _sweep_table(section: VersionReport) -> str:
    suggested = section.suggestion.min_confidence
    now = section.thresholds.current_min_confidence
    rows = []
    for p in section.thresholds.min_confidence:
        marks = []
        if abs(p.min_confidence - now) < 1e-9:
            marks.append("now")
        if suggested is not None and abs(p.min_confidence - suggested) < 1e-9:
            marks.append("suggested")
        if not marks and round(p.min_confidence * 100) % 5:
            continue
        rows.append(
            f"<tr><td>{p.min_confidence:.2f} {' · '.join(marks)}</td>"
            f"<td>{_pct(p.automatic.value, 1)}</td>"
            f'<td title="{escape(_ci(p.precision))}">{_pct(p.precision.value, 1)}</td>'
            f"<td>{_pct(p.error.value, 1)}</td></tr>"
        )
    return (
        "<table><thead><tr><th>min_confidence</th><th>automatic</th><th>upheld</th>"
        "<th>changed by reviewers</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _category_sweep_table(section: VersionReport) -> str:
    rows = []
    for p in section.thresholds.categories:
        if p.precision.denominator == 0 and not p.current:
            continue
        mark = " · now" if p.current else ""
        rows.append(
            f"<tr><td>{escape(p.category)}{mark}</td><td>{p.block_at}</td>"
            f"<td>{p.restrict_at if p.restrict_at is not None else DASH}</td>"
            f"<td>{_pct(p.automatic.value, 1)}</td>"
            f'<td title="{escape(_ci(p.precision))}">{_pct(p.precision.value, 1)}'
            f' <span class="note">(n={p.precision.denominator:,})</span></td>'
            f"<td>{_pct(p.error.value, 1)}</td></tr>"
        )
    return (
        "<table><thead><tr><th>category</th><th>block_at</th><th>restrict_at</th>"
        "<th>automatic</th><th>category upheld</th><th>changed by reviewers</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _calibration_table(section: VersionReport) -> str:
    rows = []
    for c in section.categories:
        for b in c.calibration.bins:
            rows.append(
                f"<tr><td>{escape(c.category)}</td><td>{b.low:.1f}\u2013{b.high:.1f}</td>"
                f"<td>{b.items:,}</td><td>{_pct(b.mean_score)}</td>"
                f'<td title="{escape(_ci(b.observed))}">{_pct(b.observed.value)}</td></tr>'
            )
    if not rows:
        return '<p class="note">No reviewed item had a flagged category.</p>'
    return (
        "<table><thead><tr><th>category</th><th>confidence</th><th>items</th>"
        "<th>mean stated</th><th>reviewers confirmed</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _shadows(section: VersionReport) -> str:
    if not section.shadows:
        return ""
    parts = ["<h3>Shadow versions</h3>"]
    for shadow in section.shadows:
        flips = DecisionMatrix(
            model_actions=shadow.actions, reviewer_actions=shadow.actions, counts=shadow.flips
        )
        rows = "".join(
            f"<tr><td>{label}</td>"
            f'<td title="{escape(_ci(live))}">{_pct(live.value)}</td>'
            f'<td title="{escape(_ci(other))}">{_pct(other.value)}</td></tr>'
            for label, live, other in (
                ("decided automatically", shadow.live.automatic, shadow.shadow.automatic),
                ("agreed with reviewers", shadow.live.agreement, shadow.shadow.agreement),
                ("restrictions and blocks upheld", shadow.live.precision, shadow.shadow.precision),
            )
        )
        parts.append(
            f"<p><strong>{escape(shadow.policy)} v{shadow.version}</strong> judged "
            f"{shadow.items:,} of these submissions alongside v{section.version} "
            f"({shadow.model_calls:,} model calls, {shadow.tokens:,} tokens) and would have "
            f"decided {_pct(shadow.same_action.value)} of them the same way.</p>"
            '<div class="row"><div>'
            + _matrix(flips, corner="live ↓ · shadow →")
            + "</div><div><table><thead><tr><th>on the "
            f"{shadow.reviewed:,} reviewed</th><th>v{section.version} (live)</th>"
            f"<th>v{shadow.version} (shadow)</th></tr></thead><tbody>{rows}</tbody></table>"
            "</div></div>"
        )
    return "".join(parts)


def _section(section: VersionReport, target: float) -> str:
    cost = section.cost
    cards = "".join(
        [
            _card("Submissions", f"{section.submissions:,}", f"{section.reviewed:,} reviewed"),
            _card(
                "Decided automatically",
                _pct(section.automatic_rate.value),
                _ci(section.automatic_rate),
            ),
            _card("Sent to review", _pct(section.review_rate.value), _ci(section.review_rate)),
            _card("Agreement", _pct(section.agreement.value), _ci(section.agreement)),
            _card(
                "Cohen's kappa",
                "\u2013" if section.kappa is None else f"{section.kappa:.2f}",
                "chance-corrected agreement",
            ),
            _card("Overturned", _pct(section.overturn_rate.value), _ci(section.overturn_rate)),
            _card(
                "Flag precision",
                _pct(section.flagging.precision.value),
                _ci(section.flagging.precision),
            ),
            _card("Flag recall", _pct(section.flagging.recall.value), _ci(section.flagging.recall)),
            _card("Flag F1", _pct(section.flagging.f1), "unsafe vs restricted/blocked"),
            _card(
                "Median latency",
                "\u2013"
                if cost.median_latency_ms is None
                else f"{cost.median_latency_ms / 1000:.2f} s",
                f"{cost.items_with_model_calls:,} items called the model",
            ),
            _card(
                "Median tokens",
                "\u2013" if cost.median_tokens is None else f"{cost.median_tokens:,.0f}",
                f"{cost.total_tokens:,} in all",
            ),
        ]
    )
    if section.summary:
        advice = (
            '<ul class="advice">'
            + "".join(f"<li>{escape(s)}</li>" for s in section.summary)
            + "</ul>"
        )
    else:
        advice = '<p class="advice empty">Nothing to report.</p>'

    charts = []
    if section.reviewed:
        charts.append(
            _image(
                plots.category_bars(section.categories),
                "precision and recall per category",
                "Precision: of the items the model flagged for a category, the share reviewers "
                "also marked for it. Recall: of the items reviewers marked, the share the model "
                "flagged. Whiskers are Wilson 95% intervals.",
            )
        )
    if section.thresholds.replayable_items:
        charts.append(
            _image(
                plots.threshold_tradeoff(
                    section.thresholds, section.suggestion.min_confidence, target
                ),
                "threshold trade-off",
                "Each min_confidence replayed through the decision rules over the stored "
                "verdicts: how much is decided without a person, how many restrictions and "
                "blocks reviewers upheld (band: 95% interval), and how many automatic decisions "
                "reviewers changed.",
            )
        )
    calibration_chart = ""
    if section.reviewed:
        calibration_chart = _image(
            plots.calibration_curve(section.calibration),
            "calibration curve",
            "Items binned by the model's score for its rating; a well-calibrated model sits on "
            "the dashed line. Points under it: the model is surer than reviewers bear out.",
        )

    reasons = "".join(
        f"<tr><td>{escape(r.reason)}</td><td>{r.items:,}</td></tr>" for r in section.review_reasons
    )
    reasons_table = (
        f"<table><thead><tr><th>reason</th><th>items</th></tr></thead><tbody>{reasons}</tbody></table>"
        if reasons
        else '<p class="note">Nothing went to review.</p>'
    )
    return f"""
<section>
<h2>{escape(section.policy)} v{section.version}
<span class="meta">· {escape(section.title)}</span></h2>
<div class="cards">{cards}</div>
<h3>What to change</h3>
{advice}
{charts[0] if charts else ""}
<h3>Decisions: model against reviewer</h3>
<div class="row">
<div>{_matrix(section.decisions)}
<p class="note" style="max-width: 420px">Rows: the automatic decision; columns: the
reviewer's final decision. Framed cells agree. The review row is what the model left to
people.</p></div>
<div><h3 style="margin-top:0">Why items went to review</h3>{reasons_table}</div>
</div>
<h3>Per category</h3>
{_category_table(section)}
<p class="note">Flags compare the categories in the model's verdict with the reviewer's
categories, over reviewed items. "Actions upheld" is the share of restrictions and blocks made
for the category under the current thresholds that reviewers upheld for it.</p>
<h3>Thresholds</h3>
{charts[1] if len(charts) > 1 else '<p class="note">No stored verdict to replay.</p>'}
<div class="row">
<div>{_sweep_table(section)}</div>
<div>{calibration_chart}</div>
</div>
{_shadows(section)}
<details><summary>Every block_at and restrict_at, per category</summary>
{_category_sweep_table(section)}</details>
<details><summary>Calibration per category</summary>
{_calibration_table(section)}</details>
</section>"""


def render_html(report: AgreementReport) -> str:
    scope = report.scope
    what = "every policy" if scope.policy is None else escape(scope.policy)
    if scope.version is not None:
        what += f" v{scope.version}"
    sections = "".join(_section(s, scope.target_precision) for s in report.versions)
    if not report.versions:
        sections = '<p class="advice empty">No submission in this range.</p>'
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Agreement report · {what}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<header class="page">
<h1>Model vs reviewers: agreement report</h1>
<div class="meta">{what} · submissions from {scope.since:%Y-%m-%d %H:%M} to
{scope.until:%Y-%m-%d %H:%M} UTC · target precision {scope.target_precision:.0%} ·
generated {report.generated_at:%Y-%m-%d %H:%M} UTC · tenant {scope.tenant_id}</div>
</header>
{sections}
<footer>Labels are final reviewer decisions (the latest by a reviewer or on appeal). Intervals are
Wilson 95% score intervals. Threshold figures replay the service's own decision rules over the
stored verdicts, with confidences read to two decimals; no model was called.</footer>
</main>
</body>
</html>
"""
