"""Plain-text views of the runners' data, for a person at a terminal.

The Salt outputters ``halite_jobs``, ``halite_job``, ``halite_minions``, ``halite_minion``,
``halite_states`` and ``halite_state`` call these; ``--out=json`` gives the data itself.
Tables have one line per row: text that may run long (targets, state names, comments,
lists of state ids) is cut to a fixed width and put on one line, so that a row never
wraps into the next; ids a person copies into the next command (jids, minion ids) are
shown whole.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from halite_core.states import MinionState

JOB_COLUMNS = (
    ("JID", "jid"),
    ("FUNCTION", "function"),
    ("TARGET", "target"),
    ("TYPE", "target_type"),
    ("USER", "user"),
    ("STARTED (UTC)", "start_time"),
    ("STATUS", "status"),
    ("RESULT", "result"),
    ("RETURNED", "returned"),
    ("FAILED", "failed"),
)
TARGET_WIDTH = 30
STATE_IDS_WIDTH = 30  # a minion's failing states, as a list of ids
STATE_ID_WIDTH = 48  # halite.state takes the id whole: cut only when very long
NAME_WIDTH = 30
SLS_WIDTH = 24
COMMENT_WIDTH = 50
NONE = "-"  # a cell with nothing to show
TEST_MARK = " (test)"  # a dry run's result (test=True)


def shown(data: object, keys: Sequence[str], render: Callable[[Mapping[str, Any]], str]) -> str:
    """What an outputter prints: an answer holding all of ``keys`` (those that tell it
    from the other runners' answers) as ``render`` shows it, after its ``warning``
    (nothing feeds the index); anything else, such as an ``error`` answer, as it is."""
    if not isinstance(data, Mapping) or not all(key in data for key in keys):
        return str(data)
    text = render(data)
    if data.get("warning"):
        return f"WARNING: {data['warning']}\n{text}"
    return text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns as wide as their widest cell, two spaces apart."""
    table = [list(header), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in table]  # fmt: skip


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def _line(value: object, width: int | None = None) -> str:
    """Text on one line (a state's name or comment may hold newlines), cut to ``width``."""
    if value is None:
        return NONE
    text = " ".join(str(value).split())
    return _clip(text, width) if width is not None else text


def _when(value: object) -> str:
    """An ISO 8601 time of the answer, to the second (the answers' times are UTC)."""
    return NONE if value is None else str(value)[:19].replace("T", " ")


def _result(result: object, test_run: object = None) -> str:
    """A result word; ``FAILED`` in capitals, to be seen in a column of ``pass``."""
    if result is None:
        return NONE
    word = "FAILED" if result == "failed" else str(result)
    return word + TEST_MARK if test_run else word


def _counts(counts: Mapping[str, Any] | None) -> str:
    """A state run's counts as failed/changed/total."""
    if not counts:
        return NONE
    return "/".join(
        NONE if counts.get(key) is None else str(counts[key])
        for key in ("failed", "changed", "states")
    )


def _ids(ids: Sequence[str] | None, width: int = STATE_IDS_WIDTH) -> str:
    """State ids, comma-separated, as many as fit in ``width``, then how many more."""
    if not ids:
        return NONE
    names = [_line(state_id) for state_id in ids]
    if len(names) == 1 or len(", ".join(names)) <= width:
        return _clip(", ".join(names), width)
    for kept in range(len(names) - 1, 0, -1):
        text = ", ".join(names[:kept]) + f" +{len(names) - kept} more"
        if len(text) <= width:
            return text
    more = f" +{len(names) - 1} more"
    return _clip(names[0], width - len(more)) + more


def _job_ref(job: Mapping[str, Any] | None) -> str:
    if not job:
        return NONE
    return f"{job.get('function') or NONE} {_when(job.get('start_time'))}"


def _more(command: str, cursor: object) -> str:
    return f"More: salt-run {command} ... cursor={cursor}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


# ---------------------------------------------------------------------- jobs
def _cell(job: Mapping[str, Any], key: str) -> str:
    if key == "start_time":
        return str(job["start_time"])[:19].replace("T", " ")
    if key == "result":
        return _result(job.get("result"))  # None in a live listing, which reads no returns
    minions = job.get("minions") or {}
    if key == "returned":
        if minions.get("targeted") is None:
            return "-"  # live listings do not count minions
        return f"{minions['returned']}/{minions['targeted']}"
    if key == "failed":
        return "-" if minions.get("failed") is None else str(minions["failed"])
    value = "" if job.get(key) is None else str(job[key])
    if key == "target" and len(value) > TARGET_WIDTH:
        value = value[: TARGET_WIDTH - 3] + "..."
    return value


def jobs_table(data: Mapping[str, Any]) -> str:
    """``halite.jobs`` as a table, newest first, with how to get the next page."""
    jobs: Sequence[Mapping[str, Any]] = data.get("jobs") or []
    if not jobs:
        return "No jobs."
    lines = _table(
        [title for title, _ in JOB_COLUMNS],
        [[_cell(job, key) for _, key in JOB_COLUMNS] for job in jobs],
    )
    if data.get("next"):
        lines.append(_more("halite.jobs", data["next"]))
    return "\n".join(lines)


# ---------------------------------------------------------------------- the fleet
MINION_COLUMNS = ("MINION", "RESULT", "STATE RUN (UTC)", "STATES F/C/T", "FAILING STATES",
                  "LAST JOB (UTC)")  # fmt: skip
HIDDEN_RUNS = "State runs are not shown: they need view:job:state.*."


def minions_table(data: Mapping[str, Any]) -> str:
    """``halite.minions`` as a table, in the answer's order (failing first): each minion's
    latest real state run (its result, function and start, failed/changed/total states,
    the failing ones) and its latest job."""
    minions: Sequence[Mapping[str, Any]] = data.get("minions") or []
    if not minions:
        return "No minions."
    lines = _table(MINION_COLUMNS, [_minion_row(row) for row in minions])
    if any(row.get("failing") is None for row in minions):
        lines.append(HIDDEN_RUNS)  # the caller may not view state jobs: no row has a run
    if data.get("next"):
        lines.append(_more("halite.minions", data["next"]))
    return "\n".join(lines)


def _minion_row(row: Mapping[str, Any]) -> list[str]:
    run = row.get("state_run")
    last_job = _job_ref(row.get("last_job"))
    if not run:
        return [_line(row["minion"]), NONE, NONE, NONE, NONE, last_job]
    return [
        _line(row["minion"]),
        _result(run.get("result")),
        _job_ref(run),
        _counts(run.get("counts")),
        _ids(run.get("failing_states")),
        last_job,
    ]


HISTORY_COLUMNS = ("JID", "FUNCTION", "STARTED (UTC)", "STATE", "RESULT", "RETCODE",
                   "STATES F/C/T", "FAILING STATES")  # fmt: skip


def minion_table(data: Mapping[str, Any]) -> str:
    """``halite.minion`` as a table of the minion's jobs, newest first: its state and
    result in each, and for a state run its counts and failing states."""
    name = str(data.get("minion"))
    jobs: Sequence[Mapping[str, Any]] = data.get("jobs") or []
    if not jobs:
        return f"No jobs of {name}."
    rows = [
        [
            job["jid"],
            _line(job.get("function")),
            _when(job.get("start_time")),
            str(job.get("state")),
            _result(job.get("result"), job.get("test_run")),
            NONE if job.get("retcode") is None else str(job["retcode"]),
            _counts(job.get("counts")),
            _ids(job.get("failing_states")),
        ]
        for job in jobs
    ]
    lines = [f"Jobs of {name}, newest first:", *_table(HISTORY_COLUMNS, rows)]
    if data.get("next"):
        lines.append(_more(f"halite.minion {shlex.quote(name)}", data["next"]))
    return "\n".join(lines)


STATES_COLUMNS = ("STATE ID", "FUNCTION", "NAME", "SLS", "MINIONS", "RUNS", "FIRST (UTC)",
                  "LAST (UTC)", "COMMENT")  # fmt: skip
WHAT_STATES_DID = {"failed": "failed", "changed": "changed something"}


def states_table(data: Mapping[str, Any]) -> str:
    """``halite.states`` as a table, busiest first: each state's id, function, name and
    sls, on how many minions and in how many runs, first and last, the latest comment."""
    did = WHAT_STATES_DID.get(str(data.get("result")), str(data.get("result")))
    window = data.get("window")
    states: Sequence[Mapping[str, Any]] = data.get("states") or []
    if not states:
        return f"No state {did} in the last {window}."
    rows = [
        [
            _line(state["state_id"], STATE_ID_WIDTH),
            _line(state.get("function")),
            _line(state.get("name"), NAME_WIDTH),
            _line(state.get("sls"), SLS_WIDTH),
            str(state["minions"]),
            str(state["runs"]),
            _when(state.get("first")),
            _when(state.get("last")),
            _line(state.get("comment"), COMMENT_WIDTH),
        ]
        for state in states
    ]
    lines = [
        f"States that {did} in the last {window}, on the most minions first (dry runs left out):",
        *_table(STATES_COLUMNS, rows),
    ]
    if data.get("next"):
        lines.append(_more("halite.states", data["next"]))
    return "\n".join(lines)


RUN_COLUMNS = ("STARTED (UTC)", "MINION", "RESULT", "FUNCTION", "NAME", "SLS", "JID",
               "COMMENT")  # fmt: skip


def state_report(data: Mapping[str, Any]) -> str:
    """``halite.state``: when and where the state failed (of its whole kept history, dry
    runs left out), then its failed and changed runs, newest first."""
    name = str(data.get("state_id"))
    failed = data.get("failed") or {}
    if failed.get("runs"):
        summary = (
            f"{_line(name)}: failed in {_plural(failed['runs'], 'run')} on"
            f" {_plural(failed['minions'], 'minion')}, first {_when(failed.get('first'))},"
            f" last {_when(failed.get('last'))} (UTC)"
        )
    else:
        summary = f"{_line(name)}: never failed (dry runs left out)"
    runs: Sequence[Mapping[str, Any]] = data.get("runs") or []
    if not runs:
        return f"{summary}\nNo failed or changed runs."
    rows = [
        [
            _when(run.get("start_time")),
            _line(run["minion"]),
            _result(run.get("result"), run.get("test_run")),
            _line(run.get("function")),
            _line(run.get("name"), NAME_WIDTH),
            _line(run.get("sls"), SLS_WIDTH),
            run["jid"],
            _line(run.get("comment"), COMMENT_WIDTH),
        ]
        for run in runs
    ]
    lines = [summary, *_table(RUN_COLUMNS, rows)]
    if data.get("next"):
        lines.append(_more(f"halite.state {shlex.quote(name)}", data["next"]))
    return "\n".join(lines)


# ---------------------------------------------------------------------- one job
def job_report(data: Mapping[str, Any]) -> str:
    """``halite.job`` as a report: the job, then each minion, those that failed first."""
    minions = data.get("minion_results") or []
    lines = [
        f"Job {data['jid']}: {data['function']} on {data['target']} ({data['target_type']})"
        f" by {data['user']}",
        f"  started {data['start_time']}, "
        + (f"ended {data['end_time']}" if data.get("end_time") else "not ended")
        + f", {data['status']}",
        f"  arguments {json.dumps(data.get('arguments'))}, kwargs {json.dumps(data.get('kwargs'))}",
        f"  minions: {data['minions']['targeted']} targeted, {data['minions']['returned']}"
        f" returned, {data['minions']['failed']} failed",
    ]
    if "states" in data:
        s = data["states"]
        lines.append(
            f"  states: {s['states']} run, {s['passed']} passed, {s['failed']} failed, "
            f"{s['changed']} changed, {s['duration_ms']:.0f} ms"
        )
    if data.get("rerun_of"):
        lines.append(f"  re-runs job {data['rerun_of']}")
    if data.get("reruns"):
        lines.append(f"  re-run as {', '.join(data['reruns'])} (newest first)")
    for minion in minions:
        mark = "FAILED" if minion["failed"] else "ok"
        lines.append("")
        lines.append(
            f"{minion['minion']}: {minion['state']}, {mark}"
            f" (retcode {minion['retcode']}, success {minion['success']})"
        )
        lines.extend(_minion_body(minion))
    return "\n".join(lines)


def _minion_body(minion: Mapping[str, Any]) -> list[str]:
    parsed = minion.get("highstate")
    if parsed is None:
        if minion["state"] != MinionState.RETURNED:
            return []
        text = json.dumps(minion.get("return"))
        return [f"  return: {text if len(text) <= 200 else text[:197] + '...'}"]
    if parsed["kind"] == "render_error":
        return ["  render error:"] + [f"    {error}" for error in parsed["errors"]]
    if parsed["kind"] == "already_running":
        return ["  not run:"] + [f"    {message}" for message in parsed["messages"]]
    if parsed["kind"] != "states":
        return [f"  return: {json.dumps(minion.get('return'))[:200]}"]
    counts = parsed["counts"]
    out = [
        f"  {counts['total']} states: {counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['changed']} changed, {counts['duration_ms']:.0f} ms"
    ]
    failing = {f["id"] for f in parsed["failing"]}
    ordered = [s for s in parsed["states"] if s["id"] in failing]
    ordered += [s for s in parsed["states"] if s["id"] not in failing]
    for state in ordered:
        changed = " changed" if state["changes"] else ""
        out.append(
            f"    {state['result'].upper():<8} {state['id']} ({state['function']}){changed}:"
            f" {state['comment']}"
        )
    return out
