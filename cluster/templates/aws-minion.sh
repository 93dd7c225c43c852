#!/bin/bash
# First boot of a minion: its Salt keys, the master's public key and the minion config were
# written by cloud-init before this runs, so installing Salt is all that is left: the minion
# starts, the master already knows its key, and the orchestration picks it up.
set -euo pipefail
. /etc/sqlgate/bootstrap.env
. /usr/local/lib/sqlgate/common.sh

install_salt salt-minion
systemctl enable salt-minion
systemctl restart salt-minion
log "salt-minion $MINION_ID started, master $MASTER_ADDRESS"
