# Shared by the Salt master's and the minions' first-boot scripts (sourced, not run).
# Settings come from /etc/sqlgate/bootstrap.env, written by cloud-init from the user data.

log() { echo "sqlgate-bootstrap: $*"; }  # ends up in /var/log/cloud-init-output.log

# Install the pinned Salt from the official Salt Project packages (onedir .debs from
# packages.broadcom.com), pinned so that an unattended upgrade cannot move it, then the
# Salt extensions the states need into Salt's own Python.
install_salt() {
    local keyring=/etc/apt/keyrings/salt-archive-keyring.pgp
    mkdir -p -m 755 /etc/apt/keyrings
    curl -fsSL --retry 10 --retry-connrefused "$SALT_REPO_KEY_URL" -o /tmp/salt-repo-key
    if grep -q -- '-----BEGIN PGP' /tmp/salt-repo-key; then
        gpg --batch --yes --dearmor -o "$keyring" /tmp/salt-repo-key
    else
        install -m 0644 /tmp/salt-repo-key "$keyring"
    fi
    cat > /etc/apt/sources.list.d/salt.sources <<SOURCES
Types: deb
URIs: $SALT_REPO_URL
Suites: stable
Components: main
Signed-By: $keyring
SOURCES
    cat > /etc/apt/preferences.d/salt-pin-1001 <<PIN
Package: salt-*
Pin: version ${SALT_VERSION}*
Pin-Priority: 1001
PIN
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
    local installed
    installed=$(salt-call --local --version | awk '{print $2}')
    if [ "$installed" != "$SALT_VERSION" ]; then
        log "expected Salt $SALT_VERSION, got $installed"
        return 1
    fi
    # shellcheck disable=SC2086  # a space-separated list of pinned requirements
    salt-pip install -q $SALT_PIP_REQUIREMENTS
}

# Once configured, the instance never runs cloud-init again: bootstrap.py turns the metadata
# endpoint off after the first boot, and a cloud-init that found no metadata would take the next
# boot for a new instance's (new SSH host keys, the user data's files gone).
first_boot_done() {
    touch "${SQLGATE_ROOT:-}/etc/cloud/cloud-init.disabled"
}
