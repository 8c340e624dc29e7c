"""Plain-text views of the runners' data, for a person at a terminal.

The Salt outputters ``halite_jobs`` and ``halite_job`` call these; ``--out=json`` gives
the data itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
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
    ("RETURNED", "returned"),
    ("FAILED", "failed"),
)
TARGET_WIDTH = 30


def _cell(job: Mapping[str, Any], key: str) -> str:
    if key == "start_time":
        return str(job["start_time"])[:19].replace("T", " ")
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
    rows = [[title for title, _ in JOB_COLUMNS]]
    rows += [[_cell(job, key) for _, key in JOB_COLUMNS] for job in jobs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(JOB_COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in rows]  # fmt: skip
    if data.get("next"):
        lines.append(f"More: salt-run halite.jobs ... cursor={data['next']}")
    return "\n".join(lines)


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
