"""The whole Redis key schema of plait, in one place.

Every key of a workflow shares the hash tag ``{<workflow>}`` so that each Lua script touches a
single slot and stays valid on Redis Cluster::

    <prefix>:{<wf>}:jobs              stream of step attempts, read by the group ``plait``
    <prefix>:{<wf>}:delayed           zset "run|job|token" -> due ms (retries with backoff)
    <prefix>:{<wf>}:deadlines         zset run id -> deadline ms
    <prefix>:{<wf>}:active            zset run id -> created ms (runs not finished yet)
    <prefix>:{<wf>}:runs              zset run id -> created ms (every run kept; trimmed after
                                      ``retention`` by the reconciler)
    <prefix>:{<wf>}:caps              JSON: which handlers the consumers have (on_complete...)
    <prefix>:{<wf>}:dead              stream of dead-lettered entries, with a reason
    <prefix>:{<wf>}:stats             hash status -> runs that ended so (counters)
    <prefix>:{<wf>}:finished          pub/sub channel: "run|STATUS" when a run ends
    <prefix>:{<wf>}:cancel            pub/sub channel: run id when running steps must stop
    <prefix>:{<wf>}:idem:<key>        string "run|input hash"
    <prefix>:{<wf>}:run:<id>          hash: the run record (status, plan, per-job fields)
    <prefix>:{<wf>}:run:<id>:results  hash: step -> JSON result
    <prefix>:{<wf>}:run:<id>:events   stream of RunEvents (watch)

Lua scripts receive the run hash as KEYS[1] and ``base`` (``<prefix>:{<wf>}:``) as ARGV[1]
and derive the other keys of the same slot from it, which keeps calls short.

Every key of an event name shares the hash tag ``{<event>}`` behind an ``ev:`` namespace (so an
event never shares keys with a workflow of the same name)::

    <prefix>:ev:{<event>}:stream            stream of emitted events, one consumer group per group
    <prefix>:ev:{<event>}:dead              stream of dead-lettered deliveries (group, reason)
    <prefix>:ev:{<event>}:delayed           zset "k:<idempotency key>" | "i:<event id>" -> due ms
    <prefix>:ev:{<event>}:delayed:data      hash member of ``delayed`` -> JSON of the entry's fields
    <prefix>:ev:{<event>}:idem:<key>        string: the event id owning the key (expires: retention)
    <prefix>:ev:{<event>}:retry:<group>     zset stream entry id -> due ms (pending, in backoff)
    <prefix>:ev:{<event>}:attempts:<group>  hash stream entry id -> attempts failed or lost so far
    <prefix>:ev:{<event>}:reply:<provider>  pub/sub channel: replies to that provider's requests

Event scripts receive the stream as KEYS[1] and ``base`` (``<prefix>:ev:{<event>}:``) as
ARGV[1], like the run scripts.
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "plait"
"""The consumer group every instance reads step streams through."""


@dataclass(frozen=True, slots=True)
class WorkflowKeys:
    """Keys of one workflow under one prefix."""

    prefix: str
    workflow: str

    @property
    def base(self) -> str:
        """Common start of every key of this workflow (carries the hash tag)."""
        return f"{self.prefix}:{{{self.workflow}}}:"

    @property
    def jobs(self) -> str:
        return self.base + "jobs"

    @property
    def delayed(self) -> str:
        return self.base + "delayed"

    @property
    def deadlines(self) -> str:
        return self.base + "deadlines"

    @property
    def active(self) -> str:
        return self.base + "active"

    @property
    def runs(self) -> str:
        return self.base + "runs"

    @property
    def caps(self) -> str:
        return self.base + "caps"

    @property
    def dead(self) -> str:
        return self.base + "dead"

    @property
    def stats(self) -> str:
        return self.base + "stats"

    @property
    def finished_channel(self) -> str:
        return self.base + "finished"

    @property
    def cancel_channel(self) -> str:
        return self.base + "cancel"

    def idempotency(self, key: str) -> str:
        return f"{self.base}idem:{key}"

    def run(self, run_id: str) -> str:
        return f"{self.base}run:{run_id}"

    def results(self, run_id: str) -> str:
        return f"{self.base}run:{run_id}:results"

    def events(self, run_id: str) -> str:
        return f"{self.base}run:{run_id}:events"


def reconcile_lock(prefix: str) -> str:
    """The short lock that lets one instance at a time run a reconciler pass."""
    return f"{prefix}:reconcile:lock"


def active_pattern(prefix: str) -> str:
    """SCAN pattern of every workflow's set of live runs."""
    return f"{prefix}:{{*}}:active"


def runs_pattern(prefix: str) -> str:
    """SCAN pattern of every workflow's index of runs."""
    return f"{prefix}:{{*}}:runs"


def workflow_of_key(key: str, prefix: str) -> str:
    """The workflow named by a key of that workflow (``<prefix>:{<wf>}:...``)."""
    return key[len(prefix) + 2 :].partition("}")[0]


def workflow_of(run_id: str) -> str:
    """The workflow name carried by a run id (``<workflow>.<hex>``)."""
    workflow, dot, _ = run_id.rpartition(".")
    return workflow if dot else ""


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
        return self.base + "stream"

    @property
    def dead(self) -> str:
        return self.base + "dead"

    @property
    def stats(self) -> str:
        return self.base + "stats"

    @property
    def delayed(self) -> str:
        return self.base + "delayed"

    @property
    def delayed_data(self) -> str:
        return self.base + "delayed:data"

    def idempotency(self, key: str) -> str:
        return f"{self.base}idem:{key}"

    def retry(self, group: str) -> str:
        return f"{self.base}retry:{group}"

    def attempts(self, group: str) -> str:
        return f"{self.base}attempts:{group}"

    def reply_channel(self, provider_id: str) -> str:
        return f"{self.base}reply:{provider_id}"


def instances(prefix: str) -> str:
    """Zset provider id -> last heartbeat ms of every started provider (live instances)."""
    return f"{prefix}:instances"


def workflow_pattern(prefix: str, suffix: str) -> str:
    """SCAN pattern of one key of every workflow (``suffix``: ``runs``, ``jobs``, ``dead``...)."""
    return f"{prefix}:{{*}}:{suffix}"


def event_pattern(prefix: str, suffix: str) -> str:
    """SCAN pattern of one key of every event name (``suffix``: ``stream``, ``dead``...)."""
    return f"{prefix}:ev:{{*}}:{suffix}"


def event_of_key(key: str, prefix: str) -> str:
    """The event named by a key of that event (``<prefix>:ev:{<event>}:...``)."""
    return key[len(prefix) + 5 :].partition("}")[0]
