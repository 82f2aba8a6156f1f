"""Deployment control: the state of every model, event-sourced on ``control.deployments``; the
serving replicas' acknowledgements on ``control.acks``.

Five modules, each importing only the ones above it:

* :mod:`.state` — pure, no I/O: building commands (:func:`new_command`), checking and applying them
  (:func:`check_command`, :func:`apply_command`), canary routing, and :class:`DeploymentBook`, which
  replays the control topic's commands into states and outcomes and collects the acks topic's acks;
  :class:`DeploymentSettings`; the action and ack names.
* :mod:`.checks` — the checks that need the model repository (the version exists and is intact, the
  offline-metric :func:`promotion_gate`), run by the controller before publishing and by every
  replayer with the repository while replaying (:func:`repository_admission`);
* :mod:`.snapshot` — the copy of the state in the model repository and :func:`plan_start`, which
  decides at start whether the log or the snapshot is the state (a lost or truncated log);
* :mod:`.log` — the control topic: :class:`ControlLogReader` and :func:`replay` read it from the
  beginning (:class:`AckLogReader` the acks topic), :class:`DeploymentFollower` keeps a serving
  replica's state current and publishes its acks to the acks topic, :func:`ensure_control_topic`
  and :func:`publish_message` write to them.
* :mod:`.controller` — :class:`DeploymentController` validates a command against the replayed state
  and the model repository (the offline-metric :func:`promotion_gate` included), publishes it,
  reads back its outcome, writes the snapshot and waits for replica acks.

Errors: every one is a :class:`DeploymentError` (a :class:`recpilot.errors.RecpilotError`):
:class:`InvalidCommand` (malformed request), :class:`CommandRejected` and :class:`PromotionRefused`
(the state or the gate does not allow it), :class:`ControlTopicUnavailable` and
:class:`PublishError` (the broker could not be read or written).

Code outside ``recpilot.models`` imports from this package; inside it, from the submodules.
"""

from recpilot.models.deployments.checks import promotion_gate, repository_admission
from recpilot.models.deployments.controller import DeploymentController, PromotionRefused, Submitted
from recpilot.models.deployments.log import (AckLogReader, ControlLogReader, ControlTopicUnavailable,
                                             DeploymentFollower, PublishError, control_topic_spec, ensure_control_topic,
                                             publish_message, replay, repository_book)
from recpilot.models.deployments.snapshot import Snapshot, plan_start, read_snapshot, snapshot_path, write_snapshot
from recpilot.models.deployments.state import (ACK_NAMES, ACTION_NAMES, ACTIONS, CANARY_BUCKETS, CommandRejected,
                                               DeploymentBook, DeploymentError, DeploymentSettings, InvalidCommand,
                                               KIND_NAMES, KINDS, Outcome, POLICY_ACTIONS, in_canary, apply_command, check_command, default_actor, lineage,
                                               new_command, now_ms, previous_production, routes_to_canary,
                                               serving_version)

__all__ = [
    # state
    "ACK_NAMES", "ACTION_NAMES", "ACTIONS", "CANARY_BUCKETS", "DeploymentBook", "DeploymentSettings", "Outcome",
    "apply_command", "check_command", "default_actor", "lineage", "new_command", "now_ms", "previous_production",
    "routes_to_canary", "serving_version", "KINDS", "KIND_NAMES", "POLICY_ACTIONS", "in_canary",
    # checks, snapshot
    "promotion_gate", "repository_admission", "Snapshot", "plan_start", "read_snapshot", "snapshot_path",
    "write_snapshot",
    # log
    "AckLogReader", "DeploymentFollower", "ControlLogReader", "control_topic_spec", "ensure_control_topic",
    "publish_message", "replay", "repository_book",
    # controller
    "DeploymentController", "Submitted",
    # errors
    "CommandRejected", "ControlTopicUnavailable", "DeploymentError", "InvalidCommand", "PromotionRefused",
    "PublishError",
]
