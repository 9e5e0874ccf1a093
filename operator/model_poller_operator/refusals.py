"""Why the admission webhook refuses a labelled pod: a typed reason and a message the user
can act on (``inject.py`` and ``serving_flags.py`` raise them, ``webhook.py`` answers them)."""

from __future__ import annotations

import enum


class RefusalReason(str, enum.Enum):
    """Why a labelled pod is refused (the admission message says it for humans)."""

    MODEL_DEPLOYMENT_NOT_FOUND = "ModelDeploymentNotFound"
    NOT_EXTERNAL = "NotExternalWorkload"
    INVALID_MODEL_DEPLOYMENT = "InvalidModelDeployment"
    IDENTITY_NOT_READY = "IdentityNotReady"
    IDENTITY_CONFLICT = "IdentityConflict"
    FOREIGN_SERVICE_ACCOUNT = "ForeignServiceAccount"
    NO_SERVING_CONTAINER = "NoServingContainer"
    CONTRADICTING_FLAG = "ContradictingFlag"
    UNSUPPORTED_COMMAND = "UnsupportedCommand"
    NAME_TAKEN = "NameTaken"
    UNSUPPORTED_VOLUME = "UnsupportedVolume"
    ROOT_USER = "RootUser"


class Refused(Exception):
    """The pod must not be admitted; ``str()`` is the message shown to the user."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
