"""`kyc rules backtest`: replay stored evaluations through a candidate rule set.

Each live evaluation in the window is evaluated again by the same engine
(kyc.scoring.decide.evaluate) on the signals recorded with it, as they were at the time, except
the facts rules/lists/ decide (email.free, phone.voip), which are read again under the
candidate's lists (kyc.signals.relisted): a list edit is backtested like a rule edit. Its stored
decision is "before", the candidate's is "after". Rows stream in keyset-paginated batches
((occurred_at, id); usage re-evaluations (created_at, id), below), so memory stays bounded
whatever the window holds: only counters, the first N changed accounts and the ids of labeled
accounts (few: ops set labels by hand) are kept.

Rescore evaluations are left out: they re-judge an event that already has its live
evaluation in the window, and would count it twice. A usage re-evaluation (trigger "usage": a
usage report re-evaluated the account) keeps its signup's event time but reads the facts of the
moment the report came (that day's usage, the cluster then): it is in the window when it was
made there (created_at), so a window that ends before a report never replays what it taught, and
one that holds the report replays it however old the signup is.

Ranking quality, on labeled accounts: each labeled account is judged by its highest candidate
score and its most severe candidate decision over its evaluations in the window. The report gives
the ROC AUC of that score (the chance that a fraud account outscores a legitimate one, ties
counting half) and, at each decision threshold, the precision and recall of "at least this
decision", so ops see whether the score orders risk, not only which rules hit.
"""

from __future__ import annotations

import re
import time
from functools import partial
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

import orjson
from sqlalchemy import Text, and_, cast, func, or_, select
from sqlalchemy.engine import Engine

from kyc.engine import RuleSet
from kyc.models import DECISIONS, SEVERITY, Account, Evaluation
from kyc.scoring.decide import evaluate
from kyc.signals import relisted

LABELS = ("fraud", "legit")
_DURATION = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`30d`, `12h`, `90m`, `2w` before now, or an RFC 3339 / ISO date (UTC if no offset)."""
    now = now or datetime.now(timezone.utc)
    match = _DURATION.match(text.strip())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"'{text}' is neither a duration like 30d / 12h nor a date like 2026-11-01") from None
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


@dataclass
class RuleStats:
    subject: str
    rule: str
    mode: str
    hits: int = 0
    fraud: set[str] = field(default_factory=set)      # labeled accounts caught
    legit: set[str] = field(default_factory=set)

    @property
    def precision(self) -> float | None:
        labeled = len(self.fraud) + len(self.legit)
        return len(self.fraud) / labeled if labeled else None


@dataclass(frozen=True)
class Threshold:
    """Labeled accounts whose decision is `decision` or more severe."""
    decision: str
    fraud: int            # true positives
    legit: int            # false positives
    fraud_total: int
    legit_total: int

    @property
    def precision(self) -> float | None:
        flagged = self.fraud + self.legit
        return self.fraud / flagged if flagged else None

    @property
    def recall(self) -> float | None:
        return self.fraud / self.fraud_total if self.fraud_total else None

    @property
    def legit_share(self) -> float | None:
        """The share of legitimate accounts at this decision or worse (false-positive rate)."""
        return self.legit / self.legit_total if self.legit_total else None


def roc_auc(fraud_scores: list[float], legit_scores: list[float]) -> float | None:
    """The chance that a random fraud account scores above a random legitimate one, ties counting
    half (the Mann-Whitney U statistic over both counts); None without both labels."""
    if not fraud_scores or not legit_scores:
        return None
    ranked = sorted([(s, 1) for s in fraud_scores] + [(s, 0) for s in legit_scores])
    # Each fraud score beats the legit scores below it and ties half of those equal to it.
    wins, below, i = 0.0, 0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        fraud_here = sum(label for _, label in ranked[i:j])
        legit_here = (j - i) - fraud_here
        wins += fraud_here * (below + legit_here / 2)
        below += legit_here
        i = j
    return wins / (len(fraud_scores) * len(legit_scores))


def thresholds(outcomes: dict[str, tuple[str, int, str]]) -> list[Threshold]:
    """Precision and recall of each decision as a threshold; `outcomes`: account -> (label,
    score, decision)."""
    totals = {label: sum(1 for lab, _, _ in outcomes.values() if lab == label) for label in LABELS}
    out = []
    for decision in DECISIONS:
        at_least = [lab for lab, _, d in outcomes.values() if SEVERITY[d] >= SEVERITY[decision]]
        out.append(Threshold(decision, at_least.count("fraud"), at_least.count("legit"),
                             totals["fraud"], totals["legit"]))
    return out


@dataclass
class Change:
    account_id: str
    evaluation_id: str
    subject: str
    occurred_at: datetime
    before: str
    after: str


@dataclass
class BacktestReport:
    since: datetime
    until: datetime
    rules_version: str
    evaluations: int = 0
    matrix: dict[tuple[str, str], int] = field(default_factory=dict)      # (before, after) -> count
    rules: dict[tuple[str, str], RuleStats] = field(default_factory=dict)  # (subject, rule id)
    evaluations_by_subject: dict[str, int] = field(default_factory=dict)
    changed: list[Change] = field(default_factory=list)                   # the first N accounts
    changed_evaluations: int = 0
    labeled: dict[str, set[str]] = field(default_factory=lambda: {label: set() for label in LABELS})
    # Labeled account -> (label, highest candidate score, most severe candidate decision).
    outcomes: dict[str, tuple[str, int, str]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def auc(self) -> float | None:
        scores = {label: [s for lab, s, _ in self.outcomes.values() if lab == label] for label in LABELS}
        return roc_auc(scores["fraud"], scores["legit"])

    @property
    def thresholds(self) -> list[Threshold]:
        return thresholds(self.outcomes)

    @property
    def rate(self) -> float:
        return self.evaluations / self.seconds if self.seconds else 0.0


class WindowTooLarge(ValueError):
    """The window holds more evaluations than the caller may replay (`most`)."""

    def __init__(self, total: int, most: int):
        super().__init__(f"the window holds {total:,} evaluations, more than the {most:,} replayed here")
        self.total, self.most = total, most


def backtest(engine: Engine, rules: RuleSet, since: datetime, until: datetime | None = None, *,
             limit_changed: int = 20, batch_size: int = 5000, most: int | None = None,
             progress: Callable[[int, int, float], None] | None = None) -> BacktestReport:
    """Replay the evaluations of [since, until) through `rules`: those made as events came
    (trigger "live", by event time) and those usage reports made (trigger "usage": a usage rule
    acts there; by when they were made), not the rescores, which repeat them. `most`: raise
    WindowTooLarge, having replayed nothing, when the window holds more evaluations."""
    until = until or datetime.now(timezone.utc)
    report = BacktestReport(since, until, rules.version)
    for subject, compiled in rules.subjects.items():
        for rule in compiled.rules:
            report.rules[(subject, rule.id)] = RuleStats(subject, rule.id, rule.mode)
    # Each replayed kind of evaluation in its own keyset pass, by the time its facts are of.
    passes = [(Evaluation.occurred_at, (Evaluation.trigger == "live", Evaluation.occurred_at >= since,
                                        Evaluation.occurred_at < until)),
              (Evaluation.created_at, (Evaluation.trigger == "usage", Evaluation.created_at >= since,
                                       Evaluation.created_at < until))]
    matrix = {(b, a): 0 for b in DECISIONS for a in DECISIONS}
    by_subject: dict[str, int] = {}
    hits: dict[tuple[str, str], int] = dict.fromkeys(report.rules, 0)
    labeled, changed, outcome_of, loads = report.labeled, report.changed, partial(evaluate, rules), orjson.loads
    outcomes = report.outcomes
    started = time.perf_counter()
    with engine.connect() as conn:
        total = sum(conn.execute(select(func.count()).select_from(Evaluation).where(*window)).scalar_one()
                    for _, window in passes)
        if most is not None and total > most:
            raise WindowTooLarge(total, most)
        for at, window in passes:
            query = (
                select(at, Evaluation.id, Evaluation.occurred_at, Evaluation.account_id, Evaluation.subject,
                       # As text, decoded here with orjson: JSON decoding is most of the cost of a row.
                       Evaluation.decision, cast(Evaluation.signals, Text), cast(Evaluation.input, Text),
                       Account.label)
                .join(Account, Account.id == Evaluation.account_id)
                .where(*window)
                .order_by(at, Evaluation.id)
                .limit(batch_size)
            )
            last: tuple[datetime, str] | None = None
            while True:
                # The plain `>=` lets the index start at the last row instead of the window's start.
                page = query if last is None else query.where(at >= last[0], or_(
                    at > last[0], and_(at == last[0], Evaluation.id > last[1])))
                rows = conn.execute(page).all()
                if not rows:
                    break
                for _, evaluation_id, occurred_at, account_id, subject, before, signals, inp, label in rows:
                    facts = loads(signals) if signals else {}
                    if subject == "signup":
                        # The input only where a stored number is read again under the candidate's lists.
                        facts = relisted(facts, loads(inp) if inp and "line_type" in facts.get("phone", ()) else {},
                                         rules.lists)
                    outcome = outcome_of(subject, facts)
                    after = outcome.decision
                    matrix[(before, after)] = matrix.get((before, after), 0) + 1
                    by_subject[subject] = by_subject.get(subject, 0) + 1
                    for reason in outcome.reasons:
                        hits[(subject, reason["rule"])] += 1
                    if label in labeled:
                        labeled[label].add(account_id)
                        _, score, worst = outcomes.get(account_id, (label, outcome.score, after))
                        outcomes[account_id] = (label, max(score, outcome.score),
                                                after if SEVERITY[after] > SEVERITY[worst] else worst)
                        for reason in outcome.reasons:
                            getattr(report.rules[(subject, reason["rule"])], label).add(account_id)
                    if before != after:
                        report.changed_evaluations += 1       # the rest are only counted: memory stays flat
                        if len(changed) < limit_changed and all(c.account_id != account_id for c in changed):
                            changed.append(Change(account_id, evaluation_id, subject, occurred_at, before, after))
                report.evaluations += len(rows)
                last = (rows[-1][0], rows[-1][1])
                if progress:
                    progress(report.evaluations, total, time.perf_counter() - started)
                if len(rows) < batch_size:
                    break
    for key, count in hits.items():
        report.rules[key].hits = count
    report.evaluations_by_subject = by_subject
    report.matrix = matrix
    report.seconds = time.perf_counter() - started
    return report


def format_report(report: BacktestReport) -> str:
    """The plain-text report `kyc rules backtest` prints."""
    out = [f"backtest of {report.rules_version}",
           f"window {_iso(report.since)} .. {_iso(report.until)}: {report.evaluations:,} live evaluations "
           f"({', '.join(f'{s}: {n:,}' for s, n in sorted(report.evaluations_by_subject.items())) or 'none'}) "
           f"in {report.seconds:.1f}s"]
    out += ["", "decisions, before (rows) -> after (columns)",
            f"{'':>10}" + "".join(f"{d:>10}" for d in DECISIONS) + f"{'total':>10}"]
    for before in DECISIONS:
        row = [report.matrix.get((before, after), 0) for after in DECISIONS]
        out.append(f"{before:>10}" + "".join(f"{n:>10,}" for n in row) + f"{sum(row):>10,}")
    out.append(f"{'total':>10}" + "".join(f"{sum(report.matrix.get((b, a), 0) for b in DECISIONS):>10,}"
                                          for a in DECISIONS) + f"{report.evaluations:>10,}")
    fraud_total, legit_total = (len(report.labeled[label]) for label in LABELS)
    width = rule_column(report.rules.values(), 32)
    out += ["", f"rules (labeled accounts in window: {fraud_total} fraud, {legit_total} legit)",
            f"{'subject':<16}{'rule':<{width}}{'mode':<8}{'hits':>9}{'rate':>9}{'fraud':>7}{'legit':>7}{'precision':>11}"]
    for stats in sorted(report.rules.values(), key=lambda s: (s.subject, -s.hits, s.rule)):
        rate = stats.hits / report.evaluations_by_subject[stats.subject] \
            if report.evaluations_by_subject.get(stats.subject) else 0.0
        precision = "-" if stats.precision is None else f"{stats.precision:.1%}"
        out.append(f"{stats.subject:<16}{stats.rule:<{width}}{stats.mode:<8}{stats.hits:>9,}{rate:>9.2%}"
                   f"{len(stats.fraud):>7}{len(stats.legit):>7}{precision:>11}")
    auc = report.auc
    out += ["", "ranking on labeled accounts (each by its highest score and most severe decision in the window)",
            f"ROC AUC of the score: {'-' if auc is None else f'{auc:.3f}'}",
            f"{'decision >=':<12}{'fraud':>8}{'legit':>8}{'precision':>11}{'recall':>9}{'legit share':>13}"]
    for t in report.thresholds:
        out.append(f"{t.decision:<12}{t.fraud:>8}{t.legit:>8}{_share(t.precision):>11}{_share(t.recall):>9}"
                   f"{_share(t.legit_share):>13}")
    out += ["", f"decision changes: {report.changed_evaluations:,} evaluations"
                + (f"; the first {len(report.changed)} accounts:" if report.changed else "")]
    for change in report.changed:
        out.append(f"  {change.account_id:<40} {change.subject:<16} {change.before:>7} -> {change.after:<7} "
                   f"{change.evaluation_id}  {_iso(change.occurred_at)}")
    return "\n".join(out)


def rule_column(stats, least: int) -> int:
    """The width of a table's rule column: `least`, or wider for the longest rule id and a space."""
    return max([least, *(len(s.rule) + 2 for s in stats)])


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
