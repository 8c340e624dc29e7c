"""Builders for the loads and returns Salt hands a job cache, and a free loopback port."""

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
