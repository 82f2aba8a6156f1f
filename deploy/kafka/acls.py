"""An example ACL set for the deployment control topic (docs/security.md).

With an authorizer on the brokers (KRaft: ``org.apache.kafka.metadata.authorizer.StandardAuthorizer``)
and ``allow.everyone.if.no.acl.found=false`` (the default), a principal may do only what an ACL
allows. This set lets the control-plane principals (the CLI's, ``monitor``'s and ``rl_feedback``'s)
write and read ``control.deployments``, and the serving replicas' principal read it and write
their acks, which share the topic; no other principal (ingest, features, anyone else with
credentials) can write or even see the topic. The consumer groups the readers name start with
``recpilot-`` (they never commit on this topic; librdkafka still looks their coordinator up).

    python deploy/kafka/acls.py                 # print the bindings
    python deploy/kafka/acls.py --apply         # create them (idempotent)

The client settings are every client's (``RECPILOT_KAFKA_BOOTSTRAP_SERVERS``,
``RECPILOT_KAFKA_SECURITY_PROTOCOL``, ``RECPILOT_KAFKA_SASL_*``, ``RECPILOT_KAFKA_SSL_*``), for a
principal allowed to alter ACLs (a super user, or ALTER on the cluster).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from confluent_kafka.admin import (  # noqa: E402
    AclBinding,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from recpilot.topics import CONTROL_DEPLOYMENTS  # noqa: E402

GROUP_PREFIX = "recpilot-"


def control_acls(writers: list[str], replicas: list[str], topic: str = CONTROL_DEPLOYMENTS) -> list[AclBinding]:
    """ALLOW bindings: ``writers`` (principals such as ``User:monitor``) write and read ``topic``;
    ``replicas`` read it and write their acks; all of them use ``recpilot-*`` consumer groups."""

    def allow(rtype, name, pattern, principal, op):
        return AclBinding(rtype, name, pattern, principal, "*", op, AclPermissionType.ALLOW)

    out = []
    for principal in writers + replicas:
        # replicas need WRITE too: their DeploymentAck messages go to the same topic
        for op in (AclOperation.DESCRIBE, AclOperation.READ, AclOperation.WRITE):
            out.append(allow(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, principal, op))
        out.append(allow(ResourceType.GROUP, GROUP_PREFIX, ResourcePatternType.PREFIXED, principal, AclOperation.READ))
    return out


def apply(adm, bindings: list[AclBinding], timeout: float = 30.0) -> None:
    """Create ``bindings`` with an AdminClient (an existing binding is no error); raise on the first refusal."""
    for fut in adm.create_acls(bindings, request_timeout=timeout).values():
        fut.result()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cli", default="User:recpilot-cli", help="the principal of operators' `recpilot models` commands")
    p.add_argument("--monitor", default="User:monitor")
    p.add_argument("--rl-feedback", default="User:rl_feedback")
    p.add_argument("--inference", default="User:inference", help="the serving replicas' principal (acks)")
    p.add_argument("--topic", default=CONTROL_DEPLOYMENTS)
    p.add_argument("--apply", action="store_true", help="create the bindings (default: print them)")
    args = p.parse_args(argv)
    bindings = control_acls([args.cli, args.monitor, args.rl_feedback], [args.inference], args.topic)
    for b in bindings:
        print(f"{b.permission_type.name} {b.principal} {b.operation.name} "
              f"{b.restype.name}:{b.resource_pattern_type.name}:{b.name}")
    if args.apply:
        from recpilot.kafka import admin
        from recpilot.settings import PlatformSettings, load

        apply(admin(load(PlatformSettings)), bindings)
        print(f"created {len(bindings)} bindings")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
