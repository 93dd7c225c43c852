#!/bin/bash
# First boot of the Salt master: install Salt, unpack the bundle (Salt tree, pillar, project code,
# master config and the pre-generated keys), wait for every expected minion, then run the
# orchestration. Its last line says how it went; bootstrap.py waits for the Gatekeeper's /health.
# A later `bootstrap.py up` sends a new bundle over SSH and unpacks it with `unpack_bundle`.
set -euo pipefail
. "${SQLGATE_ENV:-/etc/sqlgate/bootstrap.env}"
. "${SQLGATE_COMMON:-/usr/local/lib/sqlgate/common.sh}"

# Tests point this at a scratch directory.
ROOT=${SQLGATE_ROOT:-}
PILLAR_DIR=$ROOT/srv/sqlgate/pillar

fetch_bundle() {
    local bundle=/root/sqlgate-bundle.tar.gz
    curl -fsSL --retry 10 --retry-connrefused "$BUNDLE_URL" -o "$bundle"
    echo "$BUNDLE_SHA256  $bundle" | sha256sum -c --quiet -
    # The secrets inside need not stay in S3 once here (down deletes the bucket in any case).
    curl -fsS -X DELETE "$BUNDLE_DELETE_URL" >/dev/null \
        || log "could not delete the bundle from S3; 'down' will"
    unpack_bundle "$bundle"
    rm -f "$bundle"
}

# Only srv/sqlgate and etc/salt are in the bundle: the tree it had before goes (a file the
# project dropped must not linger), then the master's files get their owner. The failover
# runner's pillar file (the current primary and epoch) is the master's own: it stays.
unpack_bundle() {
    local failover=$PILLAR_DIR/sqlgate/failover.sls kept=""
    if [ -s "$failover" ]; then kept=$(mktemp) && cp -p "$failover" "$kept"; fi
    rm -rf "$ROOT/srv/sqlgate"
    tar -xzf "$1" -C "$ROOT/" --no-same-owner
    if [ -n "$kept" ]; then mv "$kept" "$failover"; fi
    own_master_files
}

# The onedir master runs as the "salt" user the package made (as root without one): its keys
# and the pillar, which holds every secret of the cluster, are that user's and nobody else's.
# tar leaves them root's, which the master could not read.
own_master_files() {
    local owner=root
    if id salt >/dev/null 2>&1; then owner=salt; fi
    chown -R "$owner:$(id -gn "$owner")" "$ROOT/etc/salt/pki/master" "$PILLAR_DIR"
    find "$PILLAR_DIR" -type d -exec chmod 0700 {} +
    find "$PILLAR_DIR" -type f -exec chmod 0600 {} +
}

# A later `bootstrap.py up` or `keys --apply`, over SSH with the bundle on stdin: the new tree
# and pillar; the master restarts only when its configuration or keys changed; every minion
# must answer (one launched by this `up` may still be booting) before Salt runs anything.
update_from_bundle() {
    local before after
    before=$(master_state)
    unpack_bundle "$1"
    after=$(master_state)
    if [ "$before" != "$after" ]; then
        log "the master's configuration changed: restarting it"
        systemctl restart salt-master
    fi
    wait_for_minions
}

# `bootstrap.py scale`, over SSH with the bundle on stdin: the minions the master has from now on
# (this update and every later one waits for them: a new one may still be booting), then the
# bundle that configures them.
scale_to() {
    set_minions "$1"
    update_from_bundle "$2"
}

set_minions() {
    local env=${SQLGATE_ENV:-/etc/sqlgate/bootstrap.env}
    sed -i "s/^MINION_IDS=.*/MINION_IDS='$1'/" "$env"
    MINION_IDS=$1
}

# `bootstrap.py scale`, once the hosts it removes are stopped: their keys are no longer
# accepted, and later updates no longer wait for them.
forget_minions() {
    local id kept=() gone=" $* "
    for id in ${MINION_IDS//,/ }; do
        case "$gone" in
            *" $id "*) salt-key --delete="$id" --yes >/dev/null \
                           || log "could not delete the key of $id" ;;
            *) kept+=("$id") ;;
        esac
    done
    set_minions "$(IFS=,; echo "${kept[*]}")"
}

master_state() {
    { cat "$ROOT/etc/salt/master.d/sqlgate.conf" "$ROOT/etc/salt/pki/master/master.pem" \
        2>/dev/null || true; } | sha256sum
}

wait_for_minions() {
    local deadline=$((SECONDS + MINION_WAIT_SECONDS)) answered=0 expected
    expected=$(echo "$MINION_IDS" | tr ',' '\n' | grep -c .)
    while [ "$SECONDS" -lt "$deadline" ]; do
        answered=$(salt -L "$MINION_IDS" test.ping --out=txt --timeout=15 2>/dev/null \
            | grep -c ': True' || true)
        log "minions answering: $answered/$expected"
        if [ "$answered" -eq "$expected" ]; then return 0; fi
        sleep "${MINION_POLL_SECONDS:-15}"
    done
    log "timed out waiting for the minions ($answered/$expected answered)"
    return 1
}

main() {
    install_salt salt-master
    systemctl stop salt-master
    fetch_bundle
    systemctl enable --now salt-master
    wait_for_minions
    salt -L "$MINION_IDS" saltutil.sync_all --out=quiet || log "sync_all reported a problem"
    mkdir -p /var/lib/sqlgate
    if salt-run state.orchestrate orch --out=highstate --state-output=mixed \
            > /var/log/sqlgate-orchestrate.log 2>&1; then
        touch /var/lib/sqlgate/orchestration.ok
        first_boot_done
        log "orchestration succeeded"
    else
        touch /var/lib/sqlgate/orchestration.failed
        tail -n 40 /var/log/sqlgate-orchestrate.log
        log "orchestration FAILED (see /var/log/sqlgate-orchestrate.log)"
        return 1
    fi
}

# Run by cloud-init; sourced by the tests to exercise one function at a time.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi
