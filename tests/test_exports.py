"""The public surface of each package is pinned: a change here is a change of the contract."""

from __future__ import annotations

import plait.events
import plait.providers.redis
import plait.testing
import plait.workflows


def test_workflows_exports_the_contract_names() -> None:
    assert plait.workflows.__all__ == [
        "PLAIT_CAUSES",
        "AttemptSupersededError",
        "ConcurrencyKeyBusyError",
        "CorruptRunError",
        "IdempotencyConflictError",
        "IncompatibleSchemaError",
        "InvalidDefinitionError",
        "InvalidFilterError",
        "InvalidInputError",
        "InvalidResultError",
        "InvalidRunStateError",
        "InvalidStoredInputError",
        "NonRetryableError",
        "PayloadDecodeError",
        "ProviderClosedError",
        "ProviderUnavailableError",
        "RedisCommandError",
        "ResultNotSerializableError",
        "RetryPolicy",
        "RunBackend",
        "RunEvent",
        "RunInfo",
        "RunNotFoundError",
        "RunPage",
        "RunStoppedError",
        "SignalRefusedError",
        "Sleep",
        "Step",
        "StepContext",
        "StepInfo",
        "StepTimeoutError",
        "UnknownJobError",
        "Wait",
        "WaitInfo",
        "WaitTimeoutError",
        "WorkerLostError",
        "Workflow",
        "WorkflowCancelledError",
        "WorkflowConsumer",
        "WorkflowContext",
        "WorkflowError",
        "WorkflowExecutor",
        "WorkflowHandle",
        "WorkflowLifecycle",
        "WorkflowRollbackError",
        "WorkflowStatus",
        "WorkflowStepError",
        "WorkflowTimeoutError",
    ]


def test_events_exports_the_contract_names() -> None:
    assert plait.events.__all__ == [
        "Event",
        "EventCommandError",
        "EventContext",
        "EventEmitter",
        "EventError",
        "EventHandler",
        "EventHandlerError",
        "EventIncompatibleSchemaError",
        "EventPayloadDecodeError",
        "EventProviderClosedError",
        "EventProviderUnavailableError",
        "EventSubscriber",
        "EventTimeoutError",
        "InvalidEventError",
    ]


def test_redis_provider_exports_the_contract_names() -> None:
    assert plait.providers.redis.__all__ == [
        "CodecChain",
        "EventProviderOptions",
        "FernetCodec",
        "GroupHealth",
        "Health",
        "InstanceHealth",
        "PayloadCodec",
        "QueueHealth",
        "Readiness",
        "ReconcileStats",
        "RedisEventProvider",
        "RedisWorkflowProvider",
        "ScheduleInfo",
        "Schedules",
        "WorkflowProviderOptions",
        "ZlibCodec",
        "health_app",
        "http_status",
        "lifespan",
    ]


def test_every_exported_name_exists() -> None:
    for package in (plait.workflows, plait.events, plait.providers.redis):
        for name in getattr(package, "__all__", []):
            assert hasattr(package, name), f"{package.__name__}.{name}"


def test_testing_exports_the_test_kit() -> None:
    assert plait.testing.__all__ == ["VirtualClock", "without_backoff"]
