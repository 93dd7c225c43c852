"""Fencing a former primary on AWS that Salt could not fence.

The failover runner (salt/_runners/sqlgate_failover.py) fences the old primary itself where it
can: read-only with its clients killed when its server answers, its database port closed by
nftables when its minion answers. On AWS there is no nftables table (``close_port`` answers
``no firewall``) and a security group is shared by every database host, so when the old
primary's server did not answer, the fence is done here, through EC2:

1. **quarantine**: its network interfaces are moved to the cluster's ``quarantine`` security
   group (no ingress, no egress; created once, tagged like the others, deleted by ``down``),
   its own groups kept in a tag (``sqlgate:fenced-groups``), so that if anyone starts it again
   it reaches nobody and nobody reaches it until ``bootstrap.py rebuild``. (A security group
   change leaves already tracked connections alive: the stop is what ends them.)
2. **stop** (never terminate: its disk may hold the only copy of a write no replica
   acknowledged, for an operator to look at), waiting until it is ``stopping`` or ``stopped``.

Every function is idempotent: a second call on a fenced instance changes nothing.
``release`` undoes the quarantine for ``rebuild`` and starts the instance again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from botocore.exceptions import ClientError

from cluster.providers.aws import resources as res

QUARANTINE = "quarantine"
FENCED_GROUPS_TAG = "sqlgate:fenced-groups"  # the instance's own groups while quarantined
FENCED_EPOCH_TAG = "sqlgate:fenced-epoch"  # the epoch of the failover that fenced it
STOP_DEADLINE_S = 5 * 60
START_DEADLINE_S = 10 * 60
GONE_STATES = ("shutting-down", "terminated")


def _noop(_line: str) -> None:
    pass


# --- the decision ------------------------------------------------------------------------

def salt_fenced(fence: object) -> bool:
    """Whether the runner's fence (``{"server": ..., "port": ...}`` from
    ``sqlgate_db.fence_node``) took: the server answered read-only (a dict), or the port was
    closed by the host's firewall. ``no firewall`` (AWS) and any error or silence are not a
    fence."""
    if not isinstance(fence, Mapping):
        return False
    return isinstance(fence.get("server"), Mapping) or \
        fence.get("port") in ("closed", "already closed")


def to_fence(shape: Mapping[str, Any]) -> tuple[str, int] | None:
    """``(old primary, epoch)`` when the runner's status (``sqlgate_failover.status``) says the
    last failover promoted a replica without fencing the old primary through Salt, and that
    node has not rejoined or been rebuilt since (it is still in ``fenced``); else None.
    A switchover fences first and refuses otherwise: never one to fence here."""
    last = shape.get("last")
    if not isinstance(last, Mapping) or last.get("kind") != "failover" or \
            last.get("result") != "promoted":
        return None
    old = last.get("old_primary")
    if not old or salt_fenced(last.get("fence")):
        return None
    if "fenced" in shape and old not in (shape.get("fenced") or []):
        return None
    return str(old), int(last.get("epoch") or 0)


# --- the quarantine group ----------------------------------------------------------------

def find_quarantine_group(aws: res.Aws) -> dict | None:
    return res.find_security_groups(aws).get(QUARANTINE)


def ensure_quarantine_group(aws: res.Aws, vpc_id: str,
                            say: Callable[[str], None] = _noop) -> str:
    """The cluster's quarantine group in ``vpc_id``: no ingress, and its default egress rule
    revoked; created once. Its id."""
    found = find_quarantine_group(aws)
    if found is None:
        created = aws.ec2.create_security_group(
            GroupName=res.group_name(aws, QUARANTINE), VpcId=vpc_id,
            Description=f"sqlgate {aws.cluster_name}: fenced former primaries, reach nothing",
            TagSpecifications=aws.tag_spec("security-group", QUARANTINE))
        say(f"created security group {res.group_name(aws, QUARANTINE)} ({created['GroupId']})")
        found = aws.ec2.describe_security_groups(
            GroupIds=[created["GroupId"]])["SecurityGroups"][0]
    if found.get("IpPermissions"):
        aws.ec2.revoke_security_group_ingress(GroupId=found["GroupId"],
                                              IpPermissions=found["IpPermissions"])
    if found.get("IpPermissionsEgress"):
        aws.ec2.revoke_security_group_egress(GroupId=found["GroupId"],
                                             IpPermissions=found["IpPermissionsEgress"])
    return found["GroupId"]


# --- fence and release -------------------------------------------------------------------

def _describe(aws: res.Aws, instance_id: str) -> dict:
    reservations = aws.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return reservations[0]["Instances"][0]


def _interfaces(instance: dict) -> list[dict]:
    return sorted(instance.get("NetworkInterfaces", []),
                  key=lambda eni: eni.get("Attachment", {}).get("DeviceIndex", 0))


def _set_groups(aws: res.Aws, instance: dict, group_ids: list[str]) -> None:
    for eni in _interfaces(instance):
        aws.ec2.modify_network_interface_attribute(
            NetworkInterfaceId=eni["NetworkInterfaceId"], Groups=group_ids)


def _state(aws: res.Aws, instance_id: str) -> str:
    return _describe(aws, instance_id)["State"]["Name"]


def _stop(aws: res.Aws, instance_id: str, deadline_s: float) -> None:
    """Stop (a pending instance once it can be), then wait for stopping or stopped."""
    def stopped() -> bool:
        state = _state(aws, instance_id)
        if state in ("stopping", "stopped", *GONE_STATES):
            return True
        try:
            aws.ec2.stop_instances(InstanceIds=[instance_id])
        except ClientError as error:
            if error.response["Error"]["Code"] != "IncorrectInstanceState":
                raise
            return False  # pending: it can be stopped once it runs
        return _state(aws, instance_id) in ("stopping", "stopped", *GONE_STATES)

    res.poll(stopped, deadline_s, 5, f"instance {instance_id} to stop")


def fence_instance(aws: res.Aws, host: str, epoch: int = 0,
                   say: Callable[[str], None] = _noop,
                   deadline_s: float = STOP_DEADLINE_S) -> list[str]:
    """Quarantine and stop ``host``'s instance; what was done (empty: nothing to do, it was
    fenced already, is gone, or was released by ``rebuild`` after the failover of ``epoch``)."""
    instance = res.find_instances(aws).get(host)
    if instance is None or instance["State"]["Name"] in GONE_STATES:
        say(f"{host}: no instance to fence")
        return []
    instance_id = instance["InstanceId"]
    quarantined = res.tag_value(instance, FENCED_GROUPS_TAG)
    if not quarantined and epoch and res.tag_value(instance, FENCED_EPOCH_TAG) == str(epoch):
        say(f"{host} ({instance_id}) was released for a rebuild after that failover: "
            "not fenced again")
        return []
    done = []
    if not quarantined:
        own = [g["GroupId"] for eni in _interfaces(instance)[:1] for g in eni.get("Groups", [])]
        own = own or [g["GroupId"] for g in instance.get("SecurityGroups", [])]
        group_id = ensure_quarantine_group(aws, instance["VpcId"], say)
        # The tag first: a run cut off half-way still knows which groups to give back.
        aws.ec2.create_tags(Resources=[instance_id], Tags=[
            {"Key": FENCED_GROUPS_TAG, "Value": " ".join(own)},
            {"Key": FENCED_EPOCH_TAG, "Value": str(epoch)}])
        _set_groups(aws, instance, [group_id])
        done.append(f"moved to security group {res.group_name(aws, QUARANTINE)} ({group_id})")
    elif any(g["GroupId"] != (find_quarantine_group(aws) or {}).get("GroupId")
             for eni in _interfaces(instance) for g in eni.get("Groups", [])):
        _set_groups(aws, instance, [ensure_quarantine_group(aws, instance["VpcId"], say)])
        done.append(f"moved back to security group {res.group_name(aws, QUARANTINE)}")
    if instance["State"]["Name"] in ("pending", "running"):
        _stop(aws, instance_id, deadline_s)
        done.append("stopped (not terminated: its disk is kept)")
    for line in done:
        say(f"{host} ({instance_id}): {line}")
    return done


def fence_after(aws: res.Aws, shape: Mapping[str, Any], say: Callable[[str], None] = _noop,
                deadline_s: float = STOP_DEADLINE_S) -> list[str]:
    """The runner's status in, the EC2 fence out when Salt could not fence the old primary
    (``to_fence``); what was done."""
    wanted = to_fence(shape)
    if wanted is None:
        return []
    host, epoch = wanted
    done = fence_instance(aws, host, epoch, say, deadline_s)
    if done:
        say(f"{host} could not be fenced through Salt (its server did not answer): fenced "
            "through EC2; 'bootstrap.py rebuild " + host + "' makes it a replica again")
    return done


def release(aws: res.Aws, host: str, say: Callable[[str], None] = _noop,
            deadline_s: float = START_DEADLINE_S) -> list[str]:
    """For ``rebuild``: give a quarantined instance its own groups back and start it, waiting
    until it runs; what was done (empty: it was not quarantined)."""
    instance = res.find_instances(aws).get(host)
    if instance is None or not res.tag_value(instance, FENCED_GROUPS_TAG):
        return []
    instance_id = instance["InstanceId"]
    res.poll(lambda: _state(aws, instance_id) != "stopping", deadline_s, 5,
             f"instance {instance_id} to finish stopping")
    _set_groups(aws, instance, res.tag_value(instance, FENCED_GROUPS_TAG).split())
    aws.ec2.delete_tags(Resources=[instance_id], Tags=[{"Key": FENCED_GROUPS_TAG}])
    done = ["given its own security groups back"]
    if _state(aws, instance_id) == "stopped":
        done.append("started")

    def running() -> bool:
        state = _state(aws, instance_id)
        if state == "stopped":  # not started yet, or EC2's read lags behind the start
            try:
                aws.ec2.start_instances(InstanceIds=[instance_id])
            except ClientError as error:
                if error.response["Error"]["Code"] != "IncorrectInstanceState":
                    raise
            state = _state(aws, instance_id)
        return state == "running"

    res.poll(running, deadline_s, 5, f"instance {instance_id} to run")
    for line in done:
        say(f"{host} ({instance_id}): {line}")
    return done
