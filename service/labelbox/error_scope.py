"""Pure: what a permanent Labelbox error is about, so it is settled at that scope.

- ``RUN``: the model run itself (not found, deleted, no permission on it). Every message of
  that run fails the same way, whatever it contains, so the whole batch is dead-lettered in
  one step and the verdict is remembered (service.labelbox.run_verdicts) instead of bisecting the
  batch down to single messages, which costs about two requests per message.
- ``PAYLOAD``: the request as a whole, without saying which part (a rejected mutation, an
  import that ended FAILED): bisected to isolate the offending messages.

Row scope (FAILURE rows in an import's status file) never reaches here: the import succeeded
and its status file names the rows.

Inputs are plain data, the GraphQL error code and Labelbox's message, so the decision is
tested on the texts Labelbox sends for the operations the uploader uses, without a client.
"""

from __future__ import annotations

import enum
import re


class Scope(enum.Enum):
    RUN = "run"
    PAYLOAD = "payload"


# "Resource 'ModelRun' not found for params: {'id': '...'}": RESOURCE_NOT_FOUND of every
# mutation keyed by the model run (label, project and data-row registration, prediction import).
_RUN_NOT_FOUND = re.compile(r"resource\s+'?model\s*run'?\s+not\s+found", re.IGNORECASE)
# A message about the model run: the GraphQL type name, "model run" / "model_run", or its id.
_NAMES_RUN = re.compile(r"model\s*_?\s*run", re.IGNORECASE)
_DELETED = re.compile(r"\bdeleted\b|\bhas been removed\b|\bno longer exists\b", re.IGNORECASE)
_NOT_FOUND = re.compile(r"\bnot\s+found\b|\bdoes\s+not\s+exist\b|\bdoesn't\s+exist\b", re.IGNORECASE)
_NO_PERMISSION = re.compile(
    r"permission|not\s+authori[sz]ed|unauthori[sz]ed|forbidden|access\s+denied|not\s+allowed\s+to\s+access"
    r"|does\s+not\s+have\s+access|no\s+access",
    re.IGNORECASE,
)

NOT_FOUND_CODES = frozenset({"RESOURCE_NOT_FOUND"})
PERMISSION_CODES = frozenset({"AUTHORIZATION_ERROR", "FORBIDDEN"})


def _names_run(message: str, model_run_id: str | None) -> bool:
    if _NAMES_RUN.search(message):
        return True
    return model_run_id is not None and len(model_run_id) > 0 and model_run_id in message


def scope_of(code: str | None, message: str, *, model_run_id: str | None = None) -> Scope:
    """The scope of a permanent (or authorization) error of a call made for ``model_run_id``.

    RUN only when Labelbox's text is about the model run: a ``RESOURCE_NOT_FOUND`` of the
    ModelRun resource (the import or task lookups are not about the run), an authorization
    error naming the run (a key that may do nothing at all stays a pipeline-level error,
    decided by the caller), or any error saying the run was deleted or does not exist.
    """
    text = message or ""
    if _RUN_NOT_FOUND.search(text):
        return Scope.RUN
    names_run = _names_run(text, model_run_id)
    if not names_run:
        return Scope.PAYLOAD
    if code in NOT_FOUND_CODES and _NOT_FOUND.search(text):
        # "Resource 'MEAPredictionImport' not found for params: {'modelRunId': ...}" names the run
        # only as the import's parent: not the run's fault.
        if re.search(r"resource\s+'?(?!model\s*run)\w+'?\s+not\s+found", text, re.IGNORECASE):
            return Scope.PAYLOAD
        return Scope.RUN
    if code in PERMISSION_CODES and _NO_PERMISSION.search(text):
        return Scope.RUN
    if _DELETED.search(text):
        return Scope.RUN
    return Scope.PAYLOAD
