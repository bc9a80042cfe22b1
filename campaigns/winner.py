"""Winner mode's statistics: a pooled two-proportion z-test of the best variant against each other one.

The sample's figures per variant are (successes, trials): opens over accepted pushes for the open
rate, converted over reached profiles for the conversion rate. The variant with the highest rate
wins when, against every other variant, the two-sided test rejects "same rate" at the stated
confidence (p < 1 − confidence) — an intersection-union test, so the stated level holds without a
correction for the number of comparisons. Otherwise the fallback applies, and the reason says
which comparison fell short, with its numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def two_proportion_z(a: tuple[int, int], b: tuple[int, int]) -> tuple[float, float] | None:
    """z and its two-sided p-value for rate(a) − rate(b), each (successes, trials), under the pooled
    null hypothesis of equal rates. None when a side has no trials or the pooled rate is 0 or 1
    (no variance: nothing can be told apart)."""
    (xa, na), (xb, nb) = a, b
    if na <= 0 or nb <= 0:
        return None
    pooled = (xa + xb) / (na + nb)
    se = math.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))
    if se == 0:
        return None
    z = (xa / na - xb / nb) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


@dataclass
class Decision:
    """What the test found: the winning variant's number (None: no winner), the figures and comparisons."""

    winner: int | None
    figures: list[dict]
    comparisons: list[dict] = field(default_factory=list)
    reason: str = ""


def _label(number: int) -> str:
    return chr(ord("A") + number - 1)


def winner_decide(counts: dict[int, tuple[int, int]], *, numbers: list[int], confidence: int, metric: str) -> Decision:
    """Pick the best of the variants ``numbers`` from their sample ``counts`` ({number: (successes,
    trials)}), if it beats each other one at ``confidence`` percent; the reason says why or why not."""
    alpha = 1 - confidence / 100
    figures = []
    for number in numbers:
        successes, trials = counts.get(number, (0, 0))
        rate = successes / trials if trials else None
        figures.append(
            {
                "variant": _label(number),
                "number": number,
                "successes": successes,
                "trials": trials,
                "rate": round(rate, 4) if rate is not None else None,
            }
        )
    what = "open rate" if metric == "open_rate" else "conversion rate"
    measured = [f for f in figures if f["trials"]]
    if len(measured) < len(figures):
        missing = ", ".join(f["variant"] for f in figures if not f["trials"])
        return Decision(None, figures, reason=f"No winner: variant {missing} reached nobody in the sample.")
    best = max(figures, key=lambda f: (f["successes"] / f["trials"], -f["number"]))
    comparisons, short = [], []
    for other in figures:
        if other is best:
            continue
        test = two_proportion_z((best["successes"], best["trials"]), (other["successes"], other["trials"]))
        z, p = test if test is not None else (0.0, 1.0)
        significant = z > 0 and p < alpha
        comparisons.append(
            {"variant": other["variant"], "z": round(z, 3), "p": round(p, 4), "significant": significant}
        )
        if not significant:
            short.append(f"{other['variant']} (z = {z:.2f}, p = {p:.3f})")
    rate = f"{best['successes'] / best['trials']:.1%}"
    if short:
        return Decision(
            None,
            figures,
            comparisons,
            reason=f"No winner at {confidence}%: {best['variant']} had the best {what} ({rate}) but is not "
            f"significantly better than {', '.join(short)}; p must be below {alpha:.2f}.",
        )
    beaten = ", ".join(f"{c['variant']} (z = {c['z']:.2f}, p = {c['p']:.4f})" for c in comparisons)
    return Decision(
        best["number"],
        figures,
        comparisons,
        reason=f"{best['variant']} won at {confidence}% with a {what} of {rate}: better than {beaten}.",
    )


def wait_text(minutes: int) -> str:
    hours, rest = divmod(int(minutes), 60)
    return " ".join(
        part for part in (f"{hours} h" if hours else "", f"{rest} min" if rest or not hours else "") if part
    )


def winner_settings_text(settings: dict) -> str:
    """Winner mode's settings in a line, as the approver reviews them."""
    metric = "open rate" if settings["metric"] == "open_rate" else "conversion rate"
    if settings["metric"] == "conversion_rate" and settings.get("goal"):
        goal = settings["goal"]
        metric += f" ({goal['event'] or 'no event'} within {goal['window_hours']} h of {goal['anchor']})"
    fallback = (
        f"the default variant {_label(settings['fallback_variant'])}"
        if settings["fallback"] == "default_variant" and settings.get("fallback_variant")
        else "all variants in their shares"
    )
    return (
        f"a sample of {settings['sample_share']}% gets the variants; after {wait_text(settings['wait_minutes'])} the "
        f"winner by {metric} (two-proportion z-test at {settings['confidence']}% confidence) goes to the rest; "
        f"no winner: {fallback}"
    )
