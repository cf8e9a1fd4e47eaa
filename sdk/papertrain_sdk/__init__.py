"""papertrain client: submit post-training jobs, wait for them with metric gates, stream their events.

from papertrain_sdk import Client
client = Client("http://127.0.0.1:8000", token="...")
"""

from papertrain_sdk.client import Client
from papertrain_sdk.errors import (
    AuthError,
    Conflict,
    InvalidRequest,
    NotFound,
    PapertrainError,
    ServerError,
    Unreachable,
    WaitTimeout,
)
from papertrain_sdk.gates import Gate, GateResult, parse_gate
from papertrain_sdk.models import Checkpoint, DryRun, Event, FileInfo, Job, Preset

__all__ = [
    "AuthError",
    "Checkpoint",
    "Client",
    "Conflict",
    "DryRun",
    "Event",
    "FileInfo",
    "Gate",
    "GateResult",
    "InvalidRequest",
    "Job",
    "NotFound",
    "PapertrainError",
    "Preset",
    "ServerError",
    "Unreachable",
    "WaitTimeout",
    "parse_gate",
]
