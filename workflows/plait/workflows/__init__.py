"""Durable workflow definitions, contexts, handles and errors.

Import this package everywhere a workflow is defined, executed or consumed; the Redis engine
lives in :mod:`plait.providers.redis`.
"""

from ._consumer import WorkflowConsumer
from ._context import StepContext, WorkflowContext
from ._definition import RetryPolicy, Step, Workflow
from ._errors import (
    PLAIT_CAUSES,
    AttemptSupersededError,
    ConcurrencyKeyBusyError,
    CorruptRunError,
    IdempotencyConflictError,
    InvalidDefinitionError,
    InvalidInputError,
    InvalidResultError,
    InvalidRunStateError,
    InvalidStoredInputError,
    NonRetryableError,
    ProviderClosedError,
    ProviderUnavailableError,
    RedisCommandError,
    ResultNotSerializableError,
    RunNotFoundError,
    RunStoppedError,
    StepTimeoutError,
    UnknownJobError,
    WorkerLostError,
    WorkflowCancelledError,
    WorkflowError,
    WorkflowRollbackError,
    WorkflowStepError,
    WorkflowTimeoutError,
)
from ._handle import RunEvent, RunInfo, StepInfo, WorkflowHandle, WorkflowStatus
from ._protocols import RunBackend, WorkflowExecutor, WorkflowLifecycle

__all__ = [
    "PLAIT_CAUSES",
    "AttemptSupersededError",
    "ConcurrencyKeyBusyError",
    "CorruptRunError",
    "IdempotencyConflictError",
    "InvalidDefinitionError",
    "InvalidInputError",
    "InvalidResultError",
    "InvalidRunStateError",
    "InvalidStoredInputError",
    "NonRetryableError",
    "ProviderClosedError",
    "ProviderUnavailableError",
    "RedisCommandError",
    "ResultNotSerializableError",
    "RetryPolicy",
    "RunBackend",
    "RunEvent",
    "RunInfo",
    "RunNotFoundError",
    "RunStoppedError",
    "Step",
    "StepContext",
    "StepInfo",
    "StepTimeoutError",
    "UnknownJobError",
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
