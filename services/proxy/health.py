"""Background health of the database nodes: is each one up, and how far behind is each replica?

Requests never probe anything themselves: they read the latest figures kept here. Every
``health_interval`` (250 ms by default) the monitor, on one connection of its own per node:

* writes a heartbeat row on the primary (which also tells that the primary is up) and notes
  when, on its own monotonic clock, it wrote which sequence number;
* reads that row back on each replica, with ``SHOW REPLICA STATUS``. A replica's lag is how
  long ago the Proxy wrote the oldest heartbeat the replica has not applied yet: measured on
  one clock, so skew between hosts does not matter, and with the check's resolution, where
  ``Seconds_Behind_Master`` has whole seconds and reads 0 while the IO thread is down.

A replica leaves the rotation at once when it is down, a replication thread stopped, or its
lag went over ``max_replica_lag``; it comes back only after ``replica_recovery_checks`` good
checks in a row, so one good sample does not make it flap. Every routing strategy reads
``NodeHealth.usable`` and gets all of this for free.

Which node is the primary is learned the same way, never assumed (docs/failover.md): every
server starts read-only and only a promotion makes one writable and writes the cluster's epoch
on it. After each check the primary is the one writable node whose epoch is the highest this
Proxy has seen on any node; a writable node with an older epoch (an old primary that came back
writable) is *fenced* and never written to. Writes wait for a primary (``writable_primary``)
while a failover runs, and are refused while the primary's semi-synchronous replication is off,
so no write is acknowledged that lives on one disk only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field

from icmplib import async_multiping
from icmplib.exceptions import ICMPLibError

from services.config import ProxyConfig
from services.proxy.metrics import ProxyMetrics
from services.proxy.pools import NodePool, NodeUnavailable, SqlError
from services.proxy.replication import FLAVOURS, Flavour, ReplicaStatus, flavour_of

log = logging.getLogger(__name__)

READ_ONLY_ERROR = 1290  # the server runs with --read-only: it is not (or no longer) the primary
# How many heartbeats are remembered: beyond that a replica's lag is "at least" the oldest.
HEARTBEATS_KEPT = 20_000
LATENCY_SMOOTHING = 0.2  # weight of the newest request in a node's observed latency


@dataclass
class NodeHealth:
    """What the monitor last learned about one node. ``up`` is None until the first check."""

    pool: NodePool
    role: str = ""  # "primary", "replica" or "fenced": what the last check made of it
    up: bool | None = None
    last_error: str | None = None
    sql_rtt_ms: float | None = None
    icmp_rtt_ms: float | None = None  # smoothed (EWMA); None when unknown or unreachable
    icmp_loss: float | None = None
    # Replicas only: replication as last seen, and whether reads may go there.
    replication: ReplicaStatus | None = None
    lag_ms: float | None = None
    lag_source: str | None = None  # "heartbeat", or "seconds_behind" without the heartbeat
    in_rotation: bool | None = None
    rotation_reason: str | None = None
    good_checks: int = 0
    # What requests observe: statements running now, and their smoothed latency.
    in_flight: int = 0
    latency_ms: float | None = None
    # Its server, as the last check read it: writable or not, the epoch row it holds, and its
    # primary side of semi-synchronous replication (status, replicas connected).
    writable: bool | None = None
    epoch: int | None = None
    semi_sync: bool | None = None
    semi_sync_clients: int | None = None
    primary_since: float | None = None  # monotonic time this Proxy took it as the primary
    heartbeat_applied: int | None = None  # the newest heartbeat it has applied (replicas)

    def __post_init__(self) -> None:
        self.role = self.role or self.pool.role

    @property
    def name(self) -> str:
        return self.pool.name

    @property
    def semi_sync_ready(self) -> bool:
        """A write acknowledged here is on a replica too: semi-sync on, a replica connected."""
        return self.semi_sync is True and (self.semi_sync_clients or 0) >= 1

    @property
    def usable(self) -> bool:
        return self.up is not False and self.in_rotation is not False

    def observe(self, elapsed_ms: float) -> None:
        """A request's latency on this node, for the load-aware strategy."""
        if self.latency_ms is None:
            self.latency_ms = elapsed_ms
        else:
            self.latency_ms += LATENCY_SMOOTHING * (elapsed_ms - self.latency_ms)

    def to_json(self) -> dict:
        answer = {
            "role": self.role,
            "address": f"{self.pool.address.host}:{self.pool.address.port}",
            "up": self.up,
            "last_error": self.last_error,
            "sql_rtt_ms": _rounded(self.sql_rtt_ms),
            "icmp_rtt_ms": _rounded(self.icmp_rtt_ms),
            "icmp_loss": self.icmp_loss,
            "in_flight": self.in_flight,
            "latency_ms": _rounded(self.latency_ms),
            "writable": self.writable,
            "epoch": self.epoch,
        }
        if self.role == "primary":
            answer.update({"semi_sync": self.semi_sync,
                           "semi_sync_replicas": self.semi_sync_clients})
        else:
            status = self.replication
            answer.update({
                "in_rotation": self.in_rotation,
                "rotation_reason": self.rotation_reason,
                "io_running": status.io_running if status else None,
                "sql_running": status.sql_running if status else None,
                "replication_error": status.last_error if status else None,
                "seconds_behind": status.seconds_behind if status else None,
                "lag_ms": _rounded(self.lag_ms),
                "lag_source": self.lag_source,
            })
        return answer


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class NoPrimary(Exception):
    """No node may take a write now. ``hold``: a failover may be under way, so waiting for a
    new primary makes sense; otherwise (semi-sync off on a settled primary) it does not."""

    def __init__(self, reason: str, cause: str, hold: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cause = cause
        self.hold = hold


@dataclass
class ClusterHealth:
    """The nodes as the router sees them, their health, and which one is the primary now.

    ``primary`` is where writes go: the configured primary until the first check, then the
    node the checks elect (``elect``); None while no node qualifies (during a failover)."""

    primary: NodeHealth | None
    others: list[NodeHealth] = field(default_factory=list)
    flavour: Flavour = FLAVOURS["mariadb"]  # learned from the servers' greeting
    epoch: int = 0  # the highest epoch seen on any node
    no_primary_reason: str = ""
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def __post_init__(self) -> None:
        self.nodes: list[NodeHealth] = [*([self.primary] if self.primary else []), *self.others]

    def node(self, name: str) -> NodeHealth:
        return next(node for node in self.nodes if node.name == name)

    @property
    def replicas(self) -> list[NodeHealth]:
        """Every node but the primary and fenced ones: the candidates for reads."""
        return [node for node in self.nodes if node.role == "replica"]

    def elect(self) -> NodeHealth | None:
        """The primary after a check: the one writable node at the highest epoch seen.

        A writable node at an older epoch is fenced (an old primary that came back writable),
        two writable nodes at the same epoch make no primary at all: neither gets a write."""
        seen = [node.epoch for node in self.nodes if node.epoch is not None]
        self.epoch = max([self.epoch, *seen])
        writable = [node for node in self.nodes if node.up and node.writable]
        current = [node for node in writable if (node.epoch or 0) >= self.epoch]
        previous = self.primary
        if len(current) == 1:
            primary, self.no_primary_reason = current[0], ""
        elif current:
            primary = None
            self.no_primary_reason = (f"{len(current)} writable nodes at epoch {self.epoch} "
                                      f"({', '.join(node.name for node in current)}): no "
                                      "write goes to either")
            log.error("%s", self.no_primary_reason)
        elif previous is not None and previous.up is False:
            primary = previous  # down, not replaced (yet): writes wait for it or a successor
        else:
            primary = None
            self.no_primary_reason = "no writable node (a failover or switchover is under way)"
        for node in self.nodes:
            if node is primary:
                node.role = "primary"
            elif node.up and node.writable:
                if node.role != "fenced":
                    log.error("node %s is writable at epoch %s, below the cluster's %s: fenced, "
                              "never written to", node.name, node.epoch, self.epoch)
                node.role = "fenced"
            else:
                node.role = "replica"
        if primary is not previous:
            if primary is not None:
                primary.primary_since = time.monotonic()
                log.warning("primary is now %s (epoch %s)", primary.name, self.epoch)
            else:
                log.warning("no primary: %s", self.no_primary_reason)
            self.primary = primary
            self._changed.set()
            self._changed = asyncio.Event()
        return primary

    def write_target(self, allow_async: bool, hold: float) -> NodeHealth:
        """The node a write goes to now, or NoPrimary saying why not."""
        primary = self.primary
        if primary is None:
            raise NoPrimary(self.no_primary_reason or "no primary known yet", "no_primary",
                            hold=True)
        if primary.up is False:
            raise NoPrimary(f"the primary {primary.name} is down: {primary.last_error}",
                            "no_primary", hold=True)
        if not allow_async and not primary.semi_sync_ready:
            # Just promoted, its replicas are still connecting: worth waiting for.
            recent = (primary.primary_since is not None
                      and time.monotonic() - primary.primary_since < hold)
            clients = primary.semi_sync_clients
            raise NoPrimary(
                f"semi-synchronous replication is off on the primary {primary.name} (status "
                f"{_on_off(primary.semi_sync)}, {clients if clients is not None else 'no'} "
                "replica(s) acknowledging): a write would live on one disk only, so writes are "
                "refused until a replica acknowledges again (PROXY_ALLOW_ASYNC=true accepts "
                "them)", "semi_sync_off", hold=recent)
        return primary

    async def writable_primary(self, allow_async: bool, hold: float,
                               deadline: float | None = None) -> NodeHealth:
        """``write_target``, waiting up to ``hold`` seconds (or until ``deadline``, a
        monotonic time) while a failover may be under way (the checks elect the new primary)."""
        if deadline is None:
            deadline = time.monotonic() + hold
        while True:
            try:
                return self.write_target(allow_async, hold)
            except NoPrimary as refusal:
                left = deadline - time.monotonic()
                if not refusal.hold or left <= 0:
                    raise
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    # Woken by a new primary; otherwise look again every few checks.
                    await asyncio.wait_for(changed.wait(), min(left, 0.25))


def _on_off(value: bool | None) -> str:
    return "unknown" if value is None else ("ON" if value else "OFF")


class Heartbeat:
    """The Proxy's row on the primary: (proxy, epoch, seq), and when each seq was written.

    ``epoch`` tells this process's rows from an earlier run's: a replica that shows another
    epoch has applied none of this process's heartbeats yet.
    """

    def __init__(self, config: ProxyConfig) -> None:
        self.table = config.heartbeat_table
        self.proxy = config.instance_name
        self.epoch = int.from_bytes(os.urandom(6), "big")
        self.seq = 0
        self.written: deque[tuple[int, float]] = deque(maxlen=HEARTBEATS_KEPT)
        self.available = True  # False when the table is missing or not writable

    def write_statement(self) -> tuple[str, tuple]:
        self.seq += 1
        # An upsert, not REPLACE: the monitor's user may insert and update the heartbeat
        # table, never delete from it. (Values repeated: VALUES() is deprecated on MySQL.)
        return (f"INSERT INTO {self.table} (proxy, epoch, seq, written) "
                "VALUES (%s, %s, %s, NOW(6)) "
                "ON DUPLICATE KEY UPDATE epoch = %s, seq = %s, written = NOW(6)",
                (self.proxy, self.epoch, self.seq, self.epoch, self.seq))

    def written_now(self) -> None:
        self.written.append((self.seq, time.monotonic()))

    def read_statement(self) -> tuple[str, tuple]:
        return f"SELECT epoch, seq FROM {self.table} WHERE proxy = %s", (self.proxy,)

    def applied(self, rows: list[dict]) -> int:
        """The newest of this process's heartbeats a replica has applied (0: none)."""
        if rows and int(rows[0]["epoch"]) == self.epoch:
            return int(rows[0]["seq"])
        return 0

    def lag_ms(self, rows: list[dict] | None = None, applied: int | None = None,
               ceiling: int | None = None) -> float:
        """How long ago the oldest heartbeat the replica lacks was written; 0 if it has all.
        ``ceiling``: only heartbeats up to that one count (what some replica has).

        Scanned from the newest, so a caught-up replica costs a step or two, not the whole
        history, on every check."""
        if applied is None:
            applied = self.applied(rows or [])
        oldest_missing = None
        for seq, when in reversed(self.written):
            if seq <= applied:
                break
            if ceiling is None or seq <= ceiling:
                oldest_missing = when
        if oldest_missing is None:
            return 0.0
        return max(0.0, (time.monotonic() - oldest_missing) * 1000.0)


class HealthMonitor:
    """Checks every node each ``health_interval`` and pings the replicas each
    ``ping_interval``, on its own connections."""

    def __init__(self, cluster: ClusterHealth, config: ProxyConfig,
                 metrics: ProxyMetrics | None = None) -> None:
        self.cluster = cluster
        self._config = config
        self.metrics = metrics  # its gauges are set after every check and ping
        self.heartbeat = Heartbeat(config)
        self._tasks: list[asyncio.Task] = []
        self._ping_warning_logged = False
        self._no_epoch_table: set[str] = set()  # nodes last seen without the epoch table
        # The checks of nodes that are down, run beside the cycle (check_nodes).
        self._aside: dict[str, asyncio.Task] = {}

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._every(self._config.health_interval, self.check_nodes)),
            asyncio.create_task(self._every(self._config.ping_interval, self.ping_replicas)),
        ]

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._aside.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @staticmethod
    async def _every(interval: float, action) -> None:
        while True:
            try:
                await action()
            except Exception:  # a monitor that dies silently is worse than a noisy one
                log.exception("health check failed")
            await asyncio.sleep(interval)

    async def check_nodes(self) -> None:
        """The primary first (its heartbeat), then every other node at once; then which node
        is the primary now (``ClusterHealth.elect``).

        A node that is down is checked beside the cycle, not in it: when its host is cut off,
        each of its checks waits out the connect timeout, and the cycle would learn that
        long later that another node became the primary (a failover's held writes wait on
        this)."""
        cluster = self.cluster
        primary = cluster.primary
        if primary is not None and primary.up is False:
            self._check_aside(primary, self._check_primary)  # down: a successor may come
        elif primary is not None:
            await self._check(primary, self._check_primary)
        others = [node for node in cluster.nodes if node is not primary]
        for node in others:
            if node.up is False:
                self._check_aside(node)
        others = [node for node in others if node.up is not False]
        reached = await asyncio.gather(*(self._check(node, self._check_replica)
                                         for node in others))
        self._judge_replicas([node for node, up in zip(others, reached, strict=True) if up])
        cluster.elect()
        if primary is not None and primary.up is False and \
                cluster.primary not in (None, primary):
            # Replaced while down: what still runs there can never be acknowledged (its
            # replicas follow the new primary). Those statements answer now, as lost with an
            # unknown outcome, instead of at their query timeout.
            aborted = primary.pool.abort_in_flight()
            if aborted:
                log.warning("%s replaced by %s: %d statement(s) in flight there cut off",
                            primary.name, cluster.primary.name, aborted)
        if self.metrics is not None:
            self.metrics.observe_nodes(cluster.nodes, cluster.epoch)

    def _check_aside(self, node: NodeHealth, check=None) -> None:
        """One check of a down node in a task of its own, unless one is still running; once
        it answers, the cycle checks it again."""
        running = self._aside.get(node.name)
        if running is None or running.done():
            self._aside[node.name] = asyncio.create_task(
                self._checked_aside(node, check or self._check_replica))

    async def _checked_aside(self, node: NodeHealth, check) -> None:
        try:
            await self._check(node, check)
        except Exception:  # as _every: logged, and tried again at the next cycle
            log.exception("health check of %s failed", node.name)

    async def _check(self, node: NodeHealth, check) -> bool:
        """One node's check; whether it answered."""
        timeout = self._config.connect_timeout
        began = time.perf_counter()
        try:
            await check(node, timeout)
            await self._read_role(node, timeout)
        except NodeUnavailable as error:
            await self.mark_down(node, error.reason)
            return False
        node.sql_rtt_ms = (time.perf_counter() - began) * 1000.0
        if node.up is False:
            log.info("node %s is back", node.name)
            if node is self.cluster.primary:
                # As after a promotion: its replicas are still reconnecting, and writes held
                # meanwhile wait for semi-sync rather than fail (write_target).
                node.primary_since = time.monotonic()
        node.up, node.last_error = True, None
        version = node.pool.server_version
        if version:
            self.cluster.flavour = flavour_of(version)
        return True

    async def _read_role(self, node: NodeHealth, timeout: float) -> None:
        """Whether the server is writable, its epoch row, and its semi-sync primary side.

        A node without the epoch table (a cluster set up before failover, or one being rebuilt)
        has no epoch for this check: it is asked again at the next one. While the cluster's
        epoch is above 0, a node without one is never elected."""
        flavour = self.cluster.flavour
        try:
            rows = await node.pool.probe(flavour.role_sql(self._config.epoch_table), None,
                                         timeout)
        except SqlError as error:
            if node.name not in self._no_epoch_table:
                self._no_epoch_table.add(node.name)
                log.warning("no epoch on %s (%s): it counts as epoch 0", node.name,
                            error.message)
            try:
                rows = await node.pool.probe(flavour.role_sql(None), None, timeout)
            except SqlError as again:
                raise NodeUnavailable(node.name, f"cannot read its role: {again.message}",
                                      maybe_applied=False) from None
        else:
            self._no_epoch_table.discard(node.name)
        row = rows[0]
        node.writable = not int(row["read_only"])
        node.epoch = None if row["epoch"] is None else int(row["epoch"])
        node.semi_sync = flavour.on(row["semi_sync"])
        node.semi_sync_clients = (None if row["semi_sync_clients"] is None
                                  else int(row["semi_sync_clients"]))

    async def _check_primary(self, node: NodeHealth, timeout: float) -> None:
        heartbeat = self.heartbeat
        if heartbeat.available:
            sql, args = heartbeat.write_statement()
            try:
                await node.pool.probe(sql, args, timeout)
                heartbeat.written_now()
                return
            except SqlError as error:
                if error.code == READ_ONLY_ERROR:  # no longer the primary: the roles tell
                    return
                # No table, or no right to write it: measure otherwise.
                heartbeat.available = False
                log.warning("heartbeat on %s unavailable (%s): replica lag falls back to "
                            "Seconds_Behind_Master, in whole seconds", heartbeat.table, error)

    async def _check_replica(self, node: NodeHealth, timeout: float) -> None:
        try:
            rows = await node.pool.probe(self.cluster.flavour.status_sql, None, timeout)
            status = ReplicaStatus.from_row(rows[0] if rows else None)
        except SqlError as error:  # no privilege to see it: the replica cannot be trusted
            status = ReplicaStatus(False, False, f"cannot read replica status: {error.message}",
                                   None)
        lag_ms, source, applied = None, None, None
        if self.heartbeat.available:
            sql, args = self.heartbeat.read_statement()
            try:
                applied = self.heartbeat.applied(await node.pool.probe(sql, args, timeout))
                lag_ms, source = self.heartbeat.lag_ms(applied=applied), "heartbeat"
            except SqlError:
                pass  # the table has not reached this replica (yet): status decides
        if source is None and status.seconds_behind is not None:
            lag_ms, source = status.seconds_behind * 1000.0, "seconds_behind"
        node.replication, node.lag_ms, node.lag_source = status, lag_ms, source
        node.heartbeat_applied = applied

    def _judge_replicas(self, checked: list[NodeHealth]) -> None:
        """Each replica checked in or out of rotation. While no primary can take a write, the
        heartbeats no replica has went with the primary (writes on it were acknowledged only
        once some replica had them): a replica's lag then counts only the heartbeats that some
        replica has."""
        primary = self.cluster.primary
        if primary is None or primary.up is False:
            ceiling = max((node.heartbeat_applied for node in checked
                           if node.heartbeat_applied is not None), default=None)
            if ceiling is not None:
                for node in checked:
                    if node.heartbeat_applied is not None:
                        node.lag_ms = self.heartbeat.lag_ms(applied=node.heartbeat_applied,
                                                            ceiling=ceiling)
        for node in checked:
            self._rotate(node, self._out_of_rotation_reason(node.replication, node.lag_ms))

    def _out_of_rotation_reason(self, status: ReplicaStatus, lag_ms: float | None) -> str | None:
        """Why a replica may not serve reads now; None when it may.

        While no primary can take a write (it is down, or a failover is under way), no new
        write exists that a replica could miss: its replication threads do not matter then
        (their IO threads cannot connect, a promotion stops them), only its heartbeat lag,
        which still counts every heartbeat written before the primary went."""
        primary = self.cluster.primary
        writes_possible = primary is not None and primary.up is not False
        if writes_possible and not status.running:
            stopped = [name for name, running in (("IO", status.io_running),
                                                   ("SQL", status.sql_running)) if not running]
            error = f": {status.last_error}" if status.last_error else ""
            return f"replication {' and '.join(stopped)} thread stopped{error}"
        limit_ms = self._config.max_replica_lag * 1000.0
        if lag_ms is None:
            return "lag unknown"
        if lag_ms > limit_ms:
            return f"lag {lag_ms:.0f} ms over {limit_ms:.0f} ms"
        return None

    def _rotate(self, node: NodeHealth, problem: str | None) -> None:
        """Out at once; back in after ``replica_recovery_checks`` good checks in a row."""
        if problem is not None:
            if node.in_rotation is not False:
                log.warning("replica %s out of rotation: %s", node.name, problem)
            node.in_rotation, node.rotation_reason, node.good_checks = False, problem, 0
            return
        node.good_checks += 1
        needed = self._config.replica_recovery_checks
        if node.in_rotation is None or node.good_checks >= needed:
            if node.in_rotation is False:
                log.info("replica %s back in rotation", node.name)
            node.in_rotation, node.rotation_reason = True, None
        elif node.in_rotation is False:
            node.rotation_reason = (f"recovering: {node.good_checks} of {needed} good checks")

    async def mark_down(self, node: NodeHealth, reason: str) -> None:
        """Called by the monitor and by requests that found the node dead."""
        if node.up is not False:
            log.warning("node %s is down: %s", node.name, reason)
        node.up, node.last_error = False, reason
        if node is not self.cluster.primary:
            node.in_rotation, node.rotation_reason, node.good_checks = False, "down", 0
        await node.pool.drop_idle_connections()

    async def ping_replicas(self) -> None:
        replicas = self.cluster.replicas
        hosts = sorted({node.pool.address.host for node in replicas})
        if not hosts:
            return
        try:
            results = await async_multiping(
                hosts, count=1, timeout=1, privileged=self._config.ping_privileged)
        except (ICMPLibError, OSError) as error:
            if not self._ping_warning_logged:
                log.warning("ICMP ping unavailable (%s): ping mode orders replicas randomly",
                            error)
                self._ping_warning_logged = True
            return
        by_host = {result.address: result for result in results}
        alpha = self._config.ping_smoothing
        for node in replicas:
            result = by_host.get(node.pool.address.host)
            if result is None:
                continue
            node.icmp_loss = result.packet_loss
            if not result.is_alive:
                node.icmp_rtt_ms = None
            elif node.icmp_rtt_ms is None:
                node.icmp_rtt_ms = result.avg_rtt
            else:
                node.icmp_rtt_ms = alpha * result.avg_rtt + (1 - alpha) * node.icmp_rtt_ms
