"""The report's charts, drawn with matplotlib and returned as SVG documents.

Only the object-oriented API is used (`Figure`, never `pyplot`): no global state and no GUI
backend, so charts can be drawn from API threads. Text is drawn as paths, so an SVG shows the
same on a machine without the fonts.
"""

from __future__ import annotations

import io
from typing import Any, cast

from moderation.reports.schemas import Calibration, CategoryReport, ThresholdSweep

BLUE = "#2563eb"
ORANGE = "#ea580c"
GREEN = "#16a34a"
GREY = "#6b7280"
RED = "#dc2626"

_STYLE = {
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e5e7eb",
    "grid.linewidth": 0.8,
    "axes.edgecolor": "#9ca3af",
    "axes.titleweight": "bold",
    "axes.titlesize": 11,
    "legend.frameon": False,
    "svg.hashsalt": "moderation-report",
}


def _svg(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    return buffer.getvalue()


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _errors(values: list[float | None], lows: list[float | None], highs: list[float | None]) -> Any:
    below = [
        (v - lo) if v is not None and lo is not None else 0.0
        for v, lo in zip(values, lows, strict=True)
    ]
    above = [
        (hi - v) if v is not None and hi is not None else 0.0
        for v, hi in zip(values, highs, strict=True)
    ]
    return [below, above]


def category_bars(categories: list[CategoryReport]) -> bytes:
    """Precision and recall per category, each with its Wilson interval."""
    import matplotlib

    with matplotlib.rc_context(cast(Any, _STYLE)):
        figure = _figure(8.5, 3.4)
        axes = figure.add_subplot()
        names = [c.category for c in categories]
        positions = list(range(len(names)))
        width = 0.38
        for offset, label, color, rates in (
            (-width / 2, "precision", BLUE, [c.flagging.precision for c in categories]),
            (width / 2, "recall", ORANGE, [c.flagging.recall for c in categories]),
        ):
            values = [r.value for r in rates]
            axes.bar(
                [p + offset for p in positions],
                [v if v is not None else 0.0 for v in values],
                width,
                label=label,
                color=color,
                yerr=_errors(values, [r.low for r in rates], [r.high for r in rates]),
                error_kw={"ecolor": "#374151", "elinewidth": 1, "capsize": 3},
            )
            for position, rate in zip(positions, rates, strict=True):
                if rate.value is None:
                    axes.text(position + offset, 0.02, "n/a", ha="center", fontsize=8, color=GREY)
        axes.set_xticks(positions, names, rotation=20, ha="right")
        axes.set_ylim(0, 1.12)
        axes.set_ylabel("share")
        axes.set_title("Per category: the model's flags against reviewers (95% intervals)")
        axes.legend(loc="upper right", ncols=2, fontsize=9)
        return _svg(figure)


def calibration_curve(calibrations: list[Calibration]) -> bytes:
    """Reliability diagram: stated score against how often reviewers agreed."""
    import matplotlib

    labels = {
        "confidence": ("stated confidence", BLUE, "o"),
        "rating_probability": ("rating-token probability", ORANGE, "s"),
    }
    with matplotlib.rc_context(cast(Any, _STYLE)):
        figure = _figure(5.2, 4.2)
        axes = figure.add_subplot()
        axes.plot(
            [0, 1], [0, 1], linestyle="--", color=GREY, linewidth=1, label="perfectly calibrated"
        )
        for calibration in calibrations:
            label, color, marker = labels.get(calibration.scale, (calibration.scale, GREEN, "^"))
            bins = [b for b in calibration.bins if b.observed.value is not None]
            if not bins:
                continue
            xs = [b.mean_score for b in bins]
            ys = [b.observed.value or 0.0 for b in bins]
            axes.errorbar(
                xs,
                ys,
                yerr=_errors(
                    [b.observed.value for b in bins],
                    [b.observed.low for b in bins],
                    [b.observed.high for b in bins],
                ),
                color=color,
                marker=marker,
                markersize=5,
                linewidth=1.5,
                capsize=2,
                label=label,
            )
        axes.set_xlim(0, 1.02)
        axes.set_ylim(0, 1.05)
        axes.set_xlabel("model's score for its rating")
        axes.set_ylabel("share reviewers agreed with")
        axes.set_title("Calibration")
        axes.legend(loc="upper left", fontsize=9)
        return _svg(figure)


def threshold_tradeoff(
    sweep: ThresholdSweep, suggested: float | None, target_precision: float
) -> bytes:
    """What each min_confidence would do: automation against precision and errors."""
    import matplotlib

    with matplotlib.rc_context(cast(Any, _STYLE)):
        figure = _figure(8.5, 4.4)
        axes = figure.add_subplot()
        xs = [p.min_confidence for p in sweep.min_confidence]

        def series(values: list[float | None]) -> list[float]:
            return [v if v is not None else float("nan") for v in values]

        axes.plot(
            xs,
            series([p.automatic.value for p in sweep.min_confidence]),
            color=BLUE,
            linewidth=2,
            label="decided automatically",
        )
        axes.plot(
            xs,
            series([p.precision.value for p in sweep.min_confidence]),
            color=GREEN,
            linewidth=2,
            label="restrictions and blocks upheld",
        )
        axes.fill_between(
            xs,
            series([p.precision.low for p in sweep.min_confidence]),
            series([p.precision.high for p in sweep.min_confidence]),
            color=GREEN,
            alpha=0.15,
            linewidth=0,
        )
        axes.plot(
            xs,
            series([p.error.value for p in sweep.min_confidence]),
            color=RED,
            linewidth=2,
            label="automatic decisions reviewers changed",
        )
        axes.axhline(target_precision, color=GREEN, linestyle=":", linewidth=1)
        axes.text(
            xs[0] if xs else 0.5,
            target_precision + 0.01,
            f"target {target_precision:.0%}",
            color=GREEN,
            fontsize=8,
        )
        axes.axvline(sweep.current_min_confidence, color=GREY, linestyle="--", linewidth=1)
        axes.text(sweep.current_min_confidence, 0.02, " now", color=GREY, fontsize=9)
        if suggested is not None and abs(suggested - sweep.current_min_confidence) > 1e-9:
            axes.axvline(suggested, color=ORANGE, linestyle="--", linewidth=1.2)
            axes.text(suggested, 0.08, " suggested", color=ORANGE, fontsize=9)
        axes.set_ylim(0, 1.05)
        axes.set_xlim(min(xs, default=0.5), max(xs, default=1.0))
        axes.set_xlabel("min_confidence")
        axes.set_ylabel("share")
        axes.set_title("Threshold trade-off (replayed over stored verdicts)")
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=3, fontsize=9)
        return _svg(figure)
