"""Rule engine speed: full rule-set evaluations against the plain-Python floor, and backtest throughput.

    python bench/engine.py            # 100,000 contexts, 500 generated rules, 100,000-row backtest
    python bench/engine.py --quick    # 10,000 contexts, 10,000-row backtest

For each rule set it prints median and p99 microseconds per full evaluation
(kyc.scoring.decide.evaluate: every condition, then score, decision, reasons) next to the same conditions
written as a plain Python function with the same outcome code (the floor), measured in the same
run over the same contexts, and their ratio (target: within 1.5x). The backtest figure is
evaluations replayed per second from a SQLite file (target: at least 20,000/s).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kyc.engine import RuleSet  # noqa: E402
from kyc.scoring import decide  # noqa: E402
from kyc.scoring.decide import evaluate  # noqa: E402
from kyc.signals import SCHEMA  # noqa: E402

from stats import percentile  # noqa: E402  (bench/, the script's folder)

ROOT = Path(__file__).resolve().parent.parent
STRINGS = {
    "email.domain": ["gmail.com", "yahoo.com", "mailinator.com", "corp.example", "mail.ru", "proton.me"],
    "phone.region": ["US", "GB", "NG", "IN", "BR", "DE"],
    "phone.line_type": ["mobile", "fixed_line", "voip", "toll_free", "premium_rate", "fixed_line_or_mobile"],
    "device.browser": ["Chrome", "Firefox", "Safari", "HeadlessChrome", "Edge", "Python Requests"],
    "device.os": ["Windows", "Mac OS X", "Linux", "Android", "iOS"],
    "device.class": ["desktop", "mobile", "tablet", "bot", "other"],
}


# --- contexts -----------------------------------------------------------------------------------

def make_contexts(n: int, rng: random.Random) -> list[dict]:
    """Varied signal dicts over the whole schema; about one field in ten is missing."""
    fields = list(SCHEMA)
    contexts = []
    for _ in range(n):
        ctx: dict[str, dict] = {}
        for f in fields:
            if rng.random() < 0.1:
                continue
            if f.type == "bool":
                value = rng.random() < 0.2
            elif f.type == "int":
                value = rng.choice([0, 1, 1, 1, 2, 3, 5, 8, 20, 40]) if f.family == "velocity" else rng.randint(0, 9000)
            elif f.type == "float":
                value = rng.uniform(-12, 12)
            else:
                value = rng.choice(STRINGS.get(f.name, ["a", "b", "xyz", "Headless", "example"]))
            ctx.setdefault(f.family, {})[f.key] = value
        contexts.append(ctx)
    return contexts


# --- a generated rule set, in the rule language and as plain Python -----------------------------

def generate_rules(n: int, rng: random.Random) -> tuple[str, str]:
    """n rules as YAML, and the same conditions as the body of a plain Python function."""
    by_type: dict[str, list] = {}
    for f in SCHEMA:
        by_type.setdefault(f.type, []).append(f)
    yaml_rules, py_conditions = [], []
    for i in range(n):
        cond, py = _condition(rng, by_type)
        if rng.random() < 0.5:
            cond2, py2 = _condition(rng, by_type)
            joiner = rng.choice(["and", "or"])
            cond, py = f"({cond}) {joiner} ({cond2})", f"({py}) {joiner} ({py2})"
        action = rng.choice(["allow", "review", "block", "verify"])
        requires = "\n  requires: [phone]" if action == "verify" else ""
        mode = "\n  mode: shadow" if rng.random() < 0.1 else ""
        yaml_rules.append(f"- id: gen_{i}\n  description: generated {i}\n  when: '{cond}'\n  score: {rng.randint(1, 40)}"
                          f"\n  action: {action}{requires}{mode}\n")
        py_conditions.append(py)
    return "\n".join(yaml_rules), py_conditions


def _condition(rng: random.Random, by_type: dict) -> tuple[str, str]:
    kind = rng.choice(["bool", "not_bool", "int", "int", "sum", "str_eq", "str_in", "startswith"])
    if kind in ("bool", "not_bool"):
        f = rng.choice(by_type["bool"])
        v = _local(f.name)
        return (f.name, f"{v} is True") if kind == "bool" else (f"not {f.name}", f"{v} is False")
    if kind == "int":
        f = rng.choice(by_type["int"])
        op, n = rng.choice([">=", "<", ">", "<="]), rng.choice([1, 2, 3, 5, 10, 1500])
        return f"{f.name} {op} {n}", f"{_local(f.name)} is not None and {_local(f.name)} {op} {n}"
    if kind == "sum":
        a, b = rng.sample(by_type["int"], 2)
        va, vb = _local(a.name), _local(b.name)
        return f"{a.name} + {b.name} > 6", f"{va} is not None and {vb} is not None and {va} + {vb} > 6"
    f = rng.choice([x for x in by_type["str"] if x.name in STRINGS])
    v = _local(f.name)
    if kind == "str_eq":
        value = rng.choice(STRINGS[f.name])
        return f'{f.name} == "{value}"', f"{v} is not None and {v} == {value!r}"
    if kind == "str_in":
        values = rng.sample(STRINGS[f.name], 2)
        return (f"{f.name} in [{', '.join(repr(x).replace(chr(39), chr(34)) for x in values)}]",
                f"{v} is not None and {v} in {set(values)!r}")
    prefix = rng.choice(STRINGS[f.name])[:2]
    return f'startswith({f.name}, "{prefix}")', f"{v} is not None and {v}.startswith({prefix!r})"


def _local(name: str) -> str:
    return "v_" + name.replace(".", "_")


def plain_function(py_conditions: list[str], rules) -> callable:
    """The floor: a hand-style Python function reading each signal once, testing each condition,
    then the same score/decision/reasons code as the engine's outcome."""
    used = sorted({f.name for f in SCHEMA if any(_local(f.name) in c for c in py_conditions)})
    lines = ["def plain(S):"]
    for family in sorted({n.split('.')[0] for n in used}):
        lines.append(f"    fam_{family} = S.get({family!r}) or {{}}")
    for name in used:
        family, key = name.split(".", 1)
        lines.append(f"    {_local(name)} = fam_{family}.get({key!r})")
    lines.append("    hits = []")
    for i, cond in enumerate(py_conditions):
        lines += ["    try:", f"        if {cond}:", f"            hits.append({i})",
                  "    except (TypeError, ZeroDivisionError):", "        pass"]
    lines.append("    return outcome(hits, S)")
    namespace = {"outcome": _plain_outcome(rules)}
    exec("\n".join(lines), namespace)  # noqa: S102 - benchmark code generated above
    return namespace["plain"]


def _plain_outcome(rules):
    """The floor decides its hits with the engine's own decide step: only the conditions differ."""
    def plain(hits, signals):
        return decide.outcome([rules[i] for i in hits], decide.completed_verifications(signals))
    return plain


SIGNUP_FLOOR = [
    "v_email_valid is False", "v_email_disposable is True", "v_phone_valid is False", "v_phone_voip is True",
    "v_phone_line_type is not None and v_phone_line_type in {'premium_rate', 'toll_free', 'shared_cost'}",
    "v_ip_private is True", "v_device_headless is True", "v_device_bot is True and v_device_headless is False",
    "v_device_ua_missing is True", "v_device_form_fill_ms is not None and v_device_form_fill_ms < 1500",
    "v_velocity_ip_1h is not None and v_velocity_ip_1h >= 5",
    "v_velocity_ip_prefix_24h is not None and v_velocity_ip_prefix_24h >= 20",
    "v_velocity_device_24h is not None and v_velocity_device_24h >= 3",
    "v_velocity_email_24h is not None and v_velocity_email_24h >= 2",
    "v_velocity_phone_range_24h is not None and v_velocity_phone_range_24h >= 4",
    "v_email_local_length is not None and v_email_local_length >= 12 and "
    "v_email_local_digits is not None and v_email_local_digits >= 5",
]


# --- timing -----------------------------------------------------------------------------------

def time_calls(fn, contexts) -> list[int]:
    clock = time.perf_counter_ns
    out = []
    for ctx in contexts:
        t0 = clock()
        fn(ctx)
        out.append(clock() - t0)
    return out


def compare(name: str, engine_fn, floor_fn, contexts) -> None:
    engine_ns, floor_ns = [], []
    for _ in range(2):              # alternate, so drift on a shared machine hits both sides
        engine_ns += time_calls(engine_fn, contexts)
        floor_ns += time_calls(floor_fn, contexts)
    e_med, e_p99 = _stats(engine_ns)
    f_med, f_p99 = _stats(floor_ns)
    print(f"{name:<34} engine median {e_med:7.2f} µs  p99 {e_p99:7.2f} µs | plain Python median {f_med:7.2f} µs  "
          f"p99 {f_p99:7.2f} µs | ratio {e_med / f_med:4.2f}x median, {e_p99 / f_p99:4.2f}x p99")


def _stats(ns: list[int]) -> tuple[float, float]:
    return statistics.median(ns) / 1000, percentile(ns, 0.99) / 1000


def check_same_outcomes(rules: RuleSet, floor_fn, contexts) -> None:
    for ctx in contexts[:2000]:
        assert evaluate(rules, "signup", ctx) == floor_fn(ctx), ctx


# --- backtest throughput ----------------------------------------------------------------------

def bench_backtest(rows: int, contexts: list[dict], rules: RuleSet, database_url: str | None) -> None:
    from sqlalchemy import insert

    from kyc.backtest import backtest
    from kyc.db import make_engine
    from kyc.models import Account, Evaluation
    from kyc.runtime import upgrade_database

    with tempfile.TemporaryDirectory() as tmp:
        url = database_url or f"sqlite:///{tmp}/bench.db"
        upgrade_database(url)
        engine = make_engine(url)
        now = datetime.now(timezone.utc)
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(Evaluation.__table__.delete())
            conn.execute(Account.__table__.delete())
            accounts = [{"id": f"acct_{i}", "first_seen_at": now, "last_seen_at": now, "decision": "allow", "score": 0,
                         "reasons": [], "required_verifications": [], "subjects": {}, "state_version": 1,
                         "label": "fraud" if i % 50 == 0 else ("legit" if i % 50 == 1 else None)}
                        for i in range(rows // 2)]
            for i in range(0, len(accounts), 5000):
                conn.execute(insert(Account), accounts[i:i + 5000])
            batch = []
            for i in range(rows):
                ctx = contexts[i % len(contexts)]
                outcome = evaluate(rules, "signup", ctx)
                batch.append({"id": f"ev_{i:09d}", "account_id": f"acct_{i % (rows // 2)}", "subject": "signup",
                              "trigger": "live", "occurred_at": now - timedelta(seconds=i * 7), "input": {},
                              "signals": ctx, "reasons": outcome.reasons, "decision": outcome.decision,
                              "score": outcome.score, "required_verifications": [], "rules_version": "sha256:x"})
                if len(batch) == 5000:
                    conn.execute(insert(Evaluation), batch)
                    batch = []
            if batch:
                conn.execute(insert(Evaluation), batch)
        print(f"backtest: stored {rows:,} evaluations in {time.perf_counter() - started:.1f}s "
              f"({engine.dialect.name})")
        report = backtest(engine, rules, now - timedelta(days=3650), now + timedelta(seconds=1))
        assert report.evaluations == rows
        print(f"backtest: replayed {report.evaluations:,} evaluations in {report.seconds:.2f}s = "
              f"{report.rate:,.0f} evaluations/s (target >= 20,000/s); "
              f"{report.changed_evaluations:,} decisions changed (expected 0: same rules)")
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10,000 contexts and a 10,000-row backtest")
    parser.add_argument("--rules", type=int, default=500, help="size of the generated rule set")
    parser.add_argument("--database-url", help="backtest against this database instead of a temporary SQLite "
                                               "file (its evaluations and accounts tables are emptied!)")
    args = parser.parse_args()
    n = 10_000 if args.quick else 100_000
    rng = random.Random(8)
    contexts = make_contexts(n, rng)
    print(f"{n:,} contexts, python {sys.version.split()[0]}")
    gc.collect()
    gc.freeze()          # the contexts are long-lived: keep full collections from walking them mid-timing

    # The hand-written floor mirrors a frozen copy of the first shipped signup rules
    # (bench/data/signup_floor.yaml); today's rules/ are timed by the engine alone below.
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "signup.yaml").write_text((ROOT / "bench" / "data" / "signup_floor.yaml").read_text())
        (Path(tmp) / "lists").symlink_to(ROOT / "rules" / "lists")
        first = RuleSet.load(Path(tmp), SCHEMA)
    floor = plain_function(SIGNUP_FLOOR, first.subjects["signup"].rules)
    check_same_outcomes(first, floor, contexts)
    compare(f"first signup set ({len(first.subjects['signup'].rules)} rules)",
            lambda c: evaluate(first, "signup", c), floor, contexts)
    shipped = RuleSet.load(ROOT / "rules", SCHEMA)
    for subject in shipped.subjects:
        ns = time_calls(lambda c, s=subject: evaluate(shipped, s, c), contexts)
        med, p99 = _stats(ns)
        print(f"shipped {subject} ({len(shipped.subjects[subject].rules)} rules)  engine median {med:.2f} µs  "
              f"p99 {p99:.2f} µs (no hand-written floor)")

    with tempfile.TemporaryDirectory() as tmp:
        yaml_text, py_conditions = generate_rules(args.rules, rng)
        (Path(tmp) / "signup.yaml").write_text(yaml_text)
        started = time.perf_counter()
        generated = RuleSet.load(Path(tmp), SCHEMA)
        load_ms = (time.perf_counter() - started) * 1000
        gen_floor = plain_function(py_conditions, generated.subjects["signup"].rules)
        check_same_outcomes(generated, gen_floor, contexts)
        compare(f"generated ({args.rules} rules, load {load_ms:.0f} ms)",
                lambda c: evaluate(generated, "signup", c), gen_floor, contexts)

    bench_backtest(10_000 if args.quick else 100_000, contexts, shipped, args.database_url)


if __name__ == "__main__":
    main()
