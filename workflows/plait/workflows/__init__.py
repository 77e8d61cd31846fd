"""Durable workflow definitions, contexts, handles and errors.

Import this package everywhere a workflow is defined, executed or consumed; the Redis engine
lives in :mod:`plait.providers.redis`.
"""

from importlib import metadata

from ._consumer import WorkflowConsumer
from ._context import StepContext, WorkflowContext
from ._definition import RetryPolicy, Sleep, Step, Wait, Workflow
from ._errors import (
    PLAIT_CAUSES,
    AttemptSupersededError,
    ConcurrencyKeyBusyError,
    CorruptRunError,
    IdempotencyConflictError,
    IncompatibleSchemaError,
    InvalidDefinitionError,
    InvalidFilterError,
    InvalidInputError,
    InvalidResultError,
    InvalidRunStateError,
    InvalidStoredInputError,
    NonRetryableError,
    PayloadDecodeError,
    ProviderClosedError,
    ProviderUnavailableError,
    RedisCommandError,
    ResultNotSerializableError,
    RunNotFoundError,
    RunStoppedError,
    SignalRefusedError,
    StepTimeoutError,
    UnknownJobError,
    WaitTimeoutError,
    WorkerLostError,
    WorkflowCancelledError,
    WorkflowError,
    WorkflowRollbackError,
    WorkflowStepError,
    WorkflowTimeoutError,
)
from ._handle import (
    RunEvent,
    RunInfo,
    RunPage,
    StepInfo,
    WaitInfo,
    WorkflowHandle,
    WorkflowStatus,
)
from ._protocols import RunBackend, WorkflowExecutor, WorkflowLifecycle

__version__ = metadata.version("plait")
"""The installed version of plait (from the package metadata)."""

__all__ = [
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
