{#- The Gatekeepers' shared rate store on the monitor host: Redis from the distribution, bound
    to this host's private address on ports:ratestore, TLS only (its own copies of the host's
    cluster certificate and key, owned by Redis's user; client certificates of the cluster CA
    required: the Gatekeepers'), the default user off and one ACL user whose password
    (secrets:ratestore_password, which only the Gatekeepers' and this host's pillar carry)
    is written here only as its SHA-256, allowed the rate keys and the bucket script's
    commands. Nothing is saved to disk: the buckets are a second's worth of state, and a
    restarted store starts them full. Its service: the package's unit (systemd) or a
    supervisor program; it restarts with new settings or certificates. Ready: it answers a
    PING over TLS, with this host's certificate, by asking for a password (no password is
    given on a command line). #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate, address_of with context %}
{%- from tpldir.split('/')[0] ~ '/services.jinja' import managed_service with context %}
{%- set store = sqlgate.ratestore %}
{%- set port = sqlgate.ports.ratestore %}
{%- set password = sqlgate.secrets.get('ratestore_password') %}
{%- if not password %}
{{-   raise('no sqlgate:secrets:ratestore_password in the pillar of ' ~ grains.id) }}
{%- endif %}
{%- set files = {'ca': store.tls_dir ~ '/ca.crt', 'cert': store.tls_dir ~ '/server.crt',
                 'key': store.tls_dir ~ '/server.key'} %}
{%- set commands = store.acl_commands | map('regex_replace', '^', '+') | join(' ') %}

{%- if sqlgate.service_manager == 'supervisor' %}
include:
  - sqlgate.supervisor
{%- endif %}

sqlgate-ratestore-package:
  pkg.installed:
    - pkgs: {{ store.packages | json }}

sqlgate-ratestore-tls-directory:
  file.directory:
    - name: {{ store.tls_dir }}
    - user: root
    - group: {{ store.user }}
    - mode: '0750'
    - require:
      - pkg: sqlgate-ratestore-package
{%- for name, mode in (('ca', '0444'), ('cert', '0444'), ('key', '0400')) %}

sqlgate-ratestore-tls-{{ name }}:
  file.managed:
    - name: {{ files[name] }}
    - user: {{ store.user }}
    - group: {{ store.user }}
    - mode: '{{ mode }}'
    - show_changes: False
    - contents: {{ sqlgate.tls[name] | json }}
    - require:
      - file: sqlgate-ratestore-tls-directory
{%- endfor %}

sqlgate-ratestore-config:
  file.managed:
    - name: {{ store.config_file }}
    - user: {{ store.user }}
    - group: {{ store.user }}
    - mode: '0600'
    - show_changes: False
    - contents: |
        # Managed by Salt (sqlgate formula): the Gatekeepers' shared rate store.
        bind {{ address_of(grains.id) }}
        protected-mode yes
        port 0
        tls-port {{ port }}
        tls-cert-file {{ files.cert }}
        tls-key-file {{ files.key }}
        tls-ca-cert-file {{ files.ca }}
        tls-auth-clients yes
        tls-protocols "TLSv1.2 TLSv1.3"
        daemonize no
{%- if sqlgate.service_manager == 'systemd' %}
        pidfile /run/redis/redis-server.pid
{%- endif %}
        logfile ""
        dir /var/lib/redis
        save ""
        appendonly no
        maxmemory {{ store.maxmemory }}
        maxmemory-policy volatile-ttl
        user default off
        user {{ store.acl_user }} on #{{ salt['hashutil.digest'](password, 'sha256') }} resetkeys ~sqlgate:rate:* resetchannels -@all {{ commands }}
    - require:
      - pkg: sqlgate-ratestore-package

{{ managed_service(store.service, 'Redis (the Gatekeepers\' shared rate store)',
                   command=store.binary ~ ' ' ~ store.config_file, user=store.user,
                   packaged=True,
                   watch=[{'file': 'sqlgate-ratestore-config'},
                          {'file': 'sqlgate-ratestore-tls-ca'},
                          {'file': 'sqlgate-ratestore-tls-cert'},
                          {'file': 'sqlgate-ratestore-tls-key'}],
                   require=[{'pkg': 'sqlgate-ratestore-package'}],
                   ready='redis-cli --tls --cacert ' ~ files.ca ~ ' --cert ' ~ files.cert
                         ~ ' --key ' ~ files.key ~ ' -h ' ~ address_of(grains.id) ~ ' -p '
                         ~ port ~ ' PING 2>&1 | grep -q NOAUTH') }}
