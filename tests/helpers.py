"""Builders for the loads and returns Salt hands a job cache, and a free loopback port."""

import contextlib
import socket


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_fixed_port():
    """A free loopback port below the kernel's ephemeral range, for a server the session
    keeps (the test PostgreSQL): the ports the rest of the suite draws from the kernel
    (salt-factories' event listener, the masters, the HTTP servers) are then never also the
    database's. One such clash ("address already in use" for the event listener) ended a
    run."""
    import random

    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            low = int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for port in random.sample(range(10000, max(low, 10001)), k=min(200, max(low - 10000, 1))):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def publish(store, jid, fun="test.arg", minions=("m1", "m2"), arg=(), user="root", **extra):
    load = {
        "jid": jid,
        "fun": fun,
        "arg": list(arg),
        "tgt": list(minions),
        "tgt_type": "list",
        "user": user,
        **extra,
    }
    save_load(store, jid, load, list(minions))
    return load


def ret(jid, minion, value=True, fun="test.arg", retcode=0, success=True, **extra):
    return {
        "jid": jid,
        "id": minion,
        "fun": fun,
        "fun_args": [],
        "return": value,
        "retcode": retcode,
        "success": success,
        **extra,
    }


def untaken(settings):
    """The journal lines no committer has taken yet (committed or spooled)."""
    from halite_core.durability.journal import pending_lines

    return pending_lines(settings.journal_dir, settings.spool_dir + "/none")


def save_load(store, jid, load, minions=None):
    """Index a publish at once (the committer's path, without the journal)."""
    store.apply_items(store.items_for("save_load", jid, load, minions))


def save_return(store, load, returned_at=None):
    """Index one minion return at once; False for a duplicate (the first return wins)."""
    return store.apply_items(store.items_for("save_return", load, returned_at)) == 1


def watch_page(page, problems):
    """Collect into ``problems`` what a page must never do: a console error (a failed
    request included: the page links its own icon, so none may fail), an uncaught
    exception, a Content-Security-Policy violation. Returns the page."""

    def logged(message):
        if message.type == "error":
            problems.append(f"{message.text} ({message.location.get('url', '')})")

    page.on("console", logged)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.add_init_script(
        "document.addEventListener('securitypolicyviolation',"
        " (e) => console.error('CSP: ' + e.violatedDirective))"
    )
    return page


@contextlib.contextmanager
def restricted_role(pg_server, role, revoked):
    """A new PostgreSQL database, and a role of its own that has ``revoked`` (CREATE,
    TEMPORARY) on it no more (taken from PUBLIC) but may create tables in ``public``:
    yields (the role's URL, an AUTOCOMMIT engine of the server's superuser, the
    database's name); both are dropped afterwards."""
    import sqlalchemy as sa

    url = sa.make_url(pg_server.create_database())
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        conn.exec_driver_sql(f'REVOKE {revoked} ON DATABASE "{url.database}" FROM PUBLIC')
        conn.exec_driver_sql(f"GRANT CREATE, USAGE ON SCHEMA public TO {role}")
    try:
        yield url.set(username=role).render_as_string(hide_password=False), admin, url.database
    finally:
        admin.dispose()
        pg_server.drop_database(url.render_as_string(False))
        server = sa.create_engine(pg_server.url(), isolation_level="AUTOCOMMIT")
        with server.connect() as conn:
            conn.exec_driver_sql(f"DROP ROLE {role}")
        server.dispose()
