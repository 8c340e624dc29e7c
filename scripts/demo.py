"""make demo: a real salt-master and two salt-minions with halite as the master job cache.

Starts the daemons on loopback in a temporary directory (SQLite index in the master's
cachedir), runs a few jobs (including a state.apply whose one state fails on one of the
minions), re-runs that state on the failing minion, then prints what the job index holds,
what Salt's own jobs runner says about the same jobs, and ends with ``salt-run
halite.minions``: the failing minion first. ``--screenshots docs`` saves the README's
screenshots of the page (``make screenshots``).
"""

import argparse
import getpass
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import salt.config
from sqlalchemy import select

from halite_core.config import Settings
from halite_core.jobcache import JobStore
from halite_core.store.schema import job_returns, jobs_index

BIN = Path(sys.executable).parent
MASTER_ID = "halite-demo-master"
MINION_ID = "halite-demo-minion"
# A second minion, on which the demo state's command fails: listed first by halite.minions
# although its id sorts after the first one's.
WEB_ID = "halite-demo-web"

DEMO_STATE = """
motd:
  file.managed:
    - name: {root}/motd
    - contents: Managed by Salt; jobs indexed by halite.

broken-command:
  cmd.run:
    - name: exit {{{{ 3 if grains['id'] == '{web}' else 0 }}}}

after-the-broken-one:
  test.succeed_without_changes:
    - require:
      - cmd: broken-command
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


HTTP_PORT = free_port()


def write_configs(root: Path) -> tuple[Path, Path]:
    user = getpass.getuser()
    publish_port, ret_port = free_port(), free_port()
    (root / "states").mkdir(parents=True)
    (root / "states" / "halite_demo.sls").write_text(DEMO_STATE.format(root=root, web=WEB_ID))
    common = f"user: {user}\nroot_dir: {root}\nlog_level_logfile: info\n"
    master_dir, minion_dir = root / "etc" / "master.d", root / "etc" / "minion.d"
    master_dir.mkdir(parents=True)
    (master_dir / "master").write_text(
        common
        + textwrap.dedent(f"""\
            id: {MASTER_ID}
            interface: 127.0.0.1
            publish_port: {publish_port}
            ret_port: {ret_port}
            pki_dir: {root}/pki/master
            cachedir: {root}/cache/master
            sock_dir: {root}/run/master
            pidfile: {root}/run/master.pid
            log_file: {root}/log/master
            auto_accept: True
            file_roots:
              base: [{root}/states]
            master_job_cache: halite
            job_cache_store_endtime: True
            engines:
              - halite:
                  http: {{host: 127.0.0.1, port: {HTTP_PORT}, eauth: auto}}
            # DEMO ONLY: Salt's `auto` eauth accepts any password. Use pam, ldap, ... on a
            # real master.
            external_auth:
              auto:
                demo: ['@runner']
                viewer: ['@runner']
                admin: ['@runner']
            halite:
              users:
                demo: [operator]
                viewer: [viewer]
                admin: [admin]
            """)
    )
    for name, directory in ((MINION_ID, minion_dir), (WEB_ID, web_dir(root))):
        directory.mkdir(parents=True)
        (directory / "minion").write_text(
            common
            + textwrap.dedent(f"""\
                id: {name}
                master: 127.0.0.1
                master_port: {ret_port}
                publish_port: {publish_port}
                pki_dir: {root}/pki/{name}
                cachedir: {root}/cache/{name}
                sock_dir: {root}/run/{name}
                pidfile: {root}/run/{name}.pid
                log_file: {root}/log/{name}
                """)
        )
    return master_dir, minion_dir


def web_dir(root: Path) -> Path:
    return root / "etc" / "web.d"


def run_salt(master_dir: Path, *args: str, timeout: int = 120, target: str = MINION_ID) -> object:
    """``salt <target> <args>``: the answer of MINION_ID (of each minion for a list)."""
    listed = "," in target
    out = subprocess.run(
        [str(BIN / "salt"), "-c", str(master_dir), "--out=json", "--static",
         *(["-L"] if listed else []), target, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )  # fmt: skip
    try:
        answers = json.loads(out.stdout or "{}")
    except json.JSONDecodeError:
        return out.stdout.strip() or out.stderr.strip()
    return answers if listed else answers.get(target)


def salt_run(master_dir: Path, *args: str) -> object:
    out = subprocess.run(
        [str(BIN / "salt-run"), "-c", str(master_dir), "--out=json", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(out.stdout or "null")


def wait_for_minion(master_dir: Path, deadline: float) -> None:
    for name in (MINION_ID, WEB_ID):
        while run_salt(master_dir, "test.ping", "-t", "5", target=name) is not True:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"the demo minion {name} did not answer within the time limit; see the logs"
                )
            time.sleep(1)


def show_index(master_dir: Path) -> None:
    opts = salt.config.master_config(str(master_dir / "master"))
    store = JobStore(Settings.from_opts(opts))
    print(f"\nhalite job index: {store.settings.db_url}\n")
    with store.db.read() as conn:
        jobs = conn.execute(select(jobs_index).order_by(jobs_index.c.start_time)).all()
        rets = conn.execute(select(job_returns)).all()
    header = f"{'jid':<21} {'function':<15} {'user':<6} {'status':<9} tgt ret fail  start (UTC)"
    print(header)
    print("-" * len(header))
    for job in jobs:
        print(
            f"{job.jid:<21} {job.function or '':<15} {job.user or '':<6} {job.status:<9} "
            f"{job.minions_targeted:>3} {job.minions_returned:>3} {job.minions_failed:>4}  "
            f"{job.start_time:%H:%M:%S.%f}"
        )
    print("\nreturns:")
    for row in rets:
        summary = ""
        if row.states_total is not None:
            summary = (
                f"  states {row.states_total}: {row.states_passed} passed, "
                f"{row.states_failed} failed, {row.states_changed} changed, "
                f"{row.states_duration_ms:.1f} ms"
            )
        value = json.dumps(row.return_value)
        value = value if len(value) <= 60 else value[:57] + "..."
        print(
            f"  {row.jid} {row.minion}: retcode={row.retcode} success={row.success}"
            f"{summary or '  return=' + value}"
        )
    listed = salt_run(master_dir, "jobs.list_jobs")
    ours = {job.jid for job in jobs if job.function and not job.function.startswith("runner.")}
    theirs = {
        jid for jid, job in (listed or {}).items() if not job["Function"].startswith("runner.")
    }
    agree = "agree" if ours == theirs else "DISAGREE"
    print(
        f"\nsalt-run jobs.list_jobs lists {len(theirs)} minion jobs; the index {len(ours)}: {agree}"
    )
    store.db.dispose()
    if ours != theirs:
        raise SystemExit(1)
    failing = next(job.jid for job in jobs if job.function == "state.apply")
    for args in (["halite.jobs", "limit=8"], ["halite.job", failing]):
        print(f"\n$ salt-run {' '.join(args)}")
        out = subprocess.run(
            [str(BIN / "salt-run"), "-c", str(master_dir), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        print(out.stdout.rstrip() or out.stderr.rstrip())


def rerun_failed(master_dir: Path) -> str:
    """``salt-run halite.rerun`` of the failed state run (on its failing minion only); the
    failed run's jid, once its re-run has completed."""
    listed = salt_run(master_dir, "halite.jobs", "fun=state.apply", "result=failed")
    failed = (listed or {}).get("jobs", [{}])[0].get("jid")
    if not failed:
        raise SystemExit(f"the demo's state run should have failed: {listed}")
    again = salt_run(master_dir, "halite.rerun", failed)
    if not isinstance(again, dict) or again.get("minions") != [WEB_ID]:
        raise SystemExit(f"halite.rerun {failed} should publish to {WEB_ID} alone: {again}")
    print(f"  salt-run halite.rerun {failed} -> {again['jid']} on {', '.join(again['minions'])}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = salt_run(master_dir, "halite.job", again["jid"])
        if isinstance(job, dict) and job.get("status") == "complete":
            return failed
        time.sleep(0.5)
    raise SystemExit(f"the re-run {again['jid']} did not complete")


def show_minions(master_dir: Path) -> None:
    """The fleet, failing minions first: what the demo ends with."""
    print("\n$ salt-run halite.minions")
    out = subprocess.run(
        [str(BIN / "salt-run"), "-c", str(master_dir), "halite.minions"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    print(out.stdout.rstrip() or out.stderr.rstrip())
    listed = salt_run(master_dir, "halite.minions")
    first = (listed or {}).get("minions", [{}])[0]
    if first.get("minion") != WEB_ID or first.get("failing") is not True:
        raise SystemExit(f"halite.minions should list the failing {WEB_ID} first: {listed}")


def show_page(master_dir: Path, serve: float | None) -> None:
    """The Jobs page the engine serves: check that it answers and logs in, then say where."""
    import urllib.request

    base = f"http://127.0.0.1:{HTTP_PORT}"
    deadline = time.monotonic() + 60
    while True:
        try:
            request = urllib.request.Request(
                base + "/api/login", method="POST",
                data=json.dumps({"username": "demo", "password": "demo"}).encode(),
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            with urllib.request.urlopen(request, timeout=10) as response:
                me = json.loads(response.read())
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    print(f"\nJobs page: {base}/   (the API: {base}/api/openapi.json)")
    print(
        "log in as demo (operator: may kill), admin (may also re-run) or viewer, any password"
        f" (demo's roles: {me['roles']})"
    )
    print("the demo's `auto` external auth accepts any password: never use it on a real master")
    show_minions(master_dir)
    if serve is not None:
        time.sleep(serve)
    elif sys.stdin.isatty():
        input("\npress Enter to stop the master and minion ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--serve", type=float, default=None,
        help="seconds to keep serving the Jobs page (default: until Enter on a terminal)",
    )  # fmt: skip
    parser.add_argument(
        "--screenshots", type=Path, default=None, metavar="DIR",
        help="save the page's screenshots into DIR (docs: the README's), then stop",
    )  # fmt: skip
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="halite-demo-"))
    master_dir, minion_dir = write_configs(root)
    daemons = []
    try:
        print(f"starting salt-master and salt-minion on 127.0.0.1 under {root} ...")
        for name, conf in (("salt-master", master_dir), ("salt-minion", minion_dir),
                           ("salt-minion", web_dir(root))):  # fmt: skip
            daemons.append(
                subprocess.Popen(
                    [str(BIN / name), "-c", str(conf), "-l", "quiet"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        wait_for_minion(master_dir, time.monotonic() + 120)
        print("minions connected; running jobs:")
        jobs = [
            ("test.ping",),
            ("test.arg", "alpha", "42", "colour=blue"),
            ("cmd.run", "uname -sr"),
            ("grains.item", "os", "kernel"),
            ("state.apply", "halite_demo"),
        ]
        both = f"{MINION_ID},{WEB_ID}"
        for job in jobs:
            target = both if job[0] == "state.apply" else MINION_ID
            result = run_salt(master_dir, *job, target=target)
            shown = json.dumps(result)
            shown = shown if len(shown) <= 70 else shown[:67] + "..."
            print(
                f"  salt {'-L ' + target if target == both else target} {' '.join(job)} -> {shown}"
            )
        time.sleep(0.5)  # returns are committed in batches, at most flush_interval apart
        failed = rerun_failed(master_dir)
        show_index(master_dir)
        if args.screenshots is not None:
            show_page(master_dir, 0)
            from screenshots import take

            for path in take(f"http://127.0.0.1:{HTTP_PORT}", "admin", failed, args.screenshots):
                print(f"saved {path}")
        else:
            show_page(master_dir, args.serve)
    finally:
        for proc in reversed(daemons):
            proc.send_signal(signal.SIGTERM)
        for proc in daemons:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if args.keep:
            print(f"\nkept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
