"""The whole Redis key schema of plait, in one place.

Every key of a workflow shares the hash tag ``{<wf>}`` so that each Lua script touches a
single slot and stays valid on Redis Cluster. A job is a step name, ``~complete``
(on_complete), ``~error`` (on_error) or ``~rb:<step>`` (a rollback); ``run|job|token`` names
one attempt of a job::

    <prefix>:{<wf>}:jobs              stream   step attempts to run (fields r: run id, j: job,
                                               t: token), read by the consumer group ``plait``
    <prefix>:{<wf>}:dead              stream   dead-lettered entries of ``jobs`` (fields source,
                                               entry, reason, fields: the entry's as JSON)
    <prefix>:{<wf>}:delayed           zset     "run|job|token" -> due ms: retries in their
                                               backoff, and jobs a step's rate limit put aside
    <prefix>:{<wf>}:waiting           zset     "run|job|token" -> ms put aside: jobs waiting for
                                               a running slot under ``Workflow(concurrency=)``
    <prefix>:{<wf>}:running           zset     "run|job" -> start ms: attempts holding a slot
                                               under ``Workflow(concurrency=)``
    <prefix>:{<wf>}:rate:<step>       zset     "run|job|token" -> start ms: the step's starts in
                                               the ``Step(rate_limit=)`` window (expires with it;
                                               ``rate:<step>:<key>`` per key with ``rate_key=``)
    <prefix>:{<wf>}:deadlines         zset     run id -> deadline ms (live runs with a timeout)
    <prefix>:{<wf>}:active            zset     run id -> created ms (runs not finished yet)
    <prefix>:{<wf>}:runs              zset     run id -> created ms (every run; trimmed by the
                                               reconciler ``2 x retention + 1 h`` after that)
    <prefix>:{<wf>}:consumers         hash     provider id -> "<seen ms>|<version>|,<job>,...,":
                                               what each instance consuming the workflow can
                                               run, refreshed by its heartbeat (an entry not
                                               refreshed for ``ANNOUNCED_FOR`` is not live)
    <prefix>:{<wf>}:stats             hash     status -> runs that ended so; ``fenced`` ->
                                               writes refused because their attempt was stale;
                                               ``idle`` (present while an instance waits on
                                               ``wake`` instead of reading the stream)
                                               ``wait:<job>`` -> last ms a job was put back
                                               because no live instance announced it
    <prefix>:{<wf>}:status            zset     "STATUS|created ms (13 digits)|run id" -> 0: every
                                               ended run under its end status, by creation time
                                               (ZRANGEBYLEX; added when a run ends, removed by
                                               a retry, trimmed with ``runs``; live runs are in
                                               ``active``)
    <prefix>:{<wf>}:meta:<field>:<value>  zset run id -> created ms: the runs whose meta has
                                               that value of a field the workflow indexes
                                               (``Workflow(indexed_meta=)``; trimmed at
                                               execute, and expires, with ``runs``' horizon)
    <prefix>:{<wf>}:idem:<key>        string   "run|input hash" of the run owning the
                                               idempotency key (expires: retention after it ends)
    <prefix>:{<wf>}:key:<key>:running zset  run id -> ms: runs holding a slot of concurrency key
                                               <key> (at most the workflow's per-key limit)
    <prefix>:{<wf>}:key:<key>:queue   zset     run id -> µs, in execute order: runs waiting for
                                               a slot of <key>
    <prefix>:{<wf>}:debounce:<key>    string   "run|first call ms" of the run a burst of debounced
                                               executes makes, while it waits (expires: after
                                               its quiet period)
    <prefix>:{<wf>}:run:<id>          hash     the run record: status, plan, per-job fields
                                               ``<job>|<field>`` (listed in ``lua/run_lib.lua``)
    <prefix>:{<wf>}:run:<id>:results  hash     step -> JSON result
    <prefix>:{<wf>}:run:<id>:events   stream   the run's RunEvents for ``watch()`` (fields k:
                                               kind, j: job, a: attempt, d: data)
    <prefix>:{<wf>}:finished          channel  "run|STATUS" when a run ends
    <prefix>:{<wf>}:cancel            channel  run id when its running steps must stop
    <prefix>:{<wf>}:deadline          channel  deadline ms of a run whose deadline became the
                                               workflow's earliest, or of the earliest retry
                                               (wakes every timer)
    <prefix>:{<wf>}:wake              channel  "" when an entry is added to ``jobs`` while
                                               ``stats`` holds ``idle`` (wakes idle workers)

A finished run's record, results, events and idempotency key expire ``retention`` after it
ended. Lua scripts declare in KEYS every key they touch that the caller can name, so Redis
Cluster checks them before running a script (``lua/run_lib.lua`` says how the few they cannot
name are reached): the workflow's keys from ``jobs`` to ``status`` (in the table's order, without
``dead``), then the record, results and events of each run named. ``base``
(``<prefix>:{<wf>}:``) is ARGV[1]; ``<prefix>:{<wf>}:settled`` is never written (a script asks
whether it exists to learn whether the slot is moving).

Every key of an event name shares the hash tag ``{<event>}`` behind an ``ev:`` namespace (so an
event never shares keys with a workflow of the same name)::

    <prefix>:ev:{<event>}:stream            stream   emitted events (fields id, data, meta, and
                                                     reply for requests); a consumer group per
                                                     subscribing group
    <prefix>:ev:{<event>}:dead              stream   dead-lettered deliveries (fields entry,
                                                     group, reason, error, fields, attempts)
    <prefix>:ev:{<event>}:delayed           zset     "k:<idempotency key>" | "i:<event id>" ->
                                                     due ms
    <prefix>:ev:{<event>}:delayed:data      hash     member of ``delayed`` -> JSON [id, data,
                                                     meta, reply, retention ms] of the entry to
                                                     add
    <prefix>:ev:{<event>}:idem:<key>        string   the event id owning the idempotency key
                                                     (expires: retention; a delayed event's
                                                     once it is moved to the stream)
    <prefix>:ev:{<event>}:retry:<group>     zset     stream entry id -> due ms (pending in the
                                                     group, waiting for its retry backoff)
    <prefix>:ev:{<event>}:attempts:<group>  hash     stream entry id -> attempts failed or lost
                                                     so far
    <prefix>:ev:{<event>}:answer:<request>  string   the reply to a request (the message also
                                                     published on its reply channel), kept for
                                                     a requester that was reconnecting
                                                     (expires: the request's timeout + 1 s)
    <prefix>:ev:{<event>}:reply:<provider>  channel  replies to that provider's requests

Event scripts declare every key they touch in KEYS too (the stream first when they touch it).

Schedules live under their own hash tag, one per kind of target (``workflows`` or ``events``),
so a firing script touches one slot; the run or event a tick fires goes through the ordinary
execute or emit path, with the keys of its workflow or event::

    <prefix>:schedules:{<kind>}:specs       hash     schedule id -> JSON spec (target, data,
                                                     cron or every, timezone, policies, paused)
    <prefix>:schedules:{<kind>}:due         zset     schedule id -> ms of its earliest tick not
                                                     fired yet (schedules not paused)
    <prefix>:schedules:{<kind>}:state       hash     schedule id -> JSON {tick, run}: the last
                                                     tick fired and the run or event it made

Five keys belong to the whole deployment under a prefix (each used alone, outside any script)::

    <prefix>:schema                         string   the key schema version of the data under
                                                     the prefix (:data:`SCHEMA_VERSION`, set by
                                                     the first provider to start)
    <prefix>:instances                      zset     provider id -> last heartbeat ms
    <prefix>:reconcile:lock                 string   the provider doing a reconciler pass
                                                     (expires: 0.9 x the reconcile interval)
    <prefix>:workflows                      zset     workflow name -> ms it was last enrolled
                                                     (a consumer started, or a first execute)
    <prefix>:events                         zset     event name -> ms it was last enrolled
                                                     (a handler's group started)

``workflows`` and ``events`` are the registry that tools read instead of scanning the keyspace
(``_ops/catalog.py``); nothing removes a name but ``plait registry forget``.

:data:`SCHEMA` holds these tables as data (``tests/test_keys.py`` checks that they agree and that
every key a provider writes matches one of them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SCHEMA_VERSION = 1
"""The version of this key schema. A change that an older plait cannot read, or would damage,
raises it; a provider refuses to start on data recorded with another version."""

GROUP = "plait"
"""The consumer group every instance reads step streams through."""


@dataclass(frozen=True, slots=True)
class WorkflowKeys:
    """Keys of one workflow under one prefix."""

    prefix: str
    workflow: str
    base: str = field(init=False, repr=False, compare=False)
    """Common start of every key of this workflow (carries the hash tag); built once."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", f"{self.prefix}:{{{self.workflow}}}:")

    @property
    def jobs(self) -> str:
        """Stream of step attempts to run."""
        return self.base + "jobs"

    @property
    def dead(self) -> str:
        """Stream of dead-lettered entries of :attr:`jobs`."""
        return self.base + "dead"

    @property
    def delayed(self) -> str:
        """Zset of attempts in their retry backoff or put aside by a rate limit."""
        return self.base + "delayed"

    @property
    def waiting(self) -> str:
        """Zset of attempts waiting for a running slot under the workflow's concurrency."""
        return self.base + "waiting"

    @property
    def running(self) -> str:
        """Zset of attempts holding a running slot under the workflow's concurrency."""
        return self.base + "running"

    def rate(self, step: str) -> str:
        """Zset of the starts of ``step`` in its rate limit's window."""
        return f"{self.base}rate:{step}"

    @property
    def deadlines(self) -> str:
        """Zset of live runs with a timeout, by deadline."""
        return self.base + "deadlines"

    @property
    def active(self) -> str:
        """Zset of the runs not finished yet."""
        return self.base + "active"

    @property
    def runs(self) -> str:
        """Zset of every run, by creation time."""
        return self.base + "runs"

    @property
    def consumers(self) -> str:
        """Hash of what each instance consuming the workflow can run (its announcement)."""
        return self.base + "consumers"

    @property
    def stats(self) -> str:
        """Hash of counters: runs ended per status, fenced writes."""
        return self.base + "stats"

    @property
    def finished_channel(self) -> str:
        """Pub/sub channel told ``run|STATUS`` when a run ends."""
        return self.base + "finished"

    @property
    def cancel_channel(self) -> str:
        """Pub/sub channel told a run id when the run's running steps must stop."""
        return self.base + "cancel"

    @property
    def deadline_channel(self) -> str:
        """Pub/sub channel told a deadline ms when it became the workflow's earliest."""
        return self.base + "deadline"

    @property
    def wake_channel(self) -> str:
        """Pub/sub channel told when an entry is added to :attr:`jobs` while an instance waits
        for one without reading (the ``idle`` field of :attr:`stats`)."""
        return self.base + "wake"

    @property
    def status(self) -> str:
        """Zset (by lex) of every ended run under its end status, by creation time."""
        return self.base + "status"

    def meta_index(self, name: str, value: str) -> str:
        """Zset of the runs whose meta field ``name`` (one the workflow indexes) is ``value``."""
        return f"{self.base}meta:{name}:{value}"

    def idempotency(self, key: str) -> str:
        """The run owning idempotency ``key`` (and its input hash)."""
        return f"{self.base}idem:{key}"

    def key_running(self, key: str) -> str:
        """Zset of the runs holding a slot of concurrency key ``key``."""
        return f"{self.base}key:{key}:running"

    def key_queue(self, key: str) -> str:
        """Zset of the runs waiting for a slot of concurrency key ``key``, oldest first."""
        return f"{self.base}key:{key}:queue"

    def debounce(self, key: str) -> str:
        """The run that a burst of executes with debounce key ``key`` makes, while it waits."""
        return f"{self.base}debounce:{key}"

    def run(self, run_id: str) -> str:
        """Hash of the run record."""
        return f"{self.base}run:{run_id}"

    def results(self, run_id: str) -> str:
        """Hash of the run's step results."""
        return f"{self.base}run:{run_id}:results"

    def events(self, run_id: str) -> str:
        """Stream of the run's events (``watch()``)."""
        return f"{self.base}run:{run_id}:events"


@dataclass(frozen=True, slots=True)
class EventKeys:
    """Keys of one event name under one prefix."""

    prefix: str
    event: str

    @property
    def base(self) -> str:
        """Common start of every key of this event (carries the hash tag)."""
        return f"{self.prefix}:ev:{{{self.event}}}:"

    @property
    def stream(self) -> str:
        """Stream of emitted events, one consumer group per subscribing group."""
        return self.base + "stream"

    @property
    def dead(self) -> str:
        """Stream of dead-lettered deliveries."""
        return self.base + "dead"

    @property
    def delayed(self) -> str:
        """Zset of delayed events not in the stream yet, by due time."""
        return self.base + "delayed"

    @property
    def delayed_data(self) -> str:
        """Hash of the entries of :attr:`delayed`."""
        return self.base + "delayed:data"

    def idempotency(self, key: str) -> str:
        """The event owning idempotency ``key``."""
        return f"{self.base}idem:{key}"

    def retry(self, group: str) -> str:
        """Zset of ``group``'s pending entries waiting for their retry backoff."""
        return f"{self.base}retry:{group}"

    def attempts(self, group: str) -> str:
        """Hash of the attempts of ``group``'s entries that failed or were lost."""
        return f"{self.base}attempts:{group}"

    def answer(self, request_id: str) -> str:
        """The reply to request ``request_id``, kept until the requester may have read it."""
        return f"{self.base}answer:{request_id}"

    def reply_channel(self, provider_id: str) -> str:
        """Pub/sub channel of the replies to ``provider_id``'s requests."""
        return f"{self.base}reply:{provider_id}"


@dataclass(frozen=True, slots=True)
class ScheduleKeys:
    """Keys of the schedules of one kind (``workflows`` or ``events``) under one prefix."""

    prefix: str
    kind: str

    @property
    def base(self) -> str:
        """Common start of every key of these schedules (carries the hash tag)."""
        return f"{self.prefix}:schedules:{{{self.kind}}}:"

    @property
    def specs(self) -> str:
        """Hash of the schedules' specs."""
        return self.base + "specs"

    @property
    def due(self) -> str:
        """Zset of the schedules not paused, by their earliest tick not fired yet."""
        return self.base + "due"

    @property
    def state(self) -> str:
        """Hash of the last tick each schedule fired, and what it made."""
        return self.base + "state"


def schema_version(prefix: str) -> str:
    """String: the key schema version of the data under ``prefix``."""
    return f"{prefix}:schema"


def instances(prefix: str) -> str:
    """Zset provider id -> last heartbeat ms of every started provider (live instances)."""
    return f"{prefix}:instances"


def reconcile_lock(prefix: str) -> str:
    """The short lock that lets one instance at a time run a reconciler pass."""
    return f"{prefix}:reconcile:lock"


def workflow_registry(prefix: str) -> str:
    """Zset workflow name -> ms last enrolled: every workflow consumed or executed."""
    return f"{prefix}:workflows"


def event_registry(prefix: str) -> str:
    """Zset event name -> ms last enrolled: every event a handler's group subscribes to."""
    return f"{prefix}:events"


@dataclass(frozen=True, slots=True)
class KeyPattern:
    """One row of the tables above: a key (or pub/sub channel) of the schema."""

    template: str
    """The key as the tables write it, with ``<placeholders>`` (``<prefix>``, ``<wf>``...)."""
    type: str
    """``stream``, ``zset``, ``hash`` or ``string``; ``channel`` for a pub/sub channel (no key)."""

    def regex(self, prefix: str) -> re.Pattern[str]:
        """What the keys of this pattern under ``prefix`` match (a hash tag holds no braces)."""
        regex = ""
        # split() alternates the text between placeholders and the placeholders' names.
        for at, piece in enumerate(_PLACEHOLDER.split(self.template)):
            if at % 2 == 0:
                regex += re.escape(piece)
            elif piece == "prefix":
                regex += re.escape(prefix)
            else:
                regex += _FILL.get(piece, ".+")
        return re.compile(regex)


_PLACEHOLDER = re.compile(r"<([a-z]+)>")
_FILL = {"wf": "[^{}]+", "event": "[^{}]+", "kind": "(?:workflows|events)"}

SCHEMA: tuple[KeyPattern, ...] = (
    KeyPattern("<prefix>:{<wf>}:jobs", "stream"),
    KeyPattern("<prefix>:{<wf>}:dead", "stream"),
    KeyPattern("<prefix>:{<wf>}:delayed", "zset"),
    KeyPattern("<prefix>:{<wf>}:waiting", "zset"),
    KeyPattern("<prefix>:{<wf>}:running", "zset"),
    KeyPattern("<prefix>:{<wf>}:rate:<step>", "zset"),
    KeyPattern("<prefix>:{<wf>}:deadlines", "zset"),
    KeyPattern("<prefix>:{<wf>}:active", "zset"),
    KeyPattern("<prefix>:{<wf>}:runs", "zset"),
    KeyPattern("<prefix>:{<wf>}:consumers", "hash"),
    KeyPattern("<prefix>:{<wf>}:stats", "hash"),
    KeyPattern("<prefix>:{<wf>}:status", "zset"),
    KeyPattern("<prefix>:{<wf>}:meta:<field>:<value>", "zset"),
    KeyPattern("<prefix>:{<wf>}:idem:<key>", "string"),
    KeyPattern("<prefix>:{<wf>}:key:<key>:running", "zset"),
    KeyPattern("<prefix>:{<wf>}:key:<key>:queue", "zset"),
    KeyPattern("<prefix>:{<wf>}:debounce:<key>", "string"),
    KeyPattern("<prefix>:{<wf>}:run:<id>", "hash"),
    KeyPattern("<prefix>:{<wf>}:run:<id>:results", "hash"),
    KeyPattern("<prefix>:{<wf>}:run:<id>:events", "stream"),
    KeyPattern("<prefix>:{<wf>}:finished", "channel"),
    KeyPattern("<prefix>:{<wf>}:cancel", "channel"),
    KeyPattern("<prefix>:{<wf>}:deadline", "channel"),
    KeyPattern("<prefix>:{<wf>}:wake", "channel"),
    KeyPattern("<prefix>:ev:{<event>}:stream", "stream"),
    KeyPattern("<prefix>:ev:{<event>}:dead", "stream"),
    KeyPattern("<prefix>:ev:{<event>}:delayed", "zset"),
    KeyPattern("<prefix>:ev:{<event>}:delayed:data", "hash"),
    KeyPattern("<prefix>:ev:{<event>}:idem:<key>", "string"),
    KeyPattern("<prefix>:ev:{<event>}:retry:<group>", "zset"),
    KeyPattern("<prefix>:ev:{<event>}:attempts:<group>", "hash"),
    KeyPattern("<prefix>:ev:{<event>}:answer:<request>", "string"),
    KeyPattern("<prefix>:ev:{<event>}:reply:<provider>", "channel"),
    KeyPattern("<prefix>:schedules:{<kind>}:specs", "hash"),
    KeyPattern("<prefix>:schedules:{<kind>}:due", "zset"),
    KeyPattern("<prefix>:schedules:{<kind>}:state", "hash"),
    KeyPattern("<prefix>:schema", "string"),
    KeyPattern("<prefix>:instances", "zset"),
    KeyPattern("<prefix>:reconcile:lock", "string"),
    KeyPattern("<prefix>:workflows", "zset"),
    KeyPattern("<prefix>:events", "zset"),
)
"""Every key and channel of the schema, in the order of the tables above."""


def pattern_of(key: str, prefix: str) -> KeyPattern | None:
    """The pattern of :data:`SCHEMA` that ``key`` (or a channel) belongs to, if any.

    When several match (``run:<id>`` also matches a results key), the most specific one wins:
    the one with the most characters outside its placeholders.
    """
    matching = [pattern for pattern in SCHEMA if pattern.regex(prefix).fullmatch(key)]
    return max(
        matching, key=lambda pattern: len(_PLACEHOLDER.sub("", pattern.template)), default=None
    )


def workflow_pattern(prefix: str, suffix: str) -> str:
    """SCAN pattern of one key of every workflow (``suffix``: ``runs``, ``jobs``, ``dead``...)."""
    return f"{prefix}:{{*}}:{suffix}"


def event_pattern(prefix: str, suffix: str) -> str:
    """SCAN pattern of one key of every event name (``suffix``: ``stream``, ``dead``...)."""
    return f"{prefix}:ev:{{*}}:{suffix}"


def workflow_of_key(key: str, prefix: str) -> str:
    """The workflow named by a key of that workflow (``<prefix>:{<wf>}:...``)."""
    return key[len(prefix) + 2 :].partition("}")[0]


def event_of_key(key: str, prefix: str) -> str:
    """The event named by a key of that event (``<prefix>:ev:{<event>}:...``)."""
    return key[len(prefix) + 5 :].partition("}")[0]


def workflow_of(run_id: str) -> str:
    """The workflow name carried by a run id (``<workflow>.<hex>``)."""
    workflow, dot, _ = run_id.rpartition(".")
    return workflow if dot else ""
