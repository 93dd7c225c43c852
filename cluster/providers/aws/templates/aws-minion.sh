#!/bin/bash
# First boot of a minion: its Salt keys, the master's public key and the minion config were
# written by cloud-init before this runs, so installing Salt is all that is left: the minion
# starts, the master already knows its key, and the orchestration picks it up.
set -euo pipefail
. "${SQLGATE_ENV:-/etc/sqlgate/bootstrap.env}"
. "${SQLGATE_COMMON:-/usr/local/lib/sqlgate/common.sh}"

# The master installs Salt at the same time as we do; start the minion once it listens, so the
# first authentication does not race it (systemd restarts the minion if it gives up anyway).
wait_for_master() {
    local deadline=$((SECONDS + MASTER_WAIT_SECONDS))
    until timeout 5 bash -c "exec 3<>/dev/tcp/$MASTER_ADDRESS/$MASTER_PORT" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "the master $MASTER_ADDRESS:$MASTER_PORT did not answer in ${MASTER_WAIT_SECONDS}s"
            return 1
        fi
        sleep "${MASTER_POLL_SECONDS:-10}"
    done
}

main() {
    install_salt salt-minion
    wait_for_master
    systemctl enable salt-minion
    systemctl restart salt-minion
    first_boot_done
    log "salt-minion $MINION_ID started, master $MASTER_ADDRESS"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi
