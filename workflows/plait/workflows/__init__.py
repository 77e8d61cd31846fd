"""Durable workflow definitions, contexts, handles and errors.

Import this package everywhere a workflow is defined, executed or consumed; the Redis engine
lives in :mod:`plait.providers.redis`.
"""

from ._consumer import WorkflowConsumer
from ._context import StepContext, WorkflowContext
from ._definition import RetryPolicy, Step, Workflow
from ._errors import (
    IdempotencyConflictError,
    InvalidDefinitionError,
    InvalidInputError,
    InvalidRunStateError,
    NonRetryableError,
    ProviderClosedError,
    ProviderUnavailableError,
    RunNotFoundError,
    WorkflowCancelledError,
    WorkflowError,
    WorkflowRollbackError,
    WorkflowStepError,
    WorkflowTimeoutError,
)
from ._handle import RunEvent, RunInfo, StepInfo, WorkflowHandle, WorkflowStatus
from ._protocols import RunBackend, WorkflowExecutor, WorkflowLifecycle

__all__ = [
    "IdempotencyConflictError",
    "InvalidDefinitionError",
    "InvalidInputError",
    "InvalidRunStateError",
    "NonRetryableError",
    "ProviderClosedError",
    "ProviderUnavailableError",
    "RetryPolicy",
    "RunBackend",
    "RunEvent",
    "RunInfo",
    "RunNotFoundError",
    "Step",
    "StepContext",
    "StepInfo",
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
