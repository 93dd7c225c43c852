{#- The Proxy's settings: HTTPS only, for clients with a certificate of the cluster CA (the
    Gatekeeper); the database nodes by their private addresses (from the Salt mine), reached
    over TLS checked against the same CA, as one user per scope and the health monitor's user;
    and unprivileged ICMP for the ping strategy (a namespaced sysctl that lets the service's
    group, and only it, open datagram ICMP sockets; no root, no CAP_NET_RAW). The group is made
    in the same run, so its id is read when the state runs (a slot), not when the file is
    rendered. Values in the env file are shell-quoted, as services.config reads them. With a
    monitor host, the metrics on their own port (HTTPS, for clients with a certificate of the
    cluster CA, as the service's port); without, none. `workers` processes (0: one per
    core). #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate, roles, address_of with context %}
{%- from tpldir.split('/')[0] ~ '/tls.jinja' import tls with context %}
{%- set app = sqlgate.app %}
{%- set db = sqlgate.db %}
{%- set port = sqlgate.ports.mysql %}
{%- set primary = roles.primary[0] %}
{%- set secrets = sqlgate.secrets %}

include:
  - sqlgate.app

{#- The service's group, and only it, may open datagram ICMP sockets. #}
sqlgate-proxy-ping-group:
  sysctl.present:
    - name: net.ipv4.ping_group_range
    - value: '__slot__:salt:cmd.shell("echo $(id -g {{ app.user }}) $(id -g {{ app.user }})")'
    - require:
      - sls: sqlgate.app.user

sqlgate-proxy-env:
  file.managed:
    - name: {{ app.config_dir }}/proxy.env
    - user: root
    - group: {{ app.user }}
    - mode: '0640'
    - show_changes: False
    - contents: |
        # Managed by Salt (sqlgate formula).
        PROXY_LISTEN_ADDRESS=0.0.0.0
        PROXY_INSTANCE_NAME={{ grains.id }}
        PROXY_PORT={{ sqlgate.ports.proxy }}
        PROXY_TLS_CERT={{ tls.cert }}
        PROXY_TLS_KEY={{ tls.key }}
        PROXY_TLS_CLIENT_CA={{ tls.ca }}
        PROXY_PRIMARY={{ primary }}={{ address_of(primary) }}:{{ port }}
        PROXY_REPLICAS={% for name in roles.replica %}{{ name }}={{ address_of(name) }}:{{ port }}{{ '' if loop.last else ',' }}{% endfor %}
        PROXY_DB_TLS_CA={{ tls.ca }}
        PROXY_DB_USER={{ db.app_users.read.user }}
        PROXY_DB_PASSWORD={{ secrets.app_read_password | quote }}
{%- for scope, spec in db.app_users | dictsort %}
        PROXY_DB_{{ scope | upper }}_USER={{ spec.user }}
        PROXY_DB_{{ scope | upper }}_PASSWORD={{ secrets['app_' ~ scope ~ '_password'] | quote }}
{%- endfor %}
        PROXY_DB_MONITOR_USER={{ db.monitor.user }}
        PROXY_DB_MONITOR_PASSWORD={{ secrets.monitor_password | quote }}
        PROXY_PING_PRIVILEGED=false
        PROXY_WORKERS={{ sqlgate.proxy.workers | int }}
        PROXY_METRICS_PORT={{ sqlgate.ports.proxy_metrics if roles.get('monitor') else 0 }}
{%- for name, value in sqlgate.proxy.settings | dictsort %}
        PROXY_{{ name | upper }}={{ value | string | quote }}
{%- endfor %}
    - require:
      - sls: sqlgate.app.user
