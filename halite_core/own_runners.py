"""halite's own runner calls and the other reads of the history, seen from the index:
what it keeps of them, and whether anything feeds it at all.

Every ``salt-run halite.*`` (and every call through salt-api) is itself a Salt runner
job, which Salt hands to the job cache with the runner's answer as its return. Those
answers are copies of data guarded by their own permissions: the audit log
(``view:audit:*``), job listings and details narrowed to what the caller may view. So are
the answers of Salt's ``jobs`` runner (``jobs.lookup_jid``, ``list_job``, ``print_job``,
...: other jobs' returns, whatever their functions). Kept in the index, they would be
readable by anyone who may view ``runner.halite.*`` or ``runner.jobs.*`` jobs. So the
index keeps such a job (who ran what, when, its success and retcode) and stores
:data:`WITHHELD` in place of its answer, for every halite and jobs runner (``halite.kill``
too: its answer is what the audit log records of the kill).

The same answers travel inside other jobs, and are withheld there where the job says
exactly which runner gave them:

- a minion job ``saltutil.runner`` (or ``publish.runner``) whose first argument, or
  ``name``/``fun``, names one of these runners: its whole return;
- a state run (``state.*`` on a minion, ``runner.state.*`` orchestrations, nested ones
  included) with a ``salt.runner`` state naming one: that state's ``changes``, the rest
  of the run kept.

What a job carries without naming the runner (``cmd.run 'salt-run halite.audit'``, a
``module.run`` or ``salt.function`` state calling ``saltutil.runner``, the runners of
``salt.parallel_runners``) cannot be told apart from any other output and is kept as it
is: docs/runners.md lists these.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from halite_core.config import flag_option
from halite_core.encoding import MARKER, PREVIEW_CHARS, Encoded, to_jsonable
from halite_core.errors import ConfigError
from halite_core.highstate import is_state_function

# Runner jobs whose answers copy what the index guards: halite's own, Salt's jobs runner.
WITHHELD_PREFIXES = ("runner.halite.", "runner.jobs.")
WITHHELD: dict[str, str] = {
    MARKER: "withheld",
    "reason": "halite and jobs runner answers are not kept in the index: they copy data "
    "guarded by its own permissions (job views, the audit log); call the runner again",
}
# What the stored payload of a withheld runner job keeps besides the marker.
PAYLOAD_KEYS = ("fun", "jid", "user", "success", "retcode")
# Minion functions that run a runner named by their first argument or this keyword.
RUNNER_CALLERS = {"saltutil.runner": "name", "publish.runner": "fun"}
# Runners whose answer is a state run, in which salt.runner states are looked for.
ORCHESTRATIONS = ("state.orchestrate", "state.orch", "state.sls", "state.orchestrate_high",
                  "state.orchestrate_single")  # fmt: skip
MAX_NESTING = 20  # orchestrations inside orchestrations, looked into


def is_own_runner(function: object) -> bool:
    """Whether a job's answer is withheld: a call of one of halite's runners
    (``runner.halite.<name>``) or of Salt's jobs runner (``runner.jobs.<name>``)."""
    return isinstance(function, str) and function.startswith(WITHHELD_PREFIXES)


def names_withheld_runner(name: object) -> bool:
    """Whether a runner named as Salt's runner client takes it (``halite.audit``, or
    ``runner.halite.audit``) is one whose answers are withheld."""
    if not isinstance(name, str):
        return False
    name = name.strip()
    return is_own_runner(name if name.startswith("runner.") else f"runner.{name}")


def calls_withheld_runner(function: object, fun_args: object) -> bool:
    """Whether a minion job (``saltutil.runner halite.audit``) runs a withheld runner."""
    keyword = RUNNER_CALLERS.get(function) if isinstance(function, str) else None
    if keyword is None or not isinstance(fun_args, (list, tuple)):
        return False
    positional = [a for a in fun_args if not (isinstance(a, Mapping) and a.get("__kwarg__"))]
    named = [a.get(keyword) for a in fun_args if isinstance(a, Mapping) and a.get("__kwarg__")]
    # "name=halite.audit" as the CLI sends it when Salt did not parse it into a kwarg.
    texts = [a.split("=", 1)[1] for a in positional if isinstance(a, str) and
             a.startswith(f"{keyword}=")]  # fmt: skip
    return any(names_withheld_runner(n) for n in [*positional[:1], *named, *texts])


def withheld_return(
    function: object,
    value: object,
    fun_args: object = None,
    max_bytes: int | None = None,
) -> Encoded | None:
    """What the index stores as the return of a job whose answer, or part of it, is
    withheld; None for every other job, whose return is stored as it is.

    A halite or jobs runner job: Salt's runner payload (``{"fun", "jid", "user",
    "return", "success"}``, as ``store_job`` hands it over) with :data:`WITHHELD` as its
    ``return``, or the marker alone for the engine's bare answer. A minion's
    ``saltutil.runner`` of one (``fun_args`` say which): the marker alone. A state run
    with ``salt.runner`` states naming one: the run with those states' ``changes``
    replaced by ``{"return": WITHHELD}``, truncated beyond ``max_bytes`` as any return."""
    payload = value if isinstance(value, Mapping) and "return" in value and "fun" in value else None
    # A load without its function (a return seen before Salt names it) is judged by the
    # payload's own: the answer must not slip through for want of a name.
    if function is None and payload is not None:
        function = payload["fun"]
    if is_own_runner(function) or calls_withheld_runner(function, fun_args):
        return _all_withheld(payload)
    if is_state_function(function):
        return _state_run_withheld(value, payload, max_bytes)
    return None


def _all_withheld(payload: Mapping[str, Any] | None) -> Encoded:
    """The marker in place of the whole answer (the payload's outcome kept)."""
    stored: Any = dict(WITHHELD)
    if payload is not None:
        kept = {key: to_jsonable(payload[key]) for key in PAYLOAD_KEYS if key in payload}
        stored = {**kept, "return": stored}
    # Written directly rather than through encoding.encode, which would escape the
    # marker as a returned mapping that happens to hold a __halite_type__ key.
    return Encoded(json.dumps(stored, separators=(",", ":")))


def _state_run_withheld(
    value: object, payload: Mapping[str, Any] | None, max_bytes: int | None
) -> Encoded | None:
    """A state run (or a runner payload holding one) with the ``changes`` of its
    ``salt.runner`` states that name a withheld runner replaced; None when it has none."""
    run, root = (payload["return"], ("return",)) if payload is not None else (value, ())
    found = list(_withheld_states(run, ()))
    if not found:
        return None
    stored = to_jsonable(value)
    for path in found:
        state = _follow(stored, root + path)
        if not isinstance(state, dict):
            # The run was escaped on the way (a mapping with a NUL in a key): withhold it
            # all rather than guess where the answer went.
            return _all_withheld(payload)
        state["changes"] = {"return": dict(WITHHELD)}
    text = json.dumps(stored, allow_nan=False, separators=(",", ":"))
    size = len(text.encode("utf-8"))
    if max_bytes is not None and size > max_bytes:
        truncated = {MARKER: "truncated", "size": size, "limit": max_bytes,
                     "preview": text[:PREVIEW_CHARS]}  # fmt: skip
        return Encoded(json.dumps(truncated), False, True, size)
    return Encoded(text, False, False, size)


def _withheld_states(
    run: object, path: tuple[str, ...], depth: int = 0
) -> Iterator[tuple[str, ...]]:
    """The paths (keys from ``run``) to the ``salt.runner`` states of a state run that
    name a withheld runner, looking into orchestrations those states ran too."""
    if depth > MAX_NESTING or not isinstance(run, Mapping):
        return
    data = run.get("data")
    if "outputter" in run and isinstance(data, Mapping):  # state.orchestrate's answer
        for master, states in data.items():
            yield from _withheld_states(states, (*path, "data", str(master)), depth + 1)
        return
    if not any(_is_state_key(key) for key in run):
        # orchestrate_single / orchestrate_high answer {master id: states}.
        for master, states in run.items():
            if isinstance(states, Mapping) and any(_is_state_key(key) for key in states):
                yield from _withheld_states(states, (*path, str(master)), depth + 1)
        return
    for key, state in run.items():
        # Most states are not salt.runner's: told by their key's start, not split.
        if not (isinstance(key, str) and key.startswith("salt_|-")):
            continue
        if not (_is_state_key(key) and isinstance(state, Mapping)):
            continue
        parts = key.split("_|-")
        if parts[0] != "salt" or parts[3] != "runner":
            continue  # only salt.runner states say which runner gave their changes
        name = state.get("name", parts[2])
        if names_withheld_runner(name):
            yield (*path, key)
        elif isinstance(name, str) and name.removeprefix("runner.") in ORCHESTRATIONS:
            changes = state.get("changes")
            if isinstance(changes, Mapping):
                inner = changes.get("return")
                yield from _withheld_states(inner, (*path, key, "changes", "return"), depth + 1)


def _is_state_key(key: object) -> bool:
    """``<module>_|-<id>_|-<name>_|-<function>``, a state's key in a state run."""
    return isinstance(key, str) and key.count("_|-") == 3


def _follow(value: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def feed_warning(opts: Mapping[str, Any]) -> str | None:
    """Why this master's index may be empty, old or without returns, or None when
    something feeds it.

    halite's index is fed by its returner as the master job cache
    (``master_job_cache: halite``) or from the event bus (``event_return: halite``), and
    by its engine (``engines: [halite]``), which indexes publishes and, with
    ``write_returns`` (``auto``: unless ``master_job_cache`` is halite), returns. Salt's
    ``store_job`` hands no return to the master job cache when ``job_cache`` is False or
    ``ext_job_cache`` names a returner (the minions send theirs there instead). Without a
    feed the runners would answer from whatever was indexed before (or by other masters
    sharing the database) without a word.
    """
    if "halite" in _names(opts.get("event_return")):
        return None
    cache = opts.get("master_job_cache") == "halite"
    skipped = _returns_skipped(opts)
    if cache and skipped is None:
        return None
    engine = _engine_options(opts.get("engines"))
    if engine is not None:
        raw = engine.get("write_returns")
        try:
            writes = not cache if raw in (None, "auto") else flag_option("write_returns", raw)
        except ConfigError as exc:
            return f"its halite engine does not start ({exc}), so it indexes no publishes"
        if writes:
            return None
        auto = raw in (None, "auto")
        shown = "auto, which is off as master_job_cache is halite" if auto else "false"
        if cache:
            return (
                f"this master indexes publishes only: {skipped} keeps Salt from storing "
                f"returns in its master job cache, and its halite engine has write_returns: "
                f"{shown}; set write_returns: true in the engine's options (or event_return: "
                "halite), so that returns reach halite's index"
            )
        return (
            "this master indexes publishes only: its halite engine has write_returns: "
            "false and neither master_job_cache: halite nor event_return: halite is "
            "set, so no return reaches halite's index"
        )
    if cache:
        return (
            f"this master indexes publishes only: {skipped} keeps Salt from storing returns "
            "in its master job cache (master_job_cache: halite), so no return reaches "
            "halite's index; set event_return: halite, or run the halite engine with "
            "write_returns: true"
        )
    return (
        "nothing on this master feeds halite's index: set master_job_cache: halite (or "
        "event_return: halite) in the master config and restart it; until then this "
        "answer holds only what was indexed earlier or by other masters"
    )


def _returns_skipped(opts: Mapping[str, Any]) -> str | None:
    """The option that keeps Salt's store_job from handing returns to the master job
    cache (salt/utils/job.py), or None. ``ext_job_cache: halite`` is the minions' own
    halite returner writing them."""
    if not opts.get("job_cache", True):
        return "job_cache: False"
    ext = opts.get("ext_job_cache")
    if ext and ext != "halite":
        return f"ext_job_cache: {ext}"
    return None


def _names(value: object) -> list[str]:
    if isinstance(value, str):
        return [name.strip() for name in value.split(",")]
    if isinstance(value, (list, tuple)):
        return [name for name in value if isinstance(name, str)]
    return []


def _engine_options(engines: object) -> Mapping[str, Any] | None:
    """The halite engine's options in the master's ``engines`` list, or None."""
    if not isinstance(engines, (list, tuple)):
        return None
    for entry in engines:
        if entry == "halite":
            return {}
        if not isinstance(entry, Mapping):
            continue
        for name, options in entry.items():
            options = options if isinstance(options, Mapping) else {}
            # Salt also runs an engine under another name: {name: {engine_module: halite}}.
            if name == "halite" or options.get("engine_module") == "halite":
                return options
    return None
