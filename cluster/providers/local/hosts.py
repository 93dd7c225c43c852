"""Namespace "hosts" on one machine: the local provider's stand-in for VMs.

A host is a network namespace (``ip netns``) with a veth on the cluster's bridge, plus a
persistent mount and UTS namespace (bind-mounted files under ``/run/sqlgate/<cluster>``) in
which it has its own hostname and private directories: ``/etc`` is an overlay over the
machine's (so packages installed on the machine are the "image", and what Salt writes there,
users included, stays in the host), and the data, log, cache and runtime directories are
bind mounts of directories kept under the cluster's state directory. Everything a host runs is
started inside all three namespaces, so ``ip netns pids`` lists all of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import shlex
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cluster.errors import ClusterError

NETNS_DIR = Path("/run/netns")
RUNTIME_ROOT = Path("/run/sqlgate")
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Private directories of every host: mount point -> name of its directory in the state dir.
PRIVATE_DIRS: dict[str, str] = {
    "/var/lib/mysql": "var-lib-mysql",
    "/var/lib/prometheus": "var-lib-prometheus",
    "/var/log": "var-log",
    "/var/cache/salt": "var-cache-salt",
    "/var/cache/sqlgate": "var-cache-sqlgate",
    "/opt/sqlgate": "opt-sqlgate",
    "/tmp": "tmp",
}


def run(args: list[str], *, check: bool = True, input_data: bytes | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command on the machine, capturing its output as text."""
    result = subprocess.run(args, input=input_data, capture_output=True, timeout=timeout,
                            check=False)
    completed = subprocess.CompletedProcess(result.args, result.returncode,
                                            result.stdout.decode(errors="replace"),
                                            result.stderr.decode(errors="replace"))
    if check and completed.returncode != 0:
        raise ClusterError(f"{shlex.join(args)} failed ({completed.returncode}): "
                        f"{completed.stderr.strip() or completed.stdout.strip()}")
    return completed


def short_name(prefix: str, cluster: str, suffix: str = "") -> str:
    """An interface name (at most 15 characters) unique to the cluster."""
    digest = hashlib.sha1(cluster.encode()).hexdigest()[:6]
    name = f"{prefix}{digest}{suffix}"
    if len(name) > 15:
        raise ValueError(f"interface name {name} is too long")
    return name


def link_prefix(cluster: str) -> str:
    """What the names of all the cluster's interfaces (bridge, veths) start with."""
    return short_name("sg", cluster)


def links_named(prefix: str) -> dict[str, str]:
    """The machine's interfaces whose names start with ``prefix``, with their kind (``veth``,
    ``bridge``...; ``link`` when the kernel names none): what a cluster may have left."""
    listed = json.loads(run(["ip", "-j", "-d", "link", "show"]).stdout or "[]")
    return {link["ifname"]: link.get("linkinfo", {}).get("info_kind", "link")
            for link in listed if link.get("ifname", "").startswith(prefix)}


def link_exists(name: str) -> bool:
    return run(["ip", "link", "show", name], check=False).returncode == 0


def delete_link(name: str) -> bool:
    """Delete the interface ``name`` if it exists; True if it did. Deleting either end of a
    veth pair deletes both, wherever the other end is."""
    if not link_exists(name):
        return False
    result = run(["ip", "link", "delete", name], check=False)
    if result.returncode != 0 and link_exists(name):
        raise ClusterError(f"cannot delete the interface {name}: {result.stderr.strip()}")
    return True


@dataclass(frozen=True)
class NamespaceHost:
    """One host of the local cluster and where its namespaces and files live."""

    cluster: str
    name: str
    role: str
    address: str
    prefix_len: int
    state_dir: Path

    @property
    def namespace(self) -> str:
        return f"{self.cluster}-{self.name}"

    @property
    def runtime_dir(self) -> Path:
        return RUNTIME_ROOT / self.cluster

    @property
    def mount_ns(self) -> Path:
        return self.runtime_dir / f"{self.name}.mnt"

    @property
    def uts_ns(self) -> Path:
        return self.runtime_dir / f"{self.name}.uts"

    @property
    def files_dir(self) -> Path:
        return self.state_dir / "hosts" / self.name

    @property
    def veth(self) -> str:
        """The machine's end of the host's veth pair, on the bridge: named after the host's
        place in the subnet, which never changes while it exists (hosts added later get free
        addresses), so neither does the name."""
        interface = ipaddress.IPv4Interface(f"{self.address}/{self.prefix_len}")
        offset = int(interface.ip) - int(interface.network.network_address)
        return short_name("sg", self.cluster, f"h{offset}")

    @property
    def veth_peer(self) -> str:
        """The host's end until it moves into the namespace (and becomes ``eth0``): only a
        creation that failed half-way leaves it on the machine under this name."""
        return f"{self.veth}p"

    # --- creation --------------------------------------------------------------------------

    def network_exists(self) -> bool:
        return (NETNS_DIR / self.namespace).exists()

    def network_complete(self) -> bool:
        """The namespace exists and holds its end of the veth (a failed creation may leave a
        namespace without it, and the machine may hold a stale veth of the same name whose
        other end is in no namespace of ours)."""
        return self.network_exists() and run(["ip", "-n", self.namespace, "link", "show",
                                              "eth0"], check=False).returncode == 0

    def create_network(self, bridge: str) -> list[str]:
        """The namespace (kept if a failed attempt made it), its veth on the bridge and its
        address; no route off the subnet. A veth of the host's names left on the machine (by a
        removal that only deleted the namespace, or a failed attempt) is deleted first, so that
        ``ip link add`` never meets it; the names deleted are returned."""
        if not self.network_exists():
            run(["ip", "netns", "add", self.namespace])
        deleted = self.delete_veth()
        run(["ip", "link", "add", self.veth, "type", "veth", "peer", "name", self.veth_peer])
        run(["ip", "link", "set", self.veth_peer, "netns", self.namespace])
        run(["ip", "link", "set", self.veth, "master", bridge, "up"])
        inside = ["ip", "-n", self.namespace]
        run([*inside, "link", "set", self.veth_peer, "name", "eth0"])
        run([*inside, "addr", "add", f"{self.address}/{self.prefix_len}", "dev", "eth0"])
        run([*inside, "link", "set", "eth0", "up"])
        run([*inside, "link", "set", "lo", "up"])
        return deleted

    def system_exists(self) -> bool:
        return self.mount_ns.exists() and _is_mount_point(self.mount_ns)

    def create_system(self, keep_visible: Sequence[Path] = ()) -> None:
        """The persistent mount and UTS namespaces: hostname, overlay ``/etc``, private dirs."""
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        for path in (self.mount_ns, self.uts_ns):
            path.touch()
        etc_upper, etc_work = self.files_dir / "etc-upper", self.files_dir / "etc-work"
        for directory in (etc_upper, etc_work, *(self.files_dir / d
                                                  for d in PRIVATE_DIRS.values())):
            directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.files_dir / "tmp", 0o1777)
        steps = [
            f"hostname {shlex.quote(self.name)}",
            "mount -t overlay overlay -o "
            + shlex.quote(f"lowerdir=/etc,upperdir={etc_upper},workdir={etc_work}") + " /etc",
            "mount -t tmpfs -o mode=0755 tmpfs /run",
        ]
        # /tmp last: the sources of the other mounts may live under the machine's /tmp.
        for mount_point, directory in sorted(PRIVATE_DIRS.items(), key=lambda i: i[0] == "/tmp"):
            if mount_point == "/tmp":
                steps.extend(self._private_tmp_steps(keep_visible))
                continue
            source = shlex.quote(str(self.files_dir / directory))
            steps.append(f"mkdir -p {mount_point} && mount --bind {source} {mount_point}")
        run(["nsenter", f"--net={NETNS_DIR / self.namespace}", "unshare",
             f"--mount={self.mount_ns}", f"--uts={self.uts_ns}", "--propagation", "private",
             "sh", "-ec", " && ".join(steps)])

    def _private_tmp_steps(self, keep_visible: Sequence[Path]) -> list[str]:
        """Mount the host's own /tmp, keeping the machine's paths the host reads (the checkout,
        the virtualenv, the cluster's state) where they were when they live under /tmp."""
        under_tmp = [path.resolve() for path in keep_visible
                     if path.resolve().is_relative_to("/tmp")]
        stage = "/run/.sqlgate-keep"
        steps = [f"mkdir -p {stage}"] if under_tmp else []
        for number, path in enumerate(under_tmp):
            steps.append(f"mkdir -p {stage}/{number} && "
                         f"mount --bind {shlex.quote(str(path))} {stage}/{number}")
        steps.append(f"mount --bind {shlex.quote(str(self.files_dir / PRIVATE_DIRS['/tmp']))}"
                     " /tmp")
        for number, path in enumerate(under_tmp):
            target = shlex.quote(str(path))
            steps.append(f"mkdir -p {target} && mount --bind {stage}/{number} {target}")
        return steps

    def share(self, binds: dict[str, Path], reachable: Sequence[Path] = ()) -> None:
        """For the host's unprivileged users, in this host only (once per host): mount each
        ``binds`` source directory at its target path, and make each ``reachable`` path
        reachable: an ancestor that others may not enter (``/root`` holding the interpreter,
        say) is replaced by an empty tmpfs into which the reachable paths are bound back, so
        nothing else of the machine's directory shows. The machine's own modes stay as they
        are."""
        stage = "/run/.sqlgate-stage"
        steps = ["[ ! -e /run/.sqlgate-shared ] || exit 0"]
        for target, source in binds.items():
            steps.append(f"mkdir -p {shlex.quote(target)} && "
                         f"mount --bind {shlex.quote(str(source))} {shlex.quote(target)}")
        for blocked, paths in sorted(blocked_ancestors(reachable).items()):
            staged = [f"{stage}/{len(steps)}-{number}" for number in range(len(paths))]
            for path, place in zip(paths, staged, strict=True):
                steps.append(f"mkdir -p {place} && mount --bind {shlex.quote(str(path))} {place}")
            steps.append(f"mount -t tmpfs -o mode=0755 tmpfs {shlex.quote(str(blocked))}")
            for path, place in zip(paths, staged, strict=True):
                steps.append(f"mkdir -p {shlex.quote(str(path))} && "
                             f"mount --bind {place} {shlex.quote(str(path))} && umount {place}")
        steps.append("touch /run/.sqlgate-shared")
        self.run(["sh", "-ec", "\n".join(steps)])

    # --- use -------------------------------------------------------------------------------

    def enter(self, args: list[str], env: dict[str, str] | None = None) -> list[str]:
        """``args`` as a command line that runs inside this host, with a clean environment."""
        environment = {"PATH": HOST_PATH, "HOME": "/root", "LANG": "C.UTF-8", **(env or {})}
        return ["nsenter", f"--net={NETNS_DIR / self.namespace}", f"--mount={self.mount_ns}",
                f"--uts={self.uts_ns}", "--", "env", "-i",
                *(f"{k}={v}" for k, v in environment.items()), *args]

    def run(self, args: list[str], *, check: bool = True, input_data: bytes | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run(self.enter(args), check=check, input_data=input_data, timeout=timeout)

    def start_daemon(self, args: list[str]) -> None:
        """Start a self-daemonizing program in the host, detached from our terminal."""
        subprocess.run(self.enter(args), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, start_new_session=True, check=True,
                       timeout=60)

    def write_file(self, path: str, content: str, mode: int = 0o644) -> None:
        """Write a file inside the host (through its own mounts, never the machine's)."""
        script = 'umask 077; mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"'
        self.run(["sh", "-c", script, "sh", path, f"{mode:o}"], input_data=content.encode())

    def pids(self) -> list[int]:
        if not self.network_exists():
            return []
        listed = run(["ip", "netns", "pids", self.namespace], check=False).stdout.split()
        return [int(pid) for pid in listed if pid.isdigit()]

    def command_lines(self) -> list[str]:
        lines = []
        for pid in self.pids():
            try:
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            lines.append(raw.replace(b"\0", b" ").decode(errors="replace").strip())
        return lines

    # --- removal ---------------------------------------------------------------------------

    def remove(self) -> None:
        """Namespaces and the veth, once no process is left."""
        stop_processes([self])
        for path in (self.mount_ns, self.uts_ns):
            if _is_mount_point(path):
                run(["umount", str(path)])
            path.unlink(missing_ok=True)
        self.remove_network()

    def remove_network(self) -> None:
        """The veth, then the network namespace's name.

        The veth is deleted explicitly because it does not go with the name: ``ip netns
        delete`` only unmounts the name, and the kernel frees the namespace, and its end of
        the pair with it, when the last reference goes. A TCP socket that its process closed
        while the link was cut is such a reference: the kernel keeps retransmitting its
        unacknowledged data for minutes, and until then the machine's end stays, under the
        name the next ``up`` wants. Deleting that end deletes both at once."""
        self.delete_veth()
        if self.network_exists():
            run(["ip", "netns", "delete", self.namespace])

    def delete_veth(self) -> list[str]:
        """Delete the host's veth (and a peer a failed creation left on the machine); the
        names that existed."""
        return [name for name in (self.veth, self.veth_peer) if delete_link(name)]


def stop_processes(hosts: list[NamespaceHost], grace_s: float = 10) -> None:
    """SIGTERM every process of the hosts at once, SIGKILL what is left after ``grace_s``.

    Only the pids ``ip netns pids`` lists for these hosts are signalled, never by name.
    """
    deadline = time.monotonic() + grace_s
    while pids := [pid for host in hosts for pid in host.pids()]:
        now = time.monotonic()
        if now >= deadline + 10:
            raise ClusterError(f"processes {pids} survive SIGKILL")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL if now >= deadline else signal.SIGTERM)
        time.sleep(0.2)


def closed_to_others(directory: Path) -> bool:
    """Others (not owner, not group) may not enter ``directory``."""
    return not os.stat(directory).st_mode & stat.S_IXOTH


def blocked_ancestors(paths: Sequence[Path], closed: Callable[[Path], bool] = closed_to_others,
                      ) -> dict[Path, list[Path]]:
    """``paths`` by their first ancestor (from ``/`` down) that is ``closed``; paths every
    user can already reach are left out."""
    blocked: dict[Path, list[Path]] = {}
    for path in dict.fromkeys(p.resolve() for p in paths):
        for ancestor in reversed(path.parents):
            if closed(ancestor):
                blocked.setdefault(ancestor, []).append(path)
                break
    return blocked


def _is_mount_point(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as mounts:
        return any(line.split()[4] == target for line in mounts)


def mount_points_under(directory: Path) -> list[str]:
    prefix = str(directory)
    with open("/proc/self/mountinfo") as mounts:
        points = [line.split()[4] for line in mounts]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def make_private_mount(directory: Path) -> None:
    """Bind ``directory`` on itself with private propagation, to hold namespace files."""
    directory.mkdir(parents=True, exist_ok=True)
    if not _is_mount_point(directory):
        run(["mount", "--bind", str(directory), str(directory)])
        run(["mount", "--make-private", str(directory)])


def release_private_mount(directory: Path) -> None:
    if _is_mount_point(directory):
        run(["umount", str(directory)])
    if directory.exists():
        directory.rmdir()
