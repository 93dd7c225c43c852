#!/bin/bash
# First boot of the Salt master: install Salt, unpack the bundle (Salt tree, pillar, project code,
# master config and the pre-generated keys), wait for every expected minion, then run the
# orchestration. Its last line says how it went; bootstrap.py waits for the Gatekeeper's /health.
set -euo pipefail
. "${SQLGATE_ENV:-/etc/sqlgate/bootstrap.env}"
. "${SQLGATE_COMMON:-/usr/local/lib/sqlgate/common.sh}"

fetch_bundle() {
    local bundle=/root/sqlgate-bundle.tar.gz
    curl -fsSL --retry 10 --retry-connrefused "$BUNDLE_URL" -o "$bundle"
    echo "$BUNDLE_SHA256  $bundle" | sha256sum -c --quiet -
    # The secrets inside need not stay in S3 once here (down deletes the bucket in any case).
    curl -fsS -X DELETE "$BUNDLE_DELETE_URL" >/dev/null \
        || log "could not delete the bundle from S3; 'down' will"
    # Only srv/sqlgate and etc/salt are in it; keys and pillar arrive with mode 0600/0700.
    tar -xzf "$bundle" -C / --no-same-owner
    rm -f "$bundle"
}

own_master_pki() {
    # The onedir master runs as the "salt" user when the package made one.
    local owner=root
    if id salt >/dev/null 2>&1; then owner=salt; fi
    chown -R "$owner:$owner" /etc/salt/pki/master
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
    own_master_pki
    systemctl enable --now salt-master
    wait_for_minions
    salt -L "$MINION_IDS" saltutil.sync_all --out=quiet || log "sync_all reported a problem"
    mkdir -p /var/lib/sqlgate
    if salt-run state.orchestrate orch --out=highstate --state-output=mixed \
            > /var/log/sqlgate-orchestrate.log 2>&1; then
        touch /var/lib/sqlgate/orchestration.ok
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
