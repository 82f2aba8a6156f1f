"""A copy of the deployment state beside the models, so a lost or truncated control topic never
silently changes what is served.

The controller writes ``<model repository>/.deployments/<topic>.json`` after every command it saw
applied (:func:`write_snapshot`: a temporary file, fsync, one rename): the states of every model,
the topic's id and the offsets they include, and the ``base`` the states were rebuilt on when the
log had been lost before. Every replayer that holds the repository reads it at start and decides
with :func:`plan_start` where the state comes from:

* the log is intact (same topic, it still holds every offset since the snapshot's base): replay it;
  the snapshot is only a copy;
* the log was truncated (low watermark above 0) but still holds everything after the snapshot:
  the snapshot's states, then the log from the snapshot's offsets (exact); reported;
* the log was lost (the topic deleted or recreated, emptied, shorter than the snapshot saw, or
  truncated past the snapshot): the snapshot's states, then whatever the topic holds now on top;
  reported as an error (log, metric, readiness detail, ``recpilot models status``).

Nothing here imports a Kafka client; :func:`plan_start` is pure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.json_format import MessageToDict, ParseDict

from recpilot.models.deployments.state import DeploymentBook, now_ms
from recpilot.pb import deployments_pb2 as pb

log = logging.getLogger(__name__)

SNAPSHOT_DIR = ".deployments"   # not a model name (those start with a letter or digit)
FORMAT = 1


@dataclass
class Snapshot:
    topic: str
    topic_id: str | None
    offsets: dict[int, int]                       # partition -> next offset the states include
    states: dict[str, pb.DeploymentState]
    base: tuple[dict[int, int], dict[str, pb.DeploymentState]] | None = None
    written_ms: int = 0
    path: Path | None = None

    def productions(self) -> dict[str, str]:
        return {n: st.production_version for n, st in self.states.items() if st.production_version}


@dataclass
class StartPlan:
    """Where a replay starts: seed the book with ``seed`` (None: nothing) and read from ``read_from``."""

    read_from: dict[int, int]
    seed: dict[str, pb.DeploymentState] | None = None
    lost: bool = False          # commands the snapshot had are not in the log: production kept from the snapshot
    truncated: bool = False     # the low watermark is above 0
    problems: list[str] = field(default_factory=list)


def snapshot_path(repository_root: Path, topic: str) -> Path:
    return Path(repository_root) / SNAPSHOT_DIR / f"{topic}.json"


def _states_to_json(states: dict[str, pb.DeploymentState]) -> dict:
    return {n: MessageToDict(st, preserving_proto_field_name=True) for n, st in sorted(states.items())}


def _states_from_json(d: dict) -> dict[str, pb.DeploymentState]:
    return {n: ParseDict(v, pb.DeploymentState()) for n, v in d.items()}


def _offsets_from_json(d: dict) -> dict[int, int]:
    return {int(p): int(o) for p, o in d.items()}


def read_snapshot(repository_root: Path, topic: str) -> Snapshot | None:
    """The snapshot of ``topic`` in the repository; None when there is none. A snapshot that cannot
    be read is reported (logged) and treated as none."""
    path = snapshot_path(repository_root, topic)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        base = raw.get("base")
        return Snapshot(
            topic=raw["topic"], topic_id=raw.get("topic_id"), offsets=_offsets_from_json(raw["offsets"]),
            states=_states_from_json(raw["states"]),
            base=(_offsets_from_json(base["offsets"]), _states_from_json(base["states"])) if base else None,
            written_ms=int(raw.get("written_ms", 0)), path=path)
    except FileNotFoundError:
        return None
    except Exception as exc:
        log.error("the deployment snapshot cannot be read; ignoring it", extra={"path": str(path), "error": str(exc)})
        return None


def write_snapshot(repository_root: Path, topic: str, book: DeploymentBook, topic_id: str | None,
                   offsets: dict[int, int], writer: str = "") -> Path | None:
    """Write the book's states (read up to ``offsets`` of the topic ``topic_id``) atomically. A
    snapshot of the same topic that already includes more of the log is kept (a slower writer never
    overwrites a newer one). Returns the path, or None when the newer one was kept."""
    path = snapshot_path(repository_root, topic)
    path.parent.mkdir(parents=True, exist_ok=True)
    current = read_snapshot(repository_root, topic)
    if current is not None and current.topic_id == topic_id and \
            any(current.offsets.get(p, 0) > o for p, o in offsets.items()):
        return None
    doc = {"format": FORMAT, "topic": topic, "topic_id": topic_id,
           "offsets": {str(p): o for p, o in sorted(offsets.items())}, "written_ms": now_ms(), "writer": writer,
           "states": _states_to_json(book.states),
           "base": None if book.base is None else {
               "offsets": {str(p): o for p, o in sorted(book.base[0].items())},
               "states": _states_to_json(book.base[1])}}
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def plan_start(snapshot: Snapshot | None, topic_id: str | None, lows: dict[int, int], ends: dict[int, int],
               topic: str = "the control topic") -> StartPlan:
    """Where the state comes from, given the snapshot and the topic as the broker reports it now
    (``lows``/``ends``: watermarks per partition, empty when the topic does not exist). Pure."""
    problems: list[str] = []
    truncated = any(lo > 0 for lo in lows.values())
    if truncated:
        problems.append(f"{topic} does not start at offset 0 (low watermarks {lows}): older commands were "
                        "deleted (retention or delete-records)")
    if snapshot is None or not snapshot.states:
        if truncated:
            problems.append("no deployment snapshot in the model repository to restore them from: the state "
                            "is rebuilt from what remains")
        return StartPlan(dict(lows), truncated=truncated, problems=problems)

    def covers(offsets: dict[int, int]) -> bool:  # the log still holds everything from these offsets on
        return all(lows.get(p, 0) <= o <= ends.get(p, 0) for p, o in offsets.items()) and \
            all(p in offsets or ends[p] <= lows.get(p, 0) for p in ends)

    same_topic = bool(ends) and (snapshot.topic_id is None or topic_id is None or snapshot.topic_id == topic_id)
    if same_topic and covers(snapshot.offsets):
        if snapshot.base is not None and covers(snapshot.base[0]):
            return StartPlan(dict(snapshot.base[0]), snapshot.base[1], truncated=truncated, problems=problems)
        if snapshot.base is None and not truncated:
            return StartPlan(dict(lows))  # the normal case: the whole log, the snapshot is only a copy
        problems.append(f"state restored from the deployment snapshot written at {snapshot.written_ms} "
                        f"(offsets {snapshot.offsets}), then the log from there")
        return StartPlan(dict(snapshot.offsets), snapshot.states, truncated=truncated, problems=problems)
    if not ends or all(e <= lows.get(p, 0) for p, e in ends.items()):
        what = f"{topic} is missing or empty"
    elif not same_topic:
        what = f"{topic} was recreated (topic id {topic_id}, the snapshot's is {snapshot.topic_id})"
    elif any(ends.get(p, 0) < o for p, o in snapshot.offsets.items()):
        what = f"{topic} ends at {ends}, before the offsets the snapshot includes ({snapshot.offsets})"
    else:
        what = f"{topic} was truncated past the snapshot (low watermarks {lows}, snapshot offsets {snapshot.offsets})"
    problems.append(f"the deployment log was lost: {what}; serving the deployment snapshot written at "
                    f"{snapshot.written_ms} (production {snapshot.productions() or 'none'}) and applying what the "
                    "topic holds now on top of it")
    return StartPlan(dict(lows), snapshot.states, lost=True, truncated=truncated, problems=problems)
