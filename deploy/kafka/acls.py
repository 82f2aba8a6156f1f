"""An example ACL set for the deployment control topics (docs/security.md).

With an authorizer on the brokers (KRaft: ``org.apache.kafka.metadata.authorizer.StandardAuthorizer``)
and ``allow.everyone.if.no.acl.found=false`` (the default), a principal may do only what an ACL
allows. This set lets only the control-plane principals (the CLI's, ``monitor``'s and
``rl_feedback``'s) write ``control.deployments``; they read it and read the acks on
``control.acks``. The serving replicas' principal reads ``control.deployments`` and writes its acks
to ``control.acks``, and nothing more: a replica's credentials cannot produce a command. No other
principal (ingest, features, anyone else with credentials) can write or even see either topic. The
consumer groups the readers name start with ``recpilot-`` (they never commit on these topics;
librdkafka still looks their coordinator up).

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

from recpilot.topics import CONTROL_DEPLOYMENTS, acks_topic  # noqa: E402

GROUP_PREFIX = "recpilot-"


def control_acls(writers: list[str], replicas: list[str], topic: str = CONTROL_DEPLOYMENTS,
                 acks: str | None = None) -> list[AclBinding]:
    """ALLOW bindings: ``writers`` (principals such as ``User:monitor``) write and read ``topic``
    and read ``acks`` (default: ``topic``'s acks topic, ``control.acks``); ``replicas`` read
    ``topic`` and write ``acks``; all of them use ``recpilot-*`` consumer groups."""
    acks = acks or acks_topic(topic)
    d, r, w = AclOperation.DESCRIBE, AclOperation.READ, AclOperation.WRITE

    def allow(rtype, name, pattern, principal, op):
        return AclBinding(rtype, name, pattern, principal, "*", op, AclPermissionType.ALLOW)

    out = []
    for principals, grants in ((writers, {topic: (d, r, w), acks: (d, r)}),
                               (replicas, {topic: (d, r), acks: (d, w)})):
        for principal in principals:
            for name, ops in grants.items():
                out += [allow(ResourceType.TOPIC, name, ResourcePatternType.LITERAL, principal, op) for op in ops]
            out.append(allow(ResourceType.GROUP, GROUP_PREFIX, ResourcePatternType.PREFIXED, principal, r))
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
    p.add_argument("--inference", default="User:inference",
                   help="the serving replicas' principal (reads the control topic, writes the acks topic)")
    p.add_argument("--topic", default=CONTROL_DEPLOYMENTS)
    p.add_argument("--acks-topic", help="default: control.acks for control.deployments, <topic>.acks otherwise")
    p.add_argument("--apply", action="store_true", help="create the bindings (default: print them)")
    args = p.parse_args(argv)
    bindings = control_acls([args.cli, args.monitor, args.rl_feedback], [args.inference], args.topic, args.acks_topic)
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
