"""The typed arguments and answers of halite's reads and kill, defined once.

The arguments (:class:`JobFilter`, :class:`JobsQuery`, :class:`AuditFilter`,
:class:`ActivityQuery`, :class:`TimelineQuery`) are pydantic models: the runners pass
their keyword arguments to them, the HTTP handlers their query parameters, and the
OpenAPI document (:mod:`halite_core.http.contract`) lists each field as a query
parameter. Values arrive as a command line or a query string gives them (text, numbers,
booleans); each field's validator says what it takes, and a bad value is a
:class:`QueryError` naming the argument.

The answers (:class:`Page`, :class:`JobDetail`, :class:`KillOutcome`, ...) are typed
dicts: the queries build them directly and the document's schemas are generated from
them. They are not validated on the way out: validating and dumping a page of 50 jobs
costs about 0.13 ms, a tenth of the listing itself; tests check real answers against
them instead.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    with_config,
)
from typing_extensions import NotRequired, Self, TypedDict

from halite_core.errors import HaliteError
from halite_core.states import RESULTS, JobStatus

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_TEXT = 1024
MAX_HOURS = 168
# A listing's status filter: what the index stores (``unknown`` is shown, never stored).
STATUSES = (JobStatus.RUNNING.value, JobStatus.COMPLETE.value)
DECISIONS = ("allow", "deny")
WINDOWS = {"1h": 1, "4h": 4, "24h": 24, "7d": 168}
GROUPINGS = ("function", "user")


class QueryError(HaliteError, ValueError):
    """An argument that cannot be used; the message says which and why."""


class UnknownJob(QueryError):
    """No job with that jid in the index."""


# ---------------------------------------------------------------------- argument checks
def preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:60]}... ({len(text)} characters)"


def text_arg(name: str, value: object) -> str | None:
    """Text as a command line or query string gives it: numbers (``user=1001``) are taken
    as text; lists, mappings and booleans are refused."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise QueryError(f"{name} must be text, not {type(value).__name__}")
    text = str(value)
    if "\x00" in text:
        # SQLite ends the text at the NUL (search=%00 matched every job); PostgreSQL
        # refuses it. No function, target, user or jid holds one.
        raise QueryError(f"{name} must not contain a NUL character")
    return text


def flag_arg(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise QueryError(f"{name} must be True or False, not {value!r}")


def count_arg(name: str, value: object, most: int) -> int:
    """A whole count from 1 to ``most``; true/false and infinities are not counts."""
    try:
        if isinstance(value, bool):  # int(True) is 1
            raise TypeError(value)
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: limit=.inf
        raise QueryError(f"{name} must be a number from 1 to {most}, not {value!r}") from exc
    if not 1 <= number <= most:
        raise QueryError(f"{name} must be a number from 1 to {most}, not {value!r}")
    return number


def parse_time(name: str, value: object) -> dt.datetime | None:
    """An ISO 8601 time, in UTC; without an offset it is read as UTC, as the index stores
    times. One whose UTC falls outside the years 1 to 9999 (``9999-12-31T23:59:59-23:59``)
    is refused here: the database drivers cannot bind it."""
    if value is None or value == "":
        return None
    try:
        moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as exc:
        raise QueryError(
            f"{name}: {value!r} is not an ISO 8601 date and time (e.g. 2026-11-28T12:00:00Z)"
        ) from exc
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.timezone.utc)
    try:
        return moment.astimezone(dt.timezone.utc)
    except OverflowError as exc:
        raise QueryError(
            f"{name}: {value!r} is out of range: in UTC it is not within the years 1 to 9999"
        ) from exc


def _text(value: object, info: ValidationInfo) -> str | None:
    name = str(info.field_name)
    text = text_arg(name, value)
    if text is not None and len(text) > MAX_TEXT:
        raise QueryError(
            f"{name} must be text of at most {MAX_TEXT} characters, not {preview(value)}"
        )
    return text


def _time(value: object, info: ValidationInfo) -> dt.datetime | None:
    name = str(info.field_name)
    if isinstance(value, dt.datetime):
        # A program's own time must say its zone; only text is read as UTC by default.
        if value.tzinfo is None:
            raise QueryError(f"{name} must be a date and time with a timezone, not {value!r}")
        return value
    return parse_time(name, value)


def _flag(value: object, info: ValidationInfo) -> bool:
    return flag_arg(str(info.field_name), value)


def _limit(value: object, info: ValidationInfo) -> int:
    return count_arg(str(info.field_name), value, MAX_LIMIT)


def _hours(value: object, info: ValidationInfo) -> int:
    return count_arg(str(info.field_name), value, MAX_HOURS)


def _one_of(choices: tuple[str, ...], optional: bool = False, say: str | None = None) -> Any:
    """A validator taking one of ``choices``; the error says it as ``say`` (by default
    ``one of a, b, c``)."""
    expected = say or f"one of {', '.join(choices)}"

    def check(value: object, info: ValidationInfo) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or value not in choices:  # a list is not hashable
            raise QueryError(f"{info.field_name} must be {expected}, not {value!r}")
        return value

    return check


def _enum(choices: tuple[str, ...]) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "enum": list(choices)})


# Each argument type: what it accepts (the validator) and how the document shows it.
Text = Annotated[Annotated[str, Field(max_length=MAX_TEXT)] | None, BeforeValidator(_text)]
Time = Annotated[dt.datetime | None, BeforeValidator(_time)]
Flag = Annotated[bool, BeforeValidator(_flag)]
Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT), BeforeValidator(_limit)]


class Arguments(BaseModel):
    """Arguments as a caller gives them, checked: :meth:`parse` raises a
    :class:`QueryError` naming the first one that cannot be used."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def parse(cls, given: Mapping[str, object] | None = None) -> Self:
        try:
            return cls.model_validate(dict(given or {}))
        except ValidationError as exc:
            raise cls._error(exc) from None

    @classmethod
    def _error(cls, exc: ValidationError) -> QueryError:
        error = exc.errors()[0]
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, QueryError):
            return cause
        name = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            return QueryError(f"unknown argument {name!r}; known: {', '.join(cls.model_fields)}")
        return QueryError(f"{name}: {error['msg']}")

    def given(self) -> dict[str, Any]:
        """The arguments that differ from their defaults, as JSON (for the audit log)."""
        return self.model_dump(mode="json", exclude_defaults=True)


class JobFilter(Arguments):
    """What to list: every field optional. Globs use ``*`` and ``?``, case-sensitive."""

    limit: Limit = Field(default=DEFAULT_LIMIT, description=f"Jobs per page, 1 to {MAX_LIMIT}.")
    fun: Text = Field(default=None, description="Shell glob (`*`, `?`) on the function.")
    target: Text = Field(default=None, description="Shell glob (`*`, `?`) on the target.")
    user: Text = Field(default=None, description="The Salt user who published the job, exactly.")
    status: Annotated[
        str | None, BeforeValidator(_one_of(STATUSES, optional=True)), _enum(STATUSES)
    ] = Field(default=None, description="`running` or `complete`.")
    result: Annotated[
        str | None, BeforeValidator(_one_of(RESULTS, optional=True)), _enum(RESULTS)
    ] = Field(
        default=None,
        description="The job's result: `running`, `failed` (a minion failed or never"
        " returned), `changed` (a state changed something) or `pass`.",
    )
    minion: Text = Field(
        default=None, description="Jobs that targeted, or returned from, this minion."
    )
    search: Text = Field(
        default=None,
        description="Text at the start of the jid, or anywhere in the function, target or"
        " user (ignoring ASCII case).",
    )
    start: Time = Field(
        default=None,
        description="ISO 8601 (UTC when no offset is given): jobs started at or after it.",
    )
    end: Time = Field(
        default=None, description="ISO 8601 (UTC when no offset is given): jobs started before it."
    )
    include_system: Flag = Field(
        default=False,
        description="Also list Salt's own bookkeeping jobs (`saltutil.find_job`, ...:"
        " the `system_functions` option).",
    )
    master: Text = Field(
        default=None,
        description="Jobs published by this master (its `id`), where several masters share"
        " one database.",
    )
    cursor: Text = Field(default=None, description="The `next` of the previous page.")


class JobsQuery(JobFilter):
    """``halite.jobs`` and ``GET /api/jobs``: a filter, or a live listing."""

    live: Flag = Field(
        default=False,
        description="Bypass the index: read the newest `limit` jobs (at most 500) from the"
        " master's job cache and ask every minion which jobs it is running"
        " (`saltutil.running`). The other filters do not apply.",
    )

    def filter(self) -> JobFilter:
        return JobFilter.model_validate(self.model_dump(exclude={"live"}))


class AuditFilter(Arguments):
    """What to list of the audit log, newest first."""

    user: Text = Field(default=None, description="Who asked, exactly.")
    action: Text = Field(
        default=None,
        description="kill, login, jobs, job, activity, timeline, stream, audit, minions, minion,"
        " states or state.",
    )
    decision: Annotated[
        str | None,
        BeforeValidator(_one_of(DECISIONS, optional=True, say="allow or deny")),
        _enum(DECISIONS),
    ] = Field(default=None, description="`allow` or `deny`.")
    start: Time = Field(default=None, description="ISO 8601: entries at or after it.")
    end: Time = Field(default=None, description="ISO 8601: entries before it.")
    limit: Limit = Field(default=DEFAULT_LIMIT, description=f"Entries per page, 1 to {MAX_LIMIT}.")
    cursor: Text = Field(default=None, description="The `next` of the previous page.")


class ActivityQuery(Arguments):
    hours: Annotated[int, Field(ge=1, le=MAX_HOURS), BeforeValidator(_hours)] = Field(
        default=24,
        description=f"Hours back, 1 to {MAX_HOURS} (the current, partial hour included).",
    )


class TimelineQuery(Arguments):
    window: Annotated[str, BeforeValidator(_one_of(tuple(WINDOWS))), _enum(tuple(WINDOWS))] = Field(
        default="24h", description="1h, 4h, 24h or 7d."
    )
    group_by: Annotated[
        str, BeforeValidator(_one_of(GROUPINGS, say="function or user")), _enum(GROUPINGS)
    ] = Field(default="function", description="function or user.")


# Which minions of a job halite.rerun publishes it to again, by default the failed ones.
RERUN_SELECTIONS = ("failed", "no_return", "all")
MAX_RERUN_MINIONS = 10_000


def _rerun_minions(value: object, info: ValidationInfo) -> str | list[str]:
    """``failed``, ``no_return``, ``all``, or minion ids: a list, or text with commas
    (``web1,web2``; one id alone is a list of one)."""
    name = str(info.field_name)
    if value is None or value == "":
        return RERUN_SELECTIONS[0]
    if isinstance(value, str) and value in RERUN_SELECTIONS:
        return value
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        names = [part.strip() for part in str(value).split(",")]
    elif isinstance(value, (list, tuple)):
        names = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                raise QueryError(f"{name}: a minion id must be text, not {preview(item)}")
            names.append(str(item).strip())
    else:
        raise QueryError(
            f"{name} must be one of {', '.join(RERUN_SELECTIONS)} or minion ids, not"
            f" {preview(value)}"
        )
    if not names or any(not part for part in names):
        raise QueryError(f"{name}: an empty minion id in {preview(value)}")
    if any("\x00" in part or len(part) > 255 for part in names):
        raise QueryError(f"{name}: a minion id is at most 255 characters, without NUL")
    unique = list(dict.fromkeys(names))
    if len(unique) > MAX_RERUN_MINIONS:
        raise QueryError(f"{name}: at most {MAX_RERUN_MINIONS} minions, not {len(unique)}")
    return unique


class RerunArguments(Arguments):
    """Which minions to run a job again on."""

    minions: Annotated[
        str | list[str],
        BeforeValidator(_rerun_minions),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "enum": list(RERUN_SELECTIONS)},
                    {"type": "string", "description": "Minion ids separated by commas."},
                    {"type": "array", "items": {"type": "string"}, "minItems": 1},
                ]
            }
        ),
    ] = Field(
        default=RERUN_SELECTIONS[0],
        description="`failed` (minions that failed the job or never returned, the default),"
        " `no_return` (those settled as not returning), `all` (every minion of the job), or"
        " minion ids of the job: a list, or text with commas.",
    )


STATE_RESULTS = ("failed", "changed")
MINION_RESULTS = RESULTS  # a minion's result in a job: running, failed, changed or pass


class MinionsQuery(Arguments):
    """``halite.minions`` and ``GET /api/minions``: every minion that has returned, failing
    first (their latest real state run failed), then by id."""

    failing: Flag = Field(default=False, description="Only minions whose latest state run failed.")
    minion: Text = Field(default=None, description="Shell glob (`*`, `?`) on the minion id.")
    limit: Limit = Field(default=DEFAULT_LIMIT, description=f"Minions per page, 1 to {MAX_LIMIT}.")
    cursor: Text = Field(default=None, description="The `next` of the previous page.")


class MinionQuery(Arguments):
    """``halite.minion <id>`` and ``GET /api/minions/{id}``: that minion's jobs, newest
    first."""

    fun: Text = Field(default=None, description="Shell glob (`*`, `?`) on the function.")
    result: Annotated[
        str | None, BeforeValidator(_one_of(MINION_RESULTS, optional=True)), _enum(MINION_RESULTS)
    ] = Field(
        default=None,
        description="The minion's result in the job: `running`, `failed` (it failed, never"
        " returned or was killed), `changed` or `pass`.",
    )
    limit: Limit = Field(default=DEFAULT_LIMIT, description=f"Jobs per page, 1 to {MAX_LIMIT}.")
    cursor: Text = Field(default=None, description="The `next` of the previous page.")


class StatesQuery(Arguments):
    """``halite.states`` and ``GET /api/states``: the states that failed (or changed) across
    the fleet in a window, busiest first. Dry runs (test=True) are left out."""

    window: Annotated[str, BeforeValidator(_one_of(tuple(WINDOWS))), _enum(tuple(WINDOWS))] = Field(
        default="24h", description="1h, 4h, 24h or 7d."
    )
    result: Annotated[
        str, BeforeValidator(_one_of(STATE_RESULTS, say="failed or changed")), _enum(STATE_RESULTS)
    ] = Field(default="failed", description="States that `failed`, or that `changed` something.")
    minion: Text = Field(default=None, description="Shell glob (`*`, `?`) on the minion id.")
    sls: Text = Field(default=None, description="Shell glob (`*`, `?`) on the state's sls.")
    limit: Limit = Field(default=DEFAULT_LIMIT, description=f"States per page, 1 to {MAX_LIMIT}.")
    cursor: Text = Field(default=None, description="The `next` of the previous page.")


class StateQuery(Arguments):
    """``halite.state <state_id>`` and ``GET /api/states/{state_id}``: that state's failed
    and changed runs across the fleet, newest first."""

    result: Annotated[
        str | None,
        BeforeValidator(_one_of(STATE_RESULTS, optional=True, say="failed or changed")),
        _enum(STATE_RESULTS),
    ] = Field(default=None, description="Runs where it `failed`, or `changed` (default: both).")
    minion: Text = Field(default=None, description="Shell glob (`*`, `?`) on the minion id.")
    limit: Limit = Field(default=DEFAULT_LIMIT, description=f"Runs per page, 1 to {MAX_LIMIT}.")
    cursor: Text = Field(default=None, description="The `next` of the previous page.")


# ---------------------------------------------------------------------- answers
# Times are ISO 8601 text with an offset (UTC), as the queries write them.
TimeText = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
Strict = ConfigDict(extra="forbid")


@with_config(Strict)
class MinionCounts(TypedDict):
    """How many minions the job targeted, returned and failed (None in a live listing,
    which does not count them)."""

    targeted: int | None
    returned: int | None
    failed: int | None
    changed: int | None


@with_config(Strict)
class Job(TypedDict):
    """A listing's row."""

    jid: str
    function: str | None
    target: str | None
    target_type: str | None
    user: str | None
    # None only in a live listing, for a key of the master's job cache that is not a jid.
    start_time: TimeText | None
    end_time: TimeText | None
    status: Literal["running", "complete", "unknown"]
    # None only in a live listing, which reads no returns.
    result: Literal["running", "failed", "changed", "pass"] | None
    minions: MinionCounts
    system: bool
    master_id: str | None
    # The call's arguments as a command line shows them, cut for a listing (the detail
    # has them whole): see arguments_preview.
    arguments_preview: str


PREVIEW_CHARS = 80


def arguments_preview(arguments: object, kwargs: object, limit: int = PREVIEW_CHARS) -> str:
    """``halite_demo test=True``: positional arguments, then ``key=value``, text bare and
    anything else as JSON, cut to ``limit`` characters with an ellipsis."""

    def shown(value: object) -> str:
        if isinstance(value, str):
            return value
        try:
            return json.dumps(value, separators=(",", ":"), default=str)
        except (TypeError, ValueError):
            return repr(value)

    parts = [shown(a) for a in arguments] if isinstance(arguments, list) else []
    if isinstance(kwargs, Mapping):
        parts.extend(f"{k}={shown(v)}" for k, v in kwargs.items())
    text = " ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@with_config(Strict)
class Page(TypedDict):
    """One page of a listing, newest first; ``next`` is the cursor of the next page."""

    jobs: list[Job]
    next: str | None
    live: NotRequired[bool]


# One targeted minion of a job: its state, its return, whether it failed; for state.*
# jobs the return parsed into its states (highstate.parse). ("return" is a keyword.)
MinionResult = TypedDict(
    "MinionResult",
    {
        "minion": str,
        "state": Literal["running", "returned", "no_return", "killed"],
        "success": bool | None,
        "retcode": int | None,
        "returned_at": TimeText | None,
        "return": Any,
        "truncated": bool,
        "failed": bool,
        "highstate": NotRequired[dict[str, Any]],
    },
)
MinionResult.__pydantic_config__ = Strict  # type: ignore[attr-defined]


@with_config(Strict)
class StateTotals(TypedDict):
    """A ``state.*`` job's states over all its minions."""

    states: int
    passed: int
    failed: int
    changed: int
    duration_ms: float


@with_config(Strict)
class JobDetail(Job):
    """One job, minion by minion, those that failed first."""

    arguments: list[Any] | None
    kwargs: dict[str, Any] | None
    minion_results: list[MinionResult]
    states: NotRequired[StateTotals]
    # The job this one runs again (halite.rerun), and the jobs that run this one again,
    # newest first (at most MAX_RERUNS_SHOWN).
    rerun_of: str | None
    reruns: list[str]
    reruns_more: bool  # more re-runs than ``reruns`` lists
    may_kill: NotRequired[bool]
    may_rerun: NotRequired[bool]


@with_config(Strict)
class MinionKill(TypedDict):
    outcome: Literal["signalled", "not_running", "no_answer"]
    reply: Any


@with_config(Strict)
class KillOutcome(TypedDict):
    """What a kill did: the minions signalled, each asked minion's outcome, and whether
    the job is complete now; ``retcode`` 1 when no minion could be signalled."""

    jid: str
    function: str | None
    signalled: list[str]
    minions: dict[str, MinionKill]
    status: Literal["running", "complete"]
    retcode: NotRequired[int]


@with_config(Strict)
class RerunOutcome(TypedDict):
    """What a re-run published: the new job's jid, the job it runs again, the minions
    asked for and those the master published to (``missing``: asked for, not published
    to: the master knows no accepted key by that id)."""

    jid: str
    rerun_of: str
    function: str
    selection: Literal["failed", "no_return", "all", "minions"]
    requested: list[str]
    minions: list[str]
    missing: list[str]


@with_config(Strict)
class AuditEntry(TypedDict):
    id: int
    at: TimeText
    user: str | None
    action: str
    resource: str | None
    jid: str | None
    decision: Literal["allow", "deny"]
    outcome: Any
    arguments: Any
    master_id: str | None


@with_config(Strict)
class AuditPage(TypedDict):
    entries: list[AuditEntry]
    next: str | None


# An hour's jobs by result, as the listing's ``result`` column (docs/schema.md): the
# activity chart stacks them. ("pass" is a keyword.)
HourResults = TypedDict("HourResults", {"running": int, "failed": int, "changed": int, "pass": int})
HourResults.__pydantic_config__ = Strict  # type: ignore[attr-defined]


@with_config(Strict)
class HourCount(TypedDict):
    hour_start: TimeText
    count: int
    results: HourResults


@with_config(Strict)
class Activity(TypedDict):
    """Jobs started per hour, oldest first, and how many run now."""

    hours: list[HourCount]
    total: int
    running: int


@with_config(Strict)
class Bar(TypedDict):
    jid: str
    function: str | None
    user: str | None
    target: str | None
    start: TimeText
    end: TimeText
    status: Literal["running", "failed", "changed", "pass"]
    minions: int | None
    failed_minions: int | None


@with_config(Strict)
class TimelineRow(TypedDict):
    key: str
    bars: list[Bar]


@with_config(Strict)
class Timeline(TypedDict):
    """Jobs as bars, grouped by function or user, busiest row first."""

    window: str
    group_by: str
    rows: list[TimelineRow]
    truncated: bool


# ---------------------------------------------------------------------- fleet answers
Result = Literal["running", "failed", "changed", "pass"]


@with_config(Strict)
class StateCounts(TypedDict):
    states: int | None
    passed: int | None
    failed: int | None
    changed: int | None


@with_config(Strict)
class JobRef(TypedDict):
    jid: str
    function: str | None
    start_time: TimeText


@with_config(Strict)
class StateRun(TypedDict):
    """A minion's state run: the job, its result and counts, the ids of its failed states."""

    jid: str
    function: str | None
    start_time: TimeText
    result: Literal["failed", "changed", "pass"]
    counts: StateCounts
    failing_states: list[str]


@with_config(Strict)
class MinionRow(TypedDict):
    """One minion: whether its latest real state run failed, that run, its latest job.
    ``state_run`` is None when the minion has run no state (or the caller may not view
    state jobs); ``failing`` is then None too, if the caller may not view them."""

    minion: str
    failing: bool | None
    state_run: StateRun | None
    last_job: JobRef | None


@with_config(Strict)
class MinionsPage(TypedDict):
    minions: list[MinionRow]
    next: str | None


@with_config(Strict)
class MinionJob(TypedDict):
    """One job of a minion's history, as that minion ran it."""

    jid: str
    function: str | None
    start_time: TimeText
    state: Literal["running", "returned", "no_return", "killed"]
    success: bool | None
    retcode: int | None
    result: Result
    returned_at: TimeText | None
    test_run: bool | None
    counts: NotRequired[StateCounts]
    failing_states: NotRequired[list[str]]


@with_config(Strict)
class MinionHistory(TypedDict):
    minion: str
    jobs: list[MinionJob]
    next: str | None


@with_config(Strict)
class FailingState(TypedDict):
    """A state across the fleet in a window: on how many minions and in how many runs it
    failed (or changed), when first and last, and the latest comment."""

    state_key: str
    state_id: str
    function: str
    name: str | None
    sls: str | None
    minions: int
    runs: int
    first: TimeText
    last: TimeText
    comment: str | None


@with_config(Strict)
class StatesPage(TypedDict):
    window: str
    result: Literal["failed", "changed"]
    states: list[FailingState]
    next: str | None


@with_config(Strict)
class StateRunRow(TypedDict):
    """One failed or changed run of a state on a minion."""

    jid: str
    minion: str
    state_key: str
    function: str
    name: str | None
    sls: str | None
    result: Literal["failed", "changed"]
    comment: str | None
    start_time: TimeText
    returned_at: TimeText
    test_run: bool | None


@with_config(Strict)
class StateFailures(TypedDict):
    """Of the state's whole kept history: its failed runs, on how many minions, the first
    and the latest (None when it never failed)."""

    runs: int
    minions: int
    first: TimeText | None
    last: TimeText | None


@with_config(Strict)
class StateHistory(TypedDict):
    state_id: str
    failed: StateFailures
    runs: list[StateRunRow]
    next: str | None
