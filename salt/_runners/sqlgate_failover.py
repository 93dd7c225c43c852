"""Primary failover, switchover and rejoin of the sqlgate cluster, run on the Salt master.

The reactor (salt/reactor/*.sls) calls ``failover`` on the event ``sqlgate/db/primary-unreachable``
and ``rejoin`` on ``sqlgate/db/rejoin``, both fired by the database minions' watch job
(``sqlgate_db.watch``); an operator runs the same through ``bootstrap.py failover``,
``switchover [--to HOST]`` and ``status``::

    salt-run sqlgate_failover.check
    salt-run sqlgate_failover.failover reason='operator' automatic=False
    salt-run sqlgate_failover.switchover to=replica2
    salt-run sqlgate_failover.rejoin node=primary
    salt-run sqlgate_failover.status

The decisions are all here, the actions on a node are the ``sqlgate_db`` module's
(docs/failover.md is the contract):

- one at a time: a lock file in the master's cache directory, taken without waiting; a call
  while another holds it answers ``already running`` and changes nothing (the reactor may
  deliver the same event many times, or lose one: the watch job fires again while the
  failure lasts);
- the failure is checked again once the lock is held, from every side: the replicas' IO
  threads, the primary's minion (does its server answer?), the Proxy's view. A primary that the
  replicas still reach, or whose server answers, is not failed over;
- after an automatic failover, another automatic one within ``block_seconds`` waits for an
  operator (anti-flapping);
- no promotion while a replica that may hold the only copy of an acknowledged write cannot be
  asked: it may be the most advanced;
- the candidate is the replica that received most of the old primary's history (GTID);
- the new shape is written to the pillar file ``sqlgate/failover.sls`` (``sqlgate:db:primary``,
  ``sqlgate:db:epoch``, the quarantined nodes), which ``bootstrap.py up`` never overwrites, so
  the next highstate keeps it; the timeline of each run goes to a JSON file in the master's
  cache directory, which ``status`` reads.

It reads the pillar and the formula's files (defaults.yaml, flavours.yaml) from the master's
own pillar and file roots, and uses only Salt and the standard library (the AWS master runs
Salt's onedir).
"""

import concurrent.futures
import contextlib
import fcntl
import functools
import json
import logging
import os
import pwd
import time

import salt.client
import salt.utils.yaml

log = logging.getLogger(__name__)

__virtualname__ = "sqlgate_failover"

LOCK_FILE = "sqlgate-failover.lock"
STATE_DIR = "sqlgate-failover"
TIMELINE_FILE = "timeline.json"
PILLAR_FILE = "sqlgate/failover.sls"
DB_ROLES = ("primary", "replica")
# The formula's defaults for these (defaults.yaml's sqlgate:failover wins when readable).
DEFAULTS = {"watch_seconds": 1, "detect_seconds": 3, "refire_seconds": 5, "fence_seconds": 2,
            "block_seconds": 3600, "check_timeout": 5, "apply_timeout": 30, "replica_wait": 5}
HISTORY_KEPT = 50
PROXY_PORT = 5000


def __virtual__():
    return __virtualname__


# --- what the master knows: pillar, formula, settings ----------------------------------------

def _opts():
    return __opts__  # noqa: F821 (a Salt dunder)


def _pillar_root():
    return _opts()["pillar_roots"]["base"][0]


def _formula_file(name):
    for root in _opts()["file_roots"]["base"]:
        path = os.path.join(root, "sqlgate", name)
        if os.path.exists(path):
            return path
    return None


def _yaml(path):
    if not path or not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return salt.utils.yaml.safe_load(handle) or {}


def _merge(base, over):
    for key, value in (over or {}).items():
        if isinstance(base.get(key), dict) and isinstance(value, dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


class Cluster:
    """The cluster as the pillar files on the master say: its database hosts, the current
    primary and epoch, the quarantined nodes, the settings and the flavours' statements."""

    def __init__(self):
        root = _pillar_root()
        common = _yaml(os.path.join(root, "sqlgate", "common.sls")).get("sqlgate", {})
        self.failover_pillar = _yaml(os.path.join(root, PILLAR_FILE))
        current = self.failover_pillar.get("sqlgate", {})
        defaults = _yaml(_formula_file("defaults.yaml")).get("sqlgate", {})
        self.settings = _merge(_merge(dict(DEFAULTS), defaults.get("failover")),
                               _merge(common.get("failover") or {}, current.get("failover")))
        self.hosts = common.get("hosts", {})
        self.db_hosts = sorted(name for name, host in self.hosts.items()
                               if host.get("role") in DB_ROLES)
        self.role_primary = next((name for name in self.db_hosts
                                  if self.hosts[name]["role"] == "primary"), None)
        db = current.get("db") or {}
        self.primary = db.get("primary") or self.role_primary
        self.epoch = int(db.get("epoch") or 1)
        self.fork_gtid_pos = db.get("fork_gtid_pos", "")
        self.quarantined = list((current.get("failover") or {}).get("quarantined") or [])
        # Former primaries fenced by a failover and not rejoined since: they follow nobody,
        # so they hold none of the current primary's writes.
        self.fenced = list((current.get("failover") or {}).get("fenced") or [])
        self.proxies = sorted(name for name, host in self.hosts.items()
                              if host.get("role") == "proxy")
        self.addresses = common.get("addresses") or {}
        self.mysql_port = int((common.get("ports") or {}).get("mysql", 3306))
        self.tls_dir = (defaults.get("tls") or {}).get("dir", "/etc/sqlgate/tls")
        self.flavours = _yaml(_formula_file("flavours.yaml"))
        self.epoch_write = (defaults.get("db") or {}).get("epoch_write")

    @property
    def replicas(self):
        return [name for name in self.db_hosts if name != self.primary
                and name not in self.quarantined and name not in self.fenced]

    def address(self, host):
        """A host's private address: the pillar's fixed one, else the Salt mine's."""
        if self.addresses.get(host):
            return self.addresses[host]
        mined = __salt__["mine.get"](host, "sqlgate_address")  # noqa: F821
        found = (mined or {}).get(host) or []
        if not found:
            raise RuntimeError(f"no address of {host} in the Salt mine")
        return found[0]

    def follow_kwargs(self, source, flavour):
        spec = self.flavours.get(flavour) or self.flavours.get("mariadb") or {}
        return {"source": self.address(source), "port": self.mysql_port,
                "change_source": spec.get("change_source", ""),
                "change_source_ssl": spec.get("change_source_ssl", ""),
                "ssl_ca": f"{self.tls_dir}/ca.crt"}

    def steps(self, flavour):
        """The flavour's statements of a promotion and a fence (flavours.yaml, defaults.yaml),
        for sqlgate_db.promote and fence."""
        spec = self.flavours.get(flavour) or {}
        found = {key: spec[key] for key in ("promote", "open_writes", "fence", "stop_writes")
                 if spec.get(key)}
        if self.epoch_write:
            found["epoch_write"] = self.epoch_write
        return found

    def write_pillar(self, primary, epoch, fork_gtid_pos, quarantined, fenced=None):
        """The failover pillar file: what the next highstate keeps (written atomically)."""
        fenced = sorted(set(self.fenced if fenced is None else fenced) - {primary})
        data = self.failover_pillar or {}
        sqlgate = data.setdefault("sqlgate", {})
        sqlgate["db"] = {"primary": primary, "epoch": int(epoch),
                         "fork_gtid_pos": fork_gtid_pos or ""}
        sqlgate.setdefault("failover", {})["quarantined"] = sorted(set(quarantined))
        sqlgate["failover"]["fenced"] = fenced
        path = os.path.join(_pillar_root(), PILLAR_FILE)
        temporary = f"{path}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write("# Written by the failover runner (salt/_runners/sqlgate_failover.py):"
                         " the current primary and epoch. bootstrap.py up keeps it.\n")
            salt.utils.yaml.safe_dump(data, handle, default_flow_style=False)
        os.chmod(temporary, 0o600)
        _own(temporary)
        os.replace(temporary, path)
        self.failover_pillar = data
        self.primary, self.epoch, self.fork_gtid_pos = primary, int(epoch), fork_gtid_pos
        self.quarantined = sorted(set(quarantined))
        self.fenced = fenced


# --- the minions ----------------------------------------------------------------------------

def _ask(targets, function, arg=(), kwarg=None, timeout=5, enough=None, grace=1.0):
    """``function`` on ``targets``: the answers by minion; a minion that did not answer in
    ``timeout`` seconds is absent, one whose function failed answers its error text.

    ``timeout`` is a deadline, not Salt's "wait, then ask the minions whether they still run
    the job": a minion whose host is cut off never answers, and a failover cannot wait out
    Salt's job-gathering rounds for it. ``enough``: once these targets answered, the others
    get ``grace`` seconds more."""
    if not targets:
        return {}
    client = salt.client.get_local_client(_opts()["conf_file"])
    answers, started = {}, time.monotonic()
    deadline, wanted = started + float(timeout), set(targets)
    enough = set(enough or ()) & wanted
    try:
        for reply in client.cmd_iter_no_block(
                list(targets), function, arg=list(arg), kwarg=kwarg or {}, tgt_type="list",
                timeout=timeout, gather_job_timeout=1):
            for minion, data in (reply or {}).items():
                answers[minion] = data.get("ret") if isinstance(data, dict) else data
            now = time.monotonic()
            if wanted <= set(answers) or now >= deadline:
                break
            if enough and enough <= set(answers):
                deadline = min(deadline, now + float(grace))
                enough = set()
            if not reply:
                time.sleep(0.02)
    except Exception as error:  # a master that cannot publish: nobody answers
        log.warning("sqlgate_failover: %s on %s: %s", function, targets, error)
    return answers


def _together(*calls):
    """Several ``_ask`` calls (each a ``(targets, function, arg, kwarg, timeout)`` tuple) at
    once, each on its own Salt client: a step that changes several nodes in different ways
    costs one round trip, not one per node. Their answers, in order."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(_ask, *call) for call in calls]
        return [future.result() for future in futures]


def _states(cluster, nodes, timeout):
    return _node_states(nodes, _ask(nodes, "sqlgate_db.node_state", timeout=timeout))


def _node_states(nodes, answers):
    return {node: answers[node] if isinstance(answers.get(node), dict) else None
            for node in nodes}


def _proxy_call(cluster, timeout):
    """The ``_ask`` call that reads each Proxy's /health on its host."""
    tls, me = cluster.tls_dir, "{{ grains.id }}"
    command = (f"curl -s --max-time 3 --cacert {tls}/ca.crt --cert {tls}/{me}.crt "
               f"--key {tls}/{me}.key --resolve {me}:{PROXY_PORT}:127.0.0.1 "
               f"https://{me}:{PROXY_PORT}/health")
    return cluster.proxies, "cmd.run", [command], {"template": "jinja"}, timeout


def _proxy_view(answers):
    """What the Proxies see of each database node: ``{node: up}`` (True, False or None)."""
    view = {}
    for answer in answers.values():
        try:
            nodes = json.loads(answer)["nodes"]
        except (TypeError, ValueError, KeyError):
            continue
        for name, node in nodes.items():
            view[name] = node.get("up")
    return view


# --- the lock and the record ----------------------------------------------------------------

def _own(path):
    """A file made by an operator's ``salt-run`` as root belongs to the master's user, which
    runs the reactor's calls."""
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError, OSError):
            user = pwd.getpwnam(_opts().get("user") or "root")
            os.chown(path, user.pw_uid, user.pw_gid)


def _state_dir():
    path = os.path.join(_opts()["cachedir"], STATE_DIR)
    os.makedirs(path, mode=0o700, exist_ok=True)
    _own(path)
    return path


def _one_at_a_time(function):
    """A runner function that runs only while it holds the lock (``_single_flight``): a
    call while another run holds it answers ``already running`` and changes nothing."""
    @functools.wraps(function)  # Salt reads the arguments through __wrapped__
    def run(*args, **kwargs):
        with _single_flight() as held:
            if not held:
                return {"result": "already running"}
            return function(*args, **kwargs)
    return run


@contextlib.contextmanager
def _single_flight():
    """Yields True to the one caller holding the lock, False (at once) to any other."""
    path = os.path.join(_opts()["cachedir"], LOCK_FILE)
    with open(path, "a", encoding="utf-8") as handle:
        _own(path)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _history():
    path = os.path.join(_state_dir(), TIMELINE_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {"runs": [], "alerts": []}


def _save(history):
    history["runs"] = history["runs"][-HISTORY_KEPT:]
    history["alerts"] = history["alerts"][-HISTORY_KEPT:]
    path = os.path.join(_state_dir(), TIMELINE_FILE)
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(history, handle, indent=1, sort_keys=True)
    _own(temporary)
    os.replace(temporary, path)


def _alert(text, **data):
    """An alert the operator sees in ``status`` (and the master's log)."""
    log.warning("sqlgate_failover ALERT: %s", text)
    history = _history()
    history["alerts"].append({"at": time.time(), "alert": text, **data})
    _save(history)
    __salt__["event.send"]("sqlgate/db/alert", {"alert": text, **data})  # noqa: F821


def _record(run):
    history = _history()
    history["runs"].append(run)
    _save(history)


def _fire(tag, data):
    with contextlib.suppress(Exception):
        __salt__["event.send"](tag, data)  # noqa: F821


# --- the check ------------------------------------------------------------------------------

def _assess(cluster, timeout, stop_lost=False):
    """Whether the primary failed, from every side; the node states seen on the way.
    ``stop_lost``: the replicas that lost the primary stop their IO threads and apply their
    relay logs in the same round trip (``sqlgate_db.failover_check``; ``stopped`` in their
    states), which the caller undoes when it does not fail over."""
    nodes = cluster.db_hosts
    settings = cluster.settings
    if stop_lost:
        call = ("sqlgate_db.failover_check", (), {"stop_if_lost": settings["detect_seconds"],
                                                  "apply_timeout": settings["apply_timeout"]},
                timeout + settings["apply_timeout"])
    else:
        call = ("sqlgate_db.node_state", (), None, timeout)
    # All at once; a primary whose minion is silent (its host cut off) is waited for only
    # half a second longer than the replicas.
    answers, proxies = _together((nodes, *call, cluster.replicas, 0.5),
                                 _proxy_call(cluster, timeout))
    states, proxy = _node_states(nodes, answers), _proxy_view(proxies)
    primary = states.get(cluster.primary)
    replicas = {node: states[node] for node in cluster.replicas}
    view = {
        "primary": cluster.primary,
        "primary_minion": ("no answer" if primary is None else
                           "server running" if primary.get("running") else "server down"),
        "proxy_sees_primary": proxy.get(cluster.primary),
        "replicas": {},
    }
    lost = connected = 0
    for node, state in replicas.items():
        if state is None or not state.get("running"):
            view["replicas"][node] = "no answer" if state is None else "server down"
            continue
        replica = state.get("replica") or {}
        io = replica.get("io_running", "")
        following = replica.get("source_host")
        # Its watch job's probe (lost_seconds) sees a cut link long before the IO thread.
        probe = replica.get("lost_seconds")
        view["replicas"][node] = (f"IO {io or 'none'} from {following or 'nobody'}"
                                  + ("" if probe is None else f", lost {probe}s"))
        if io == "Yes" and probe is None:
            connected += 1
        else:
            lost += 1
    if primary is not None and primary.get("running") and not primary.get("read_only"):
        failed, why = False, "the primary's server answers and is writable"
    elif connected:
        failed, why = False, f"{connected} replica(s) still receive from the primary"
    elif proxy.get(cluster.primary) is True:
        failed, why = False, "the Proxy still reaches the primary (replicas do not): alert"
    elif primary is not None and not primary.get("running"):
        failed, why = True, "the primary's minion says its server is down"
    elif lost:
        failed, why = True, f"every answering replica ({lost}) lost the primary"
    else:
        failed, why = False, "no replica answered: cannot tell"
    view.update(failed=failed, why=why)
    return view, states


def check():
    """The failure check alone: what each side sees of the primary, and the verdict. Changes
    nothing.

    CLI Example::

        salt-run sqlgate_failover.check
    """
    cluster = Cluster()
    view, _ = _assess(cluster, cluster.settings["check_timeout"])
    view["epoch"] = cluster.epoch
    view["quarantined"] = cluster.quarantined
    return view


# --- failover -------------------------------------------------------------------------------

def _rank(state):
    """How much of the old primary's history a replica holds: what it received, then what it
    applied (MariaDB positions; MySQL sets by their size)."""
    replica = state.get("replica") or {}
    return (_size(replica.get("received") or state.get("gtid_current_pos", "")),
            _size(state.get("gtid_current_pos", "")))


def _gtid_items(position):
    """The items of a GTID position or set: MariaDB's ``domain-server-seqno``, MySQL's
    ``uuid:intervals`` (MySQL prints long sets over several lines)."""
    for item in (position or "").replace("\n", "").split(","):
        if item.strip():
            yield item.strip()


def _size(position):
    total = 0
    for item in _gtid_items(position):
        if ":" in item:  # MySQL: uuid:1-5:7-9
            for interval in item.split(":")[1:]:
                low, _, high = interval.partition("-")
                total += int(high or low) - int(low) + 1
        else:
            total += int(item.rsplit("-", 1)[-1])
    return total


def _last_automatic(history):
    """When the last promotion was detected, if it was automatic; None when there was none,
    or when an operator's promotion (failover or switchover) came after it: the operator has
    acted since, so an automatic failover is armed again."""
    last = None
    for run in history["runs"]:  # in the order they ran
        if run.get("result") == "promoted":
            last = run.get("detected", 0) if run.get("automatic") else None
    return last


@_one_at_a_time
def failover(reason="", automatic=True, force=False):
    """Fail over from a primary that failed: check, fence, promote the most advanced replica,
    repoint the others, record. One at a time (``already running`` otherwise).

    ``automatic`` (the reactor's calls) is held back for ``block_seconds`` after an automatic
    failover; an operator's call (``automatic=False``) is not. ``force`` (operator only)
    promotes even while a replica cannot be asked.

    CLI Example::

        salt-run sqlgate_failover.failover reason='primary host lost' automatic=False
    """
    automatic = _truth(automatic)
    return _failover(Cluster(), reason, automatic, _truth(force) and not automatic)


def _truth(value):
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


def _failover(cluster, reason, automatic, force):
    detected = time.time()
    timeout = cluster.settings["check_timeout"]
    run = {"kind": "failover", "reason": reason, "automatic": automatic, "detected": detected,
           "old_primary": cluster.primary, "epoch_before": cluster.epoch}
    last = _last_automatic(_history())
    blocked = automatic and last is not None and \
        detected - last < cluster.settings["block_seconds"]
    # The replicas that lost the primary stop receiving from it and apply what they hold in
    # the check's own round trip (undone below when there is no failover).
    view, states = _assess(cluster, timeout, stop_lost=not blocked)
    run["check"] = view
    _mark(run, "assessed")
    stopped = [node for node, state in states.items() if state and state.get("stopped")]
    if not view["failed"]:
        _restart_io(stopped, timeout)
        if "alert" in view["why"]:
            _alert(f"primary {cluster.primary}: {view['why']}")
        return {"result": "no failover", "why": view["why"], "primary": cluster.primary}
    if blocked:
        text = (f"primary {cluster.primary} failed {detected - last:.0f}s after the last "
                f"automatic failover (block {cluster.settings['block_seconds']}s): waiting "
                "for an operator (bootstrap.py failover)")
        _alert(text)
        return {"result": "blocked", "why": text}

    # Nothing more reaches the replicas from the old primary (any the check did not stop
    # stop now), and the old primary is fenced where it can be reached, in one round trip;
    # then compare what the replicas hold. A primary whose minion answered nothing is sent
    # its fence without waiting: it fenced itself (watch), which _await_self_fence gives the
    # time to. A primary whose server is down takes no write until it is back, read-only:
    # its fence (the port) goes along with the promotion instead of before it.
    primary = states.get(cluster.primary)
    silent, down = primary is None, bool(primary) and not primary.get("running")
    answering = [node for node in cluster.replicas
                 if states.get(node) and states[node].get("running")]
    flavour = next((states[node].get("flavour") for node in answering), "mariadb")
    fence = _fence_call(cluster, cluster.primary, flavour, timeout)
    apply_timeout = cluster.settings["apply_timeout"]
    # The check stopped the replicas that had lost the primary for detect_seconds (their
    # answers say how long it took); one that lost it only just now stops here.
    pending = [node for node in answering if "took" not in states[node]]
    stop = (pending, "sqlgate_db.stop_io", (), {"apply_timeout": apply_timeout},
            apply_timeout + timeout)
    if silent:
        _send(*fence[:4])
    if silent or down:
        now_stopped, fenced = _ask(*stop), {}
    else:
        now_stopped, fenced = _together(stop, fence)
    run["fence"] = _fenced(fenced.get(cluster.primary), silent)
    _mark(run, "replicas_stopped")
    states.update({node: now_stopped[node] if isinstance(now_stopped.get(node), dict)
                   else None for node in pending})
    ours = [*stopped, *pending]  # the IO threads to start again if nothing is promoted
    run["stop_io_took"] = {node: states[node].get("took") for node in answering
                           if states.get(node)}
    missing = [node for node in cluster.replicas
               if not (states.get(node) and states[node].get("running"))]
    if missing and not force:
        _restart_io(ours, timeout)
        text = (f"primary {cluster.primary} failed but replica(s) {', '.join(missing)} cannot "
                "be asked and may hold the only copy of an acknowledged write: not promoting "
                "(bootstrap.py failover decides)")
        _alert(text, missing=missing)
        run.update(result="refused", why=text)
        _record(run)
        return {"result": "refused", "why": text}
    answering = [node for node in answering if states.get(node)]
    if not answering:
        return {"result": "refused", "why": "no replica answers"}
    candidate = max(answering, key=lambda node: (_rank(states[node]), node))
    run["candidate"] = candidate
    run["positions"] = {node: (states[node].get("replica") or {}).get("received")
                        for node in answering}
    behind = [node for node in answering
              if not (states[node].get("replica") or {}).get("relay_applied", True)]
    if behind:
        _restart_io(ours, timeout)
        text = (f"{', '.join(behind)} did not apply its relay log within {apply_timeout}s: "
                "not promoting")
        _alert(text)
        run.update(result="refused", why=text)
        _record(run)
        return {"result": "refused", "why": text}
    if silent:
        _await_self_fence(cluster, run, [states[node] for node in answering])
    result = _take_over(cluster, run, candidate, states, answering,
                        alongside=fence if down else None)
    if "writable" in run:
        result["detected_to_writable_s"] = round(run["writable"] - detected, 3)
    return result


def _restart_io(nodes, timeout):
    """The IO threads a failover stopped run again: it did not promote."""
    _ask(nodes, "sqlgate_db.execute", ["START REPLICA IO_THREAD"], timeout=timeout)


def _mark(run, step):
    """When a step of a run ended (the timeline ``status`` shows)."""
    run.setdefault("steps", {})[step] = time.time()


def _fence_call(cluster, node, flavour, timeout):
    """The ``_ask`` call fencing a former primary where it can be reached: read-only and its
    clients cut off when its server answers, its database port closed to the Proxies when its
    minion answers (nftables; on AWS the instance is stopped by bootstrap.py)."""
    sources = []
    for proxy in cluster.proxies:
        with contextlib.suppress(Exception):
            sources.append(cluster.address(proxy))
    return ([node], "sqlgate_db.fence_node", (),
            {"sources": sources, "port": cluster.mysql_port, "steps": cluster.steps(flavour)},
            timeout)


def _fenced(answer, sent=False):
    if isinstance(answer, dict):
        return answer
    text = "sent, its minion silent" if sent else (answer or "no answer")
    return {"server": text, "port": text}


def _fence(cluster, node, timeout, flavour="mariadb"):
    """Fence ``node`` and wait for its answer (``_fence_call``)."""
    return _fenced(_ask(*_fence_call(cluster, node, flavour, timeout)).get(node))


def _send(targets, function, arg=(), kwarg=None):
    """Publish a job without waiting for its answer."""
    with contextlib.suppress(Exception):
        client = salt.client.get_local_client(_opts()["conf_file"])
        client.cmd_async(list(targets), function, arg=list(arg), kwarg=kwarg or {},
                         tgt_type="list")


def _await_self_fence(cluster, run, replicas):
    """A primary cut off from its replicas makes itself read-only within ``fence_seconds``
    (and one watch period, and its probes of the replicas) of losing them, which is when they
    lost it: the candidate becomes writable only after that, so that two databases are never
    writable at once even for the instant before the old one's watch runs. The replicas'
    watch jobs say how long they have seen the primary lost; usually long enough already."""
    settings = cluster.settings
    needed = float(settings["fence_seconds"]) + float(settings["watch_seconds"]) + 1.0
    lost = [((state.get("replica") or {}).get("lost_seconds")) for state in replicas]
    seen = max((value for value in lost if value is not None), default=0.0)
    if seen < needed:
        time.sleep(needed - seen)
    run["self_fence_wait_s"] = round(max(0.0, needed - seen), 3)


def _take_over(cluster, run, candidate, states, repoint, position=None, alongside=None):
    """The candidate is promoted while the replicas in ``repoint`` are repointed to it, in one
    round trip (its promotion waits for a semi-sync replica before it opens writes; each of
    them has applied no more than the candidate, so its position is in the candidate's
    binary log); then the new shape goes to the pillar and the minions. ``position``: the
    candidate first applies that much (a switchover). ``alongside``: the fence of an old
    primary whose server is down, in the same round trip."""
    epoch = max([cluster.epoch] + [(state.get("epoch") or {}).get("epoch", 0)
                                   for state in states.values() if state]) + 1
    run["epoch"] = epoch
    flavour = states[candidate].get("flavour", "mariadb")
    others = [node for node in repoint if node != candidate]
    settings = cluster.settings
    replica_wait, apply_timeout = settings["replica_wait"], settings["apply_timeout"]
    promote = ([candidate], "sqlgate_db.promote", [epoch, candidate],
               {"steps": cluster.steps(flavour), "replica_wait": replica_wait,
                "position": position or "", "apply_timeout": apply_timeout},
               settings["check_timeout"] + replica_wait + (apply_timeout if position else 0) + 10)
    calls = [promote, _follow_call(cluster, others, candidate, flavour)]
    if alongside:
        calls.append(alongside)
    promoted, repointed, *fenced = _together(*calls)
    if others:
        run["repointed"] = repointed
    if fenced:
        run["fence"] = _fenced(fenced[0].get(alongside[0][0]))
    promoted = promoted.get(candidate)
    run["promoted"] = time.time()
    if not isinstance(promoted, dict):
        text = f"promoting {candidate} failed: {promoted}"
        _alert(text)
        run.update(result="failed", why=text)
        _record(run)
        return {"result": "failed", "why": text}
    run["writable"] = time.time()
    old = run.get("old_primary")
    cluster.write_pillar(candidate, epoch, promoted.get("fork_gtid_pos", ""),
                         cluster.quarantined,
                         [*cluster.fenced, old] if run.get("kind") == "failover" else None)
    # The minions that answered learn the new shape now; a silent one (the cut-off primary)
    # when it is back (rejoin refreshes it).
    everyone = sorted(host for host in cluster.hosts
                      if host not in states or states[host] is not None)
    _together((everyone, "saltutil.refresh_pillar", (), {"wait": True}, 20),
              (everyone, "mine.update", (), None, 20))
    run.update(result="promoted", new_primary=candidate, finished=time.time())
    _record(run)
    _fire("sqlgate/db/promoted", {"primary": candidate, "epoch": epoch,
                                  "old_primary": run.get("old_primary")})
    log.warning("sqlgate_failover: %s promoted (epoch %s), %s fenced", candidate, epoch,
                run.get("old_primary"))
    return {"result": "promoted", "primary": candidate, "epoch": epoch,
            "old_primary": run.get("old_primary"), "repointed": sorted(others)}


def _follow_call(cluster, nodes, source, flavour):
    """The ``_ask`` call repointing ``nodes`` to ``source``."""
    return (nodes, "sqlgate_db.follow", (), cluster.follow_kwargs(source, flavour),
            cluster.settings["check_timeout"] + 10)


def _chain_under(cluster, run, candidate, others, flavour):
    """A switchover's first steps, while writes go on: the ``others`` stop where they are
    (IO thread stopped, relay log applied), the candidate catches up with the furthest of
    them, so that its binary log holds every one's position, and they follow it (chained:
    it still follows the primary). What went wrong, or None."""
    if not others:
        return None
    timeout, apply_timeout = cluster.settings["check_timeout"], cluster.settings["apply_timeout"]
    stopped = _ask(others, "sqlgate_db.stop_io", kwarg={"apply_timeout": apply_timeout},
                   timeout=apply_timeout + timeout)
    silent = [node for node in others if not isinstance(stopped.get(node), dict)]
    furthest = _furthest([stopped[node].get("gtid_current_pos", "") for node in others
                          if node not in silent], flavour)
    caught_up = not silent and _ask(
        [candidate], "sqlgate_db.wait_applied",
        kwarg={"position": furthest, "timeout": apply_timeout},
        timeout=apply_timeout + timeout).get(candidate) is True
    if not caught_up:
        _restart_io(others, timeout)
        return (f"{', '.join(silent)} did not stop" if silent else
                f"{candidate} did not reach {furthest} in time")
    run["repointed"] = _ask(*_follow_call(cluster, others, candidate, flavour))
    _mark(run, "replicas_repointed")
    unfollowed = [node for node in others if not isinstance(run["repointed"].get(node), dict)]
    if unfollowed:
        return f"{', '.join(unfollowed)} could not follow {candidate}: {run['repointed']}"
    return None


def _give_writes_back(old, timeout):
    """A switchover that promoted nothing: the primary it made read-only takes writes again
    (MySQL: read_only OFF clears super_read_only too)."""
    _ask([old], "sqlgate_db.execute", ["SET GLOBAL read_only = OFF"], timeout=timeout)


def _furthest(positions, flavour):
    """The position that contains all of ``positions``: MariaDB's highest seqno of each
    domain; MySQL's union of GTID sets."""
    if flavour == "mysql":
        return ",".join(position for position in positions if position)
    domains = {}
    for position in positions:
        for item in _gtid_items(position):
            domain, server, seqno = item.split("-")
            if int(seqno) > domains.get(domain, (0, -1))[1]:
                domains[domain] = (server, int(seqno))
    return ",".join(f"{domain}-{server}-{seqno}"
                    for domain, (server, seqno) in sorted(domains.items()))


# --- switchover -----------------------------------------------------------------------------

@_one_at_a_time
def switchover(to=None):
    """A planned change of primary: the other replicas moved under the candidate (``to``,
    else the most advanced replica), which still follows the old primary (chained, while
    writes go on: ``_chain_under``); the old primary made read-only (no connection cut: its
    commits in flight finish, acknowledged, and later writes are refused as read-only, which
    the Proxy holds for the new primary), answering where its writes stopped; the candidate
    applies up to there and is promoted (its repointed replicas are already connected to
    acknowledge). Writes are held for the last two. Then the old primary, fenced in full once
    its writes are over, follows the new one. Every database node must answer.

    CLI Example::

        salt-run sqlgate_failover.switchover to=replica2
    """
    cluster = Cluster()
    timeout = cluster.settings["check_timeout"]
    states = _states(cluster, cluster.db_hosts, timeout)
    silent = [node for node in [cluster.primary, *cluster.replicas]
              if not (states.get(node) and states[node].get("running"))]
    if silent:
        return {"result": "refused",
                "why": f"{', '.join(silent)} do(es) not answer: use failover"}
    if to is not None and to not in cluster.replicas:
        return {"result": "refused", "why": f"{to} is not a replica of {cluster.primary}"}
    run = {"kind": "switchover", "automatic": False, "detected": time.time(),
           "old_primary": cluster.primary, "epoch_before": cluster.epoch}
    old = cluster.primary
    flavour = states[old].get("flavour", "mariadb")
    steps = cluster.steps(flavour)
    candidate = to or max(cluster.replicas, key=lambda node: (_rank(states[node]), node))
    run["candidate"] = candidate
    others = [node for node in cluster.replicas if node != candidate]
    refused = _chain_under(cluster, run, candidate, others, flavour)
    if refused:
        return {"result": "refused", "why": f"{refused}; primary unchanged"}
    # Writes stop; commits in flight finish, acknowledged (docs/failover.md).
    fenced = _ask([old], "sqlgate_db.fence", kwarg={"steps": steps, "planned": True},
                  timeout=timeout).get(old)
    run["fence"] = fenced
    _mark(run, "writes_stopped")
    if not isinstance(fenced, dict):
        _give_writes_back(old, timeout)
        return {"result": "refused", "why": f"{old} could not be made read-only: {fenced}"}
    result = _take_over(cluster, run, candidate, states, [],
                        position=fenced.get("gtid_binlog_pos", ""))
    if result["result"] != "promoted":
        # Nothing was promoted: the primary takes writes again (its replicas still follow
        # it, through the candidate).
        _give_writes_back(old, timeout)
        return result
    # Its writes are over: the whole fence now (semi-sync's primary side off too), with
    # nothing left to cut off, then it follows the new primary.
    _ask([old], "sqlgate_db.fence",
         kwarg={"steps": {"stop_writes": steps.get("fence", [])}, "planned": True},
         timeout=timeout)
    result["repointed"] = sorted(others)
    result["old_primary_follows"] = _ask(*_follow_call(cluster, [old], candidate,
                                                       flavour)).get(old)
    return result


# --- rejoin ---------------------------------------------------------------------------------

@_one_at_a_time
def rejoin(node):
    """A database node that is not the primary and follows nobody (a former primary started
    again, read-only): it follows the current primary when its history is contained in the
    primary's; else it is quarantined (pillar ``sqlgate:failover:quarantined``, an alert),
    never repointed and never in rotation.

    CLI Example::

        salt-run sqlgate_failover.rejoin node=primary
    """
    cluster = Cluster()
    timeout = cluster.settings["check_timeout"]
    if node not in cluster.db_hosts:
        return {"result": "nothing to do", "why": f"{node} is no database host"}
    if node == cluster.primary:
        return _restore(cluster, node, timeout)
    if node in cluster.quarantined:
        return {"result": "quarantined", "node": node}
    states = _states(cluster, [node, cluster.primary], timeout)
    mine, primary = states.get(node), states.get(cluster.primary)
    if not (mine and mine.get("running")) or not (primary and primary.get("running")):
        return {"result": "waiting", "why": "the node or the primary does not answer"}
    # A node cut off during the failover missed the pillar's refresh: its watch job
    # must stop taking itself for the primary.
    _ask([node], "saltutil.refresh_pillar", kwarg={"wait": True}, timeout=timeout)
    if not mine.get("read_only"):
        # A writable node that is not the pillar's primary is a stale one: fenced first.
        _fence(cluster, node, timeout, mine.get("flavour", "mariadb"))
    if (mine.get("replica") or {}).get("source_host") == cluster.address(cluster.primary):
        if node in cluster.fenced:
            cluster.write_pillar(cluster.primary, cluster.epoch, cluster.fork_gtid_pos,
                                 cluster.quarantined, [n for n in cluster.fenced if n != node])
        return {"result": "nothing to do", "why": f"{node} already follows the primary"}
    found = _ask([node], "sqlgate_db.errant", [primary.get("gtid_binlog_pos", "")],
                 {"fork_gtid_pos": cluster.fork_gtid_pos,
                  "primary_server_id": primary.get("server_id")}, timeout=timeout).get(node)
    run = {"kind": "rejoin", "node": node, "primary": cluster.primary,
           "detected": time.time(), "automatic": True}
    if not isinstance(found, list):
        return {"result": "waiting", "why": f"errant check failed: {found}"}
    if found:
        cluster.write_pillar(cluster.primary, cluster.epoch, cluster.fork_gtid_pos,
                             [*cluster.quarantined, node])
        _ask(sorted(cluster.hosts), "saltutil.refresh_pillar", kwarg={"wait": True},
             timeout=20)
        text = (f"{node} diverged from {cluster.primary} (errant {', '.join(found)}): "
                "quarantined, never in rotation; rebuild it (bootstrap.py rebuild)")
        _alert(text, node=node, errant=found)
        run.update(result="quarantined", errant=found)
        _record(run)
        return {"result": "quarantined", "node": node, "errant": found}
    _ask([node], "sqlgate_db.open_port", timeout=timeout)
    follow = cluster.follow_kwargs(cluster.primary, mine.get("flavour", "mariadb"))
    answer = _ask([node], "sqlgate_db.follow", kwarg=follow, timeout=timeout + 10).get(node)
    if isinstance(answer, dict) and node in cluster.fenced:
        cluster.write_pillar(cluster.primary, cluster.epoch, cluster.fork_gtid_pos,
                             cluster.quarantined, [n for n in cluster.fenced if n != node])
    run.update(result="rejoined" if isinstance(answer, dict) else "failed",
               answer=answer, finished=time.time())
    _record(run)
    return {"result": run["result"], "node": node, "primary": cluster.primary}


def _restore(cluster, node, timeout):
    """The pillar's primary came back read-only (every server starts so) without a failover:
    it is made writable again when its epoch row is the pillar's epoch with its own name and
    no other database node is writable."""
    states = _states(cluster, cluster.db_hosts, timeout)
    mine = states.get(node) or {}
    if not mine.get("running") or not mine.get("read_only"):
        return {"result": "nothing to do", "why": f"{node} is writable or not answering"}
    row = mine.get("epoch") or {}
    if (row.get("epoch"), row.get("primary_host")) != (cluster.epoch, node):
        text = (f"{node} is the pillar's primary (epoch {cluster.epoch}) but its epoch row "
                f"says {row or 'nothing'}: left read-only")
        _alert(text)
        return {"result": "refused", "why": text}
    writers = [other for other, state in states.items()
               if other != node and state and state.get("running")
               and not state.get("read_only")]
    if writers:
        text = f"{node} stays read-only: {', '.join(writers)} is writable"
        _alert(text)
        return {"result": "refused", "why": text}
    # A failover that was refused may have fenced it (its port closed) on the way.
    _ask([node], "sqlgate_db.open_port", timeout=timeout)
    wait = cluster.settings["replica_wait"]
    answer = _ask([node], "sqlgate_db.promote", [cluster.epoch, node],
                  {"steps": cluster.steps(mine.get("flavour")), "replica_wait": wait},
                  timeout=timeout + wait + 10).get(node)
    _record({"kind": "restore", "node": node, "detected": time.time(), "answer": answer,
             "result": "writable" if isinstance(answer, dict) else "failed"})
    return {"result": "writable" if isinstance(answer, dict) else "failed", "node": node}


# --- rebuild -------------------------------------------------------------------------------

@_one_at_a_time
def rebuild(node):
    """A quarantined (or any non-primary) database node made a fresh replica of the primary:
    its diverged data and history wiped (``sqlgate_db.wipe``), then it replays the primary's
    binary logs from their first transaction. Refused when the primary's logs no longer begin
    there (a copy from a backup is needed then), and on the primary.

    CLI Example::

        salt-run sqlgate_failover.rebuild node=primary
    """
    cluster = Cluster()
    timeout = cluster.settings["check_timeout"]
    if node not in cluster.db_hosts or node == cluster.primary:
        return {"result": "refused", "why": f"{node} is the primary or no database host"}
    states = _states(cluster, [node, cluster.primary], timeout)
    mine = states.get(node)
    if not (mine and mine.get("running")) or not states.get(cluster.primary):
        return {"result": "refused", "why": "the node or the primary does not answer"}
    complete = _ask([cluster.primary], "sqlgate_db.history_complete",
                    timeout=timeout).get(cluster.primary)
    if complete is not True:
        return {"result": "refused", "why": f"{cluster.primary}'s binary logs no longer "
                "hold its whole history: rebuild the node from a backup"}
    if not mine.get("read_only"):
        _fence(cluster, node, timeout, mine.get("flavour", "mariadb"))
    wiped = _ask([node], "sqlgate_db.wipe", kwarg={"confirm": node},
                 timeout=timeout + 30).get(node)
    if not isinstance(wiped, dict):
        return {"result": "failed", "why": f"wipe: {wiped}"}
    _ask([node], "sqlgate_db.open_port", timeout=timeout)
    follow = cluster.follow_kwargs(cluster.primary, mine.get("flavour", "mariadb"))
    answer = _ask([node], "sqlgate_db.follow", kwarg=follow, timeout=timeout + 10).get(node)
    if not isinstance(answer, dict):
        return {"result": "failed", "why": f"follow: {answer}"}
    quarantined = [name for name in cluster.quarantined if name != node]
    cluster.write_pillar(cluster.primary, cluster.epoch, cluster.fork_gtid_pos, quarantined,
                         [name for name in cluster.fenced if name != node])
    _ask(sorted(cluster.hosts), "saltutil.refresh_pillar", kwarg={"wait": True}, timeout=20)
    _record({"kind": "rebuild", "node": node, "primary": cluster.primary,
             "detected": time.time(), "result": "rebuilt"})
    return {"result": "rebuilt", "node": node, "follows": cluster.primary}


# --- status ---------------------------------------------------------------------------------

def status():
    """The current primary and epoch, the quarantined nodes, the last run's timeline and the
    recent alerts, for ``bootstrap.py status``.

    CLI Example::

        salt-run sqlgate_failover.status --out=json
    """
    cluster = Cluster()
    history = _history()
    failovers = [run for run in history["runs"] if run.get("kind") in ("failover",
                                                                        "switchover")]
    return {"primary": cluster.primary, "epoch": cluster.epoch,
            "quarantined": cluster.quarantined, "fenced": cluster.fenced,
            "last": failovers[-1] if failovers else None,
            "promotions": [{key: run.get(key) for key in ("epoch", "new_primary", "detected",
                                                          "writable", "kind", "automatic")}
                           for run in failovers if run.get("result") == "promoted"][-10:],
            "rejoins": [run for run in history["runs"] if run.get("kind") == "rejoin"][-3:],
            "alerts": history["alerts"][-5:]}
