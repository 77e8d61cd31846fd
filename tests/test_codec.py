"""The payload codec: inputs, results, progress, signals and event data encoded before they
reach Redis (encryption, compression) and decoded for handlers and callers."""

from __future__ import annotations

import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from typing import Any

import anyio
import pytest
from conftest import FAST_RETRY, OpenProvider, eventually, keys_under, only_provider_keys
from cryptography.fernet import Fernet
from pydantic import BaseModel

from plait.events import Event, EventContext, EventPayloadDecodeError, InvalidEventError
from plait.providers.redis import (
    CodecChain,
    FernetCodec,
    PayloadCodec,
    RedisEventProvider,
    RedisWorkflowProvider,
    ZlibCodec,
)
from plait.providers.redis._core.codecs import PLAIN, Payloads, UndecodableError
from plait.providers.redis._core.connection import connect
from plait.providers.redis._core.keys import EventKeys
from plait.workflows import (
    InvalidInputError,
    PayloadDecodeError,
    StepContext,
    Workflow,
    WorkflowConsumer,
    WorkflowStepError,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(40)]


class Order(BaseModel):
    note: str


class Approval(BaseModel):
    by: str


class Receipt(BaseModel):
    text: str


class Note(BaseModel):
    text: str


noted = Event("codec.noted", data=Note)
asked = Event("codec.asked", data=Note, result=Note)

flow = (
    Workflow("codec-flow", input=Order, output=Receipt)
    .step("charge")
    .wait("approval", data=Approval)
    .step("ship")
)


def consumer(seen: dict[str, Any]) -> WorkflowConsumer[Order, Receipt]:
    """Steps that save progress, return results and read each other's, and a signal wait."""
    made: WorkflowConsumer[Order, Receipt] = WorkflowConsumer(flow)

    @made.step("charge")
    async def charge(ctx: StepContext[Order]) -> dict[str, str]:
        seen["input"] = ctx.input.note
        await ctx.save_progress({"progress": f"{ctx.input.note}-progress"})
        return {"charged": f"{ctx.input.note}-charged"}

    @made.step("ship")
    async def ship(ctx: StepContext[Order]) -> dict[str, str]:
        seen["charge"] = ctx.results["charge"]
        seen["approval"] = ctx.results["approval"]
        return {"shipped": f"{ctx.input.note}-shipped"}

    @made.on_complete
    async def done(ctx: Any) -> Receipt:
        return Receipt(text=f"{ctx.results['ship']['shipped']}-receipt")

    return made


def fernet(*keys: bytes) -> FernetCodec:
    return FernetCodec(keys)


async def finish_run(
    workflows: RedisWorkflowProvider, marker: str, *, key: str = "", timeout: float = 15
) -> Receipt:
    handle = await workflows.execute(flow, {"note": marker}, idempotency_key=key or None)
    await _signal_when_waiting(workflows, handle.run_id, marker)
    receipt: Receipt = await handle.result(timeout=timeout)
    return receipt


async def _signal_when_waiting(workflows: RedisWorkflowProvider, run_id: str, marker: str) -> None:
    with anyio.fail_after(15):
        while True:
            info = await (await workflows.get_handle(run_id)).describe()
            wait = info.waits.get("approval")
            if wait is not None and wait.state == "waiting":
                break
            await anyio.sleep(0.02)
    assert await workflows.signal(run_id, "approval", {"by": f"{marker}-signal"})


async def result_of(workflows: RedisWorkflowProvider, run_id: str) -> Receipt:
    receipt: Receipt = await (await workflows.get_handle(run_id, flow)).result(timeout=15)
    return receipt


@pytest.fixture
async def store(url: str) -> AsyncIterator[Any]:
    connection = connect(url, connect_timeout=2.0)
    try:
        yield connection.client
    finally:
        await connection.aclose()


async def dump(store: Any, prefix: str) -> bytes:
    """Every value of every key under ``prefix``, of every type, as one blob of bytes."""
    blob = bytearray()
    async for key in store.scan_iter(match=f"{prefix}:*", count=1000):
        kind = (await store.type(key)).decode()
        if kind == "string":
            blob += await store.get(key) or b""
        elif kind == "hash":
            for field, value in (await store.hgetall(key)).items():
                blob += field + b"=" + value + b"\n"
        elif kind == "stream":
            for _, fields in await store.xrange(key):
                for field, value in fields.items():
                    blob += field + b"=" + value + b"\n"
        elif kind == "zset":
            for member in await store.zrange(key, 0, -1):
                blob += member + b"\n"
        elif kind == "list":
            for item in await store.lrange(key, 0, -1):
                blob += item + b"\n"
        elif kind == "set":
            for member in await store.smembers(key):
                blob += member + b"\n"
        blob += key + b"\n"
    return bytes(blob)


async def _true(value: bool) -> bool:
    return value


async def _count_at_least(count: Awaitable[int], minimum: int) -> bool:
    return await count >= minimum


# -- round trips -------------------------------------------------------------------------------


async def test_a_run_round_trips_input_results_progress_and_signal_through_a_codec(
    open_provider: OpenProvider,
) -> None:
    seen: dict[str, Any] = {}
    codec = CodecChain(ZlibCodec(threshold=0), fernet(Fernet.generate_key()))
    workflows = await open_provider(consumer(seen), codec=codec)

    receipt = await finish_run(workflows, "m1")

    assert receipt == Receipt(text="m1-shipped-receipt")
    assert seen == {
        "input": "m1",
        "charge": {"charged": "m1-charged"},
        "approval": Approval(by="m1-signal"),
    }


async def test_watch_decodes_progress_events(open_provider: OpenProvider) -> None:
    workflows = await open_provider(consumer({}), codec=fernet(Fernet.generate_key()))
    handle = await workflows.execute(flow, {"note": "w1"})
    await _signal_when_waiting(workflows, handle.run_id, "w1")
    await handle.result(timeout=15)

    progress = [event.data for event in await _events(workflows, handle.run_id)]
    assert {"progress": {"progress": "w1-progress"}} in progress


async def _events(workflows: RedisWorkflowProvider, run_id: str) -> list[Any]:
    events = []
    async for event in (await workflows.get_handle(run_id)).watch():
        if event.kind == "step.progress":
            events.append(event)
    return events


async def test_event_data_and_request_replies_round_trip_through_a_codec(
    url: str, prefix: str
) -> None:
    codec = CodecChain(ZlibCodec(threshold=0), fernet(Fernet.generate_key()))
    got: list[str] = []
    async with RedisEventProvider.from_url(url, group="g", prefix=prefix, codec=codec) as events:

        @events.on(noted)
        async def note(ctx: EventContext[Note]) -> None:
            got.append(ctx.data.text)

        @events.on(asked)
        async def answer(ctx: EventContext[Note]) -> Note:
            return Note(text=f"{ctx.data.text}-reply")

        await events.ready()
        await events.emit(noted, {"text": "e1"})
        await events.emit(noted, {"text": "e2"}, delay=timedelta(milliseconds=50))
        reply = await events.request(asked, {"text": "r1"}, timeout=timedelta(seconds=10))
        await eventually(lambda: _true(len(got) == 2), what="both events handled")

    assert reply == Note(text="r1-reply")
    assert sorted(got) == ["e1", "e2"]


async def test_redis_holds_no_plaintext_of_an_encrypted_run_or_event(
    url: str, prefix: str, open_provider: OpenProvider, store: Any
) -> None:
    marker = f"secret{uuid.uuid4().hex[:12]}"
    codec = fernet(Fernet.generate_key())
    async with RedisEventProvider.from_url(
        url, group="g", prefix=prefix, codec=codec, retry=FAST_RETRY
    ) as events:

        @events.on(noted)
        async def note(ctx: EventContext[Note]) -> None:
            pass

        @events.on(asked)
        async def answer(ctx: EventContext[Note]) -> Note:
            return Note(text=f"{ctx.data.text}-reply")

        workflows = await open_provider(consumer({}), codec=codec, events=events)
        await events.ready()
        receipt = await finish_run(workflows, marker)
        await events.emit(noted, {"text": f"{marker}-event"})
        await events.emit(noted, {"text": f"{marker}-delayed"}, delay=timedelta(hours=1))
        reply = await events.request(asked, {"text": marker}, timeout=timedelta(seconds=10))
        await workflows.schedule(
            "nightly", flow, {"note": f"{marker}-scheduled"}, every=timedelta(hours=24)
        )

        blob = await dump(store, prefix)

    assert receipt.text.startswith(marker)
    assert reply.text == f"{marker}-reply"
    assert b"-receipt" not in blob and b"-progress" not in blob and b"-signal" not in blob
    assert [blob[max(at - 80, 0) : at + 40] for at in _finds(blob, marker.encode())] == []


def _finds(blob: bytes, marker: bytes) -> list[int]:
    found, at = [], blob.find(marker)
    while at >= 0:
        found.append(at)
        at = blob.find(marker, at + 1)
    return found


# -- keys --------------------------------------------------------------------------------------


async def test_a_rotated_key_list_reads_what_the_old_key_wrote(
    open_provider: OpenProvider,
) -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    before = await open_provider(codec=fernet(old))
    handle = await before.execute(flow, {"note": "rot"})

    after = await open_provider(consumer({}), codec=fernet(new, old))
    await _signal_when_waiting(after, handle.run_id, "rot")

    assert await result_of(after, handle.run_id) == Receipt(text="rot-shipped-receipt")
    with pytest.raises(PayloadDecodeError):  # written with the new key, which it lacks
        await result_of(before, handle.run_id)


async def test_a_worker_with_the_wrong_key_fails_the_attempt_with_a_clear_cause(
    open_provider: OpenProvider,
) -> None:
    writer = await open_provider(codec=fernet(Fernet.generate_key()))
    handle = await writer.execute(flow, {"note": "wrong"})
    await open_provider(consumer({}), codec=fernet(Fernet.generate_key()))

    with pytest.raises(WorkflowStepError) as failed:
        await handle.result(timeout=15)
    assert failed.value.cause_type == "plait.PayloadDecode"
    assert "codec" in failed.value.cause_message


async def test_an_event_the_codec_cannot_decode_is_dead_lettered_with_the_reason(
    url: str, prefix: str, store: Any
) -> None:
    handled: list[str] = []
    dead = EventKeys(prefix, noted.name).dead
    async with (
        RedisEventProvider.from_url(
            url, group="g", prefix=prefix, codec=fernet(Fernet.generate_key())
        ) as reader,
        RedisEventProvider.from_url(
            url, group="w", prefix=prefix, codec=fernet(Fernet.generate_key())
        ) as writer,
    ):

        @reader.on(noted)
        async def note(ctx: EventContext[Note]) -> None:
            handled.append(ctx.data.text)

        await reader.ready()
        await writer.emit(noted, {"text": "lost-key"})
        await eventually(lambda: _count_at_least(store.xlen(dead), 1), what="a dead letter")
    [(_, fields)] = await store.xrange(dead)
    assert fields[b"reason"].decode().startswith("malformed entry: the payload codec")
    assert handled == []


async def test_a_reply_the_requester_cannot_decode_raises_a_typed_error(
    url: str, prefix: str
) -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    async with (  # mid-rotation: the answerer has the new key first, the requester not yet
        RedisEventProvider.from_url(url, group="g", prefix=prefix, codec=fernet(new, old)) as b,
        RedisEventProvider.from_url(url, group="r", prefix=prefix, codec=fernet(old)) as asker,
    ):

        @b.on(asked)
        async def answer(ctx: EventContext[Note]) -> Note:
            return Note(text=f"{ctx.data.text}-reply")

        await b.ready()
        with pytest.raises(EventPayloadDecodeError, match="codec"):
            await asker.request(asked, {"text": "q"}, timeout=timedelta(seconds=10))


# -- plaintext and no codec --------------------------------------------------------------------


async def test_data_written_without_a_codec_stays_readable_once_one_is_enabled(
    open_provider: OpenProvider,
) -> None:
    plain = await open_provider()
    handle = await plain.execute(flow, {"note": "plain"})
    encrypted = await open_provider(consumer({}), codec=fernet(Fernet.generate_key()))
    await _signal_when_waiting(encrypted, handle.run_id, "plain")

    assert await result_of(encrypted, handle.run_id) == Receipt(text="plain-shipped-receipt")


async def test_encoded_data_read_without_the_codec_raises_a_typed_error(
    open_provider: OpenProvider,
) -> None:
    encrypted = await open_provider(consumer({}), codec=fernet(Fernet.generate_key()))
    receipt = await finish_run(encrypted, "no-codec", key="no-codec-key")
    plain = await open_provider()

    assert receipt.text == "no-codec-shipped-receipt"
    attached = await encrypted.execute(flow, {"note": "no-codec"}, idempotency_key="no-codec-key")
    with pytest.raises(PayloadDecodeError, match="codec"):
        await result_of(plain, attached.run_id)


async def test_the_size_guard_counts_the_plaintext_json(open_provider: OpenProvider) -> None:
    workflows = await open_provider(max_payload_bytes=2_000, codec=ZlibCodec())

    with pytest.raises(InvalidInputError, match="max_payload_bytes"):
        await workflows.execute(flow, {"note": "x" * 3_000})  # compresses to far less


# -- the codecs themselves ---------------------------------------------------------------------


def test_a_codec_without_encode_and_decode_is_refused() -> None:
    with pytest.raises(TypeError, match="encode"):
        RedisWorkflowProvider.from_url("memory://", codec=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="encode"):
        RedisEventProvider.from_url("memory://", group="g", codec=b"key")  # type: ignore[arg-type]


def test_the_shipped_codecs_are_payload_codecs() -> None:
    codecs: list[PayloadCodec] = [ZlibCodec(), fernet(Fernet.generate_key())]
    codecs.append(CodecChain(*codecs))
    for codec in codecs:
        assert codec.decode(codec.encode(b'{"a":1}' * 100)) == b'{"a":1}' * 100


def test_zlib_compresses_only_above_its_threshold() -> None:
    codec = ZlibCodec(threshold=100)
    small, large = b"x" * 99, b"x" * 1000

    assert len(codec.encode(small)) == len(small) + 1
    assert len(codec.encode(large)) < 50
    assert zlib.decompress(codec.encode(large)[1:]) == large
    assert codec.decode(codec.encode(small)) == small


def test_a_chain_compresses_then_encrypts() -> None:
    key = Fernet.generate_key()
    chain = CodecChain(ZlibCodec(threshold=0), fernet(key))
    token = chain.encode(b"y" * 10_000)

    assert len(token) < 500
    assert ZlibCodec().decode(Fernet(key).decrypt(token)) == b"y" * 10_000


def test_fernet_encrypts_with_the_first_key_and_decrypts_with_any() -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    token = fernet(old).encode(b"data")

    assert fernet(new, old).decode(token) == b"data"
    assert Fernet(new).decrypt(fernet(new, old).encode(b"data")) == b"data"
    with pytest.raises(ValueError):
        fernet(new).decode(token)
    with pytest.raises(ValueError):
        FernetCodec([])
    with pytest.raises(TypeError, match="list of keys"):
        FernetCodec(old)  # type: ignore[arg-type]


def test_binary_codec_output_is_stored_as_base64_text_and_damage_is_a_typed_error() -> None:
    payloads = Payloads(ZlibCodec(threshold=0))
    stored = payloads.seal('{"a":"' + "z" * 500 + '"}')

    assert stored.startswith("~b") and stored.isascii() and len(stored) < 100
    assert payloads.open(stored) == '{"a":"' + "z" * 500 + '"}'
    assert payloads.open('{"a":1}') == '{"a":1}'  # written before the codec
    with pytest.raises(UndecodableError, match="damaged"):
        payloads.open(stored[:-3] + "!!!")
    with pytest.raises(UndecodableError, match="has none"):
        PLAIN.open(stored)


# -- a codec that fails to encode --------------------------------------------------------------


class Unavailable:
    """A codec whose key service is down: every encode fails."""

    def encode(self, data: bytes) -> bytes:
        raise RuntimeError("the key service is down")

    def decode(self, data: bytes) -> bytes:
        return data


async def test_a_codec_that_cannot_encode_an_input_raises_a_typed_error_and_writes_nothing(
    open_provider: OpenProvider, prefix: str
) -> None:
    workflows = await open_provider(codec=Unavailable())

    with pytest.raises(InvalidInputError, match=r"could not encode the input.*key service is down"):
        await workflows.execute(flow, {"note": "x"})
    with pytest.raises(InvalidInputError, match="key service is down"):
        await workflows.schedule("s", flow, {"note": "x"}, every=timedelta(hours=1))
    assert only_provider_keys(await keys_under(workflows, prefix), prefix)


async def test_a_codec_that_cannot_encode_event_data_raises_a_typed_error_and_writes_nothing(
    url: str, prefix: str
) -> None:
    async with RedisEventProvider.from_url(
        url, group="g", prefix=prefix, codec=Unavailable()
    ) as events:
        with pytest.raises(InvalidEventError, match="could not encode the data"):
            await events.emit(noted, {"text": "x"})
        with pytest.raises(InvalidEventError, match="key service is down"):
            await events.request(asked, {"text": "x"}, timeout=timedelta(seconds=1))
        assert only_provider_keys(await keys_under(events, prefix), prefix)


async def test_a_step_result_the_codec_cannot_encode_fails_the_step_with_the_reason(
    url: str, prefix: str
) -> None:
    """The input is stored plain (written before the codec broke); the result cannot be."""
    plain = RedisWorkflowProvider.from_url(url, prefix=prefix)
    broken = RedisWorkflowProvider.from_url(
        url, prefix=prefix, codec=Unavailable(), retry=FAST_RETRY
    )
    broken.register(consumer({}))
    async with plain, broken:
        handle = await plain.execute(flow, {"note": "x"})
        with pytest.raises(WorkflowStepError) as failed:
            await handle.result(timeout=15)
    assert failed.value.step == "charge"
    assert "could not encode" in str(failed.value)
