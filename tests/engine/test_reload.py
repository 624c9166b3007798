"""Hot reload: a clean set swaps in atomically, a broken one never does, and ops can see which."""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kyc import create_app
from kyc.cli import main
from kyc.engine import RuleSet, RuleSetError
from kyc.models import ApiKey
from kyc import runtime as runtime_module
from kyc.runtime import Runtime
from kyc.security import hash_api_key, new_api_key
from kyc.signals import SCHEMA
from tests.conftest import free_port, RULES_DIR, signup, wait_until

BROKEN = """
- id: broken
  description: a typo
  when: emial.disposable
  score: 10
  action: review
"""


def copy_rules(dest: Path) -> Path:
    shutil.copytree(RULES_DIR, dest)
    return dest


def replace_file(path: Path, text: str) -> None:
    """Write-then-rename, as editors and deploy tools do, so a reader never sees half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def with_rule(text: str, rule_id: str, when: str = "email.domain is not missing", action: str = "review") -> str:
    return text + f"""
- id: {rule_id}
  description: added by a test
  when: {when}
  score: 5
  action: {action}
"""


@pytest.fixture
def live_rules(tmp_path, database_url, make_config):
    """A runtime whose KYC_RULES_DIR is a private copy of rules/ that the test may edit."""
    root = copy_rules(tmp_path / "rules")
    rt = Runtime.start(make_config(database_url, rules_dir=root, rules_poll_seconds=0.05), migrate=False)
    yield rt, root
    rt._watcher_pid = -1            # stops the watcher thread at its next tick
    rt.engine.dispose()


@pytest.fixture
def auth_for():
    """A test client and Authorization header for a given runtime."""
    def make(rt: Runtime):
        key = new_api_key()
        with rt.session() as session, session.begin():
            session.add(ApiKey(name="tests", prefix=key[:10], key_hash=hash_api_key(key)))
        return create_app(runtime=rt).test_client(), {"Authorization": f"Bearer {key}"}

    return make


def test_ops_rules_reports_the_running_set(client, auth, runtime):
    body = client.get("/v1/ops/rules", headers=auth).json
    assert body["version"] == runtime.rules.version
    shipped = yaml.safe_load((RULES_DIR / "signup.yaml").read_text())
    shadow = sum(rule.get("mode") == "shadow" for rule in shipped)
    assert body["subjects"]["signup"] == {"active": len(shipped) - shadow, "shadow": shadow, "disabled": 0}
    assert body["lists"]["free_email_domains"] > 10
    assert body["last_error"] is None and body["process"] == os.getpid()
    assert body["loaded_at"].endswith("Z")
    assert client.get("/v1/ops/rules").status_code == 401


def test_reload_endpoint_swaps_a_clean_set_and_refuses_a_broken_one(live_rules, auth_for):
    rt, root = live_rules
    client, auth = auth_for(rt)
    signup_file = root / "signup.yaml"
    original, before = signup_file.read_text(), rt.rules.version

    replace_file(signup_file, with_rule(original, "added_rule"))
    response = client.post("/v1/ops/rules/reload", headers=auth)
    assert response.status_code == 200 and response.json["reloaded"] is True
    clean = response.json["version"]
    assert clean != before and rt.rules.version == clean
    scored = client.post("/v1/signups", json=signup(account_id="a1"), headers=auth).json
    assert scored["rules_version"] == clean and "added_rule" in [r["rule"] for r in scored["reasons"]]

    replace_file(signup_file, original + BROKEN)
    response = client.post("/v1/ops/rules/reload", headers=auth)
    assert response.status_code == 422
    error = response.json["error"]
    assert error["code"] == "rules_invalid" and error["running_version"] == clean
    assert error["errors"] == [{"file": "rules/signup.yaml", "line": original.count("\n") + 4, "rule": "broken",
                                "kind": "rule", "message": "unknown field 'emial.disposable'",
                                "suggestion": "did you mean email.disposable?"}]
    status = client.get("/v1/ops/rules", headers=auth).json
    assert status["version"] == clean
    assert status["last_error"]["errors"] == error["errors"] and status["last_error"]["at"].endswith("Z")
    scored = client.post("/v1/signups", json=signup(account_id="a2"), headers=auth).json
    assert scored["rules_version"] == clean            # scoring never stopped

    replace_file(signup_file, original)
    response = client.post("/v1/ops/rules/reload", headers=auth)
    assert response.status_code == 200 and response.json["version"] == before
    assert response.json["last_error"] is None


def test_reloading_unchanged_files_keeps_the_running_object(runtime):
    rules = runtime.rules
    assert runtime.reload_rules() is rules


def test_watcher_picks_up_clean_edits_and_keeps_running_set_on_broken_ones(live_rules):
    rt, root = live_rules
    signup_file = root / "signup.yaml"
    original, before = signup_file.read_text(), rt.rules.version
    rt.watch_rules()
    rt.watch_rules()                                   # idempotent: one watcher per process
    assert sum(t.name == "kyc-rules-watcher" for t in threading.enumerate()) >= 1

    replace_file(signup_file, with_rule(original, "watched_rule"))
    wait_until(lambda: rt.rules.version != before)
    edited = rt.rules.version
    assert "watched_rule" in [r.id for r in rt.rules.subjects["signup"].rules]

    replace_file(signup_file, original + BROKEN)
    wait_until(lambda: rt.rules_error is not None)
    assert rt.rules.version == edited
    assert rt.rules_status()["last_error"]["errors"][0]["rule"] == "broken"

    (root / "lists" / "free_email_domains.txt").write_text("gmail.com\n")
    replace_file(signup_file, original)
    wait_until(lambda: rt.rules_error is None and rt.rules.version not in (before, edited))
    assert rt.rules.lists["free_email_domains"] == frozenset({"gmail.com"})


def test_a_watched_runtime_let_go_is_collected_and_its_watcher_ends(tmp_path, database_url, make_config):
    """The watcher's thread ran a bound method of its runtime, so a runtime that had watched its
    rules stayed alive for the life of the process, with its engine and the thread itself (as
    the rescoring thread did: tests/rescore/test_background.py)."""
    rt = Runtime.start(make_config(database_url, rules_dir=copy_rules(tmp_path / "rules"), rules_poll_seconds=0.05),
                       migrate=False)
    before = set(threading.enumerate())
    rt.watch_rules()
    (watcher,) = [t for t in set(threading.enumerate()) - before if t.name == "kyc-rules-watcher"]
    gone = weakref.ref(rt)
    rt.engine.dispose()
    del rt

    def collected() -> bool:
        gc.collect()                    # a runtime sits in reference cycles; a round in progress holds it
        return gone() is None

    wait_until(collected, 30, "the runtime collected")
    watcher.join(timeout=30)
    assert not watcher.is_alive()


def test_a_process_forked_mid_reload_still_sees_the_edit(tmp_path, database_url, make_config, monkeypatch):
    """gunicorn forks workers from the master, whose watcher may be halfway through a reload:
    what a child inherits must never say "these files are read" beside the set from before
    them, or that worker serves the old rules until the next edit."""
    root = copy_rules(tmp_path / "rules")
    rt = Runtime.start(make_config(database_url, rules_dir=root, rules_poll_seconds=0), migrate=False)
    try:
        before = rt.rules.version
        replace_file(root / "signup.yaml", with_rule((root / "signup.yaml").read_text(), "added_rule"))
        seen_mid_reload = []
        loading = runtime_module.load_policy

        def load_as_a_fork_would_see_it(where):
            # What a process forked at this moment would find: the running set, and whether its
            # watcher would still see the files as changed.
            seen_mid_reload.append((rt.rules.version, rt.rules_changed_on_disk()))
            return loading(where)

        monkeypatch.setattr(runtime_module, "load_policy", load_as_a_fork_would_see_it)
        rt.reload_rules()
        assert seen_mid_reload == [(before, True)]
        assert rt.rules.version != before and not rt.rules_changed_on_disk()

        replace_file(root / "signup.yaml", (root / "signup.yaml").read_text() + BROKEN)
        with pytest.raises(RuleSetError):
            rt.reload_rules()
        assert seen_mid_reload[-1][1] is True and not rt.rules_changed_on_disk()
    finally:
        rt.engine.dispose()


def test_atomic_reload_under_concurrent_requests(tmp_path, runtime, auth):
    """Threads score signups while another swaps between two clean sets and a broken one.
    Every response must come wholly from one set: its version and its reasons agree."""
    set_a = copy_rules(tmp_path / "a")
    replace_file(set_a / "signup.yaml", with_rule((set_a / "signup.yaml").read_text(), "only_in_a"))
    set_b = copy_rules(tmp_path / "b")
    text_b = (set_b / "signup.yaml").read_text().replace("- id: ", "- id: b_")
    replace_file(set_b / "signup.yaml", with_rule(text_b, "only_in_b", action="block"))
    broken = copy_rules(tmp_path / "broken")
    replace_file(broken / "signup.yaml", (broken / "signup.yaml").read_text() + BROKEN)
    ids = {RuleSet.load(root, SCHEMA).version: {r.id for r in RuleSet.load(root, SCHEMA).subjects["signup"].rules}
           for root in (set_a, set_b)}
    marker = {version: ("only_in_a" if "only_in_a" in rule_ids else "only_in_b") for version, rule_ids in ids.items()}
    runtime.reload_rules(set_a)

    app = create_app(runtime=runtime)
    stop = threading.Event()
    responses: list[dict] = []
    failures: list[str] = []
    reloads = {"ok": 0, "refused": 0}

    def reloader():
        roots = [set_b, broken, set_a, broken]
        i = 0
        while not stop.is_set():
            try:
                runtime.reload_rules(roots[i % len(roots)])
                reloads["ok"] += 1
            except RuleSetError:
                reloads["refused"] += 1
            i += 1
            time.sleep(0.002)

    def swapped_enough() -> bool:
        return reloads["ok"] > 2 and reloads["refused"] > 2

    def scorer(n: int):
        # At least 25 signups each, and on until the swapper has swapped and refused a few
        # times: how far each thread gets in a fixed count depends on the scheduler (the
        # scorers once finished before the third clean swap). 500 bounds a stuck swapper.
        client = app.test_client()
        j = 0
        while j < 25 or (not swapped_enough() and j < 500):
            r = client.post("/v1/signups", json=signup(account_id=f"acct_{n}_{j}", device_id=f"dv_{n}_{j}"),
                            headers=auth)
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.json}")
            else:
                responses.append(r.json)
            j += 1

    threads = [threading.Thread(target=scorer, args=(n,)) for n in range(4)]
    swapper = threading.Thread(target=reloader)
    swapper.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    swapper.join()

    assert not failures
    assert len(responses) >= 100 and swapped_enough()
    seen_versions = set()
    for body in responses:
        version = body["rules_version"]
        assert version in ids, "a response carries a version no clean set has"
        hits = {r["rule"] for r in body["reasons"]}
        assert hits <= ids[version], f"reasons {hits - ids[version]} are not in the set {version}"
        assert marker[version] in hits
        assert body["decision"] == ("block" if marker[version] == "only_in_b" else body["decision"])
        seen_versions.add(version)
    assert runtime.rules.version in ids


# --- the real server: every gunicorn worker converges -------------------------------------------

def _get(url: str, key: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}", "Connection": "close"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def test_every_gunicorn_worker_converges_and_sighup_reloads(tmp_path):
    root = copy_rules(tmp_path / "rules")
    port, key = free_port(), "kyc_test_reload_key"
    env = dict(os.environ, KYC_DATABASE_URL=f"sqlite:///{tmp_path / 'kyc.db'}", KYC_RULES_DIR=str(root),
               KYC_DATA_DIR=str(tmp_path), KYC_DEV_KEY=key, KYC_RULES_POLL_SECONDS="0.2", KYC_LOG_LEVEL="WARNING")
    # Its log (access lines included, on stderr) to a file: a pipe nobody reads fills after a few
    # hundred requests and then blocks the server mid-request.
    server = subprocess.Popen([sys.executable, "-m", "kyc.cli", "serve", "--port", str(port), "--workers", "3"],
                              env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / "serve.log").open("w"))
    url = f"http://127.0.0.1:{port}/v1/ops/rules"
    try:
        wait_until(lambda: _reachable(url, key))

        def versions(expect: str, rounds: int = 20) -> dict[int, str]:
            # Concurrent connections: one at a time, a single idle worker may win every accept
            # (seen once in 60 requests); while it serves one, another worker takes the next.
            seen: dict[int, str] = {}
            with ThreadPoolExecutor(max_workers=6) as pool:
                for _ in range(rounds):
                    for body in pool.map(lambda _: _get(url, key), range(6)):
                        seen[body["process"]] = body["version"]
                    if len(seen) >= 3 and all(v == expect for v in seen.values()):
                        break
            return seen

        signup_file = root / "signup.yaml"
        original = signup_file.read_text()
        replace_file(signup_file, with_rule(original, "served_rule"))
        edited = RuleSet.load(root, SCHEMA).version
        wait_until(lambda: set(versions(edited).values()) == {edited})
        assert len(versions(edited)) >= 2, "requests reached a single worker only"

        # Each worker polls on its own clock: wait until all three workers have refused the broken
        # file (a fixed sleep was too short for one of them on a loaded machine). Each worker's
        # latest answer is kept by its process id: six requests may all reach two of the three, and
        # the third, not polled yet, then answered the request below without last_error (seen once,
        # with a simulation loading the machine).
        replace_file(signup_file, original + BROKEN)
        refused: dict[int, bool] = {}

        def refused_everywhere() -> bool:
            with ThreadPoolExecutor(max_workers=6) as pool:
                for b in pool.map(lambda _: _get(url, key), range(6)):
                    refused[b["process"]] = b["version"] == edited and bool(b.get("last_error"))
            return len(refused) >= 3 and all(refused.values())

        wait_until(refused_everywhere)
        body = _get(url, key)
        assert body["version"] == edited and body["last_error"]["errors"][0]["line"] > 1

        # SIGHUP: the master loads, fresh workers inherit the newest clean set.
        replace_file(signup_file, original)
        server.send_signal(signal.SIGHUP)
        wait_until(lambda: set(versions(RuleSet.load(root, SCHEMA).version).values())
                   == {RuleSet.load(root, SCHEMA).version})
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


def _reachable(url: str, key: str) -> bool:
    try:
        _get(url, key)
        return True
    except OSError:
        return False


@pytest.mark.parametrize("change", ["remove", "empty", "rename", "only_comments"])
@pytest.mark.parametrize("name", ["signup.yaml", "payment_method.yaml", "tiers.yaml"])
def test_a_rules_folder_missing_or_emptying_a_file_is_refused_and_the_running_set_stays(live_rules, auth_for, name,
                                                                                        change):
    """A moved, truncated or misnamed file would otherwise load as "no rules" (every signup
    allowed) or "no tiers" (every entitlement refused) and go live."""
    rt, root = live_rules
    client, auth = auth_for(rt)
    before, path = rt.rules.version, root / name
    if change == "remove":
        path.unlink()
    elif change == "rename":
        path.rename(root / f"old_{name}")
    else:
        replace_file(path, "" if change == "empty" else "# emptied for now\n[]\n")
    response = client.post("/v1/ops/rules/reload", headers=auth)
    assert response.status_code == 422, response.json
    error = response.json["error"]["errors"][0]          # (a renamed rule file is also named as stray)
    assert error["file"] == f"rules/{name}"
    assert error["message"] == ("missing: kyc serves a whole rules folder" if change in ("remove", "rename")
                                else f"holds no {'tiers' if name == 'tiers.yaml' else 'rules'}: kyc would serve none")
    assert rt.rules.version == before and set(rt.rules.subjects) == {"signup", "payment_method"}
    assert rt.tiers.tiers and rt.rules.subjects["signup"].rules
    crawler = signup(account_id="a_crawler", user_agent="python-requests/2.31.0")
    assert client.post("/v1/signups", json=crawler, headers=auth).json["decision"] != "allow"
    checked = CliRunner().invoke(main, ["rules", "check", "--rules", str(root)])
    assert checked.exit_code == 1 and f"rules/{name}:" in checked.output, checked.output


def test_an_idle_server_reloads_edited_rules_and_its_schedule_rescores_under_them(tmp_path):
    """No request reaches the server after the edit: each worker watches the files from its
    start (it waited for its first request before, so an idle schedule worker rescored under
    the old rules and started no rules-change run)."""
    from sqlalchemy import create_engine, select

    from kyc.models import RescoreRun

    root = copy_rules(tmp_path / "rules")
    port, key = free_port(), "kyc_test_reload_key"
    db = tmp_path / "kyc.db"
    env = dict(os.environ, KYC_DATABASE_URL=f"sqlite:///{db}", KYC_RULES_DIR=str(root), KYC_REDIS_URL="",
               KYC_DATA_DIR=str(tmp_path), KYC_DEV_KEY=key, KYC_RULES_POLL_SECONDS="0.2",
               KYC_RULES_WATCH_SECONDS="1", KYC_LOG_LEVEL="WARNING")
    server = subprocess.Popen([sys.executable, "-m", "kyc.cli", "serve", "--port", str(port), "--workers", "2"],
                              env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / "serve.log").open("w"))
    engine = create_engine(f"sqlite:///{db}")
    try:
        wait_until(lambda: (tmp_path / "schedule.lock").exists())
        replace_file(root / "signup.yaml", with_rule((root / "signup.yaml").read_text(), "idle_rule"))
        edited = RuleSet.load(root, SCHEMA).version

        def rescored_under_the_edit() -> bool:
            with engine.connect() as conn:
                return conn.scalar(select(RescoreRun.id).where(RescoreRun.selector == "rules_change",
                                                               RescoreRun.rules_version == edited)) is not None

        wait_until(rescored_under_the_edit)
    finally:
        server.terminate()
        server.wait(30)
        engine.dispose()
