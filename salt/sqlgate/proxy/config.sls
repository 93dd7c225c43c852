{#- The Proxy's settings: the database nodes by their private addresses (from the Salt mine), the
    `app` credentials, and unprivileged ICMP for the ping strategy (a namespaced sysctl that lets
    the service's group, and only it, open datagram ICMP sockets; no root, no CAP_NET_RAW). The
    group is made in the same run, so its id is read when the state runs (a slot), not when the
    file is rendered. Values in the env file are shell-quoted, as services.config reads them. #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate, roles, address_of with context %}
{%- set app = sqlgate.app %}
{%- set port = sqlgate.ports.mysql %}
{%- set primary = roles.primary[0] %}

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
        PROXY_PORT={{ sqlgate.ports.proxy }}
        PROXY_PRIMARY={{ primary }}={{ address_of(primary) }}:{{ port }}
        PROXY_REPLICAS={% for name in roles.replica %}{{ name }}={{ address_of(name) }}:{{ port }}{{ '' if loop.last else ',' }}{% endfor %}
        PROXY_DB_USER=app
        PROXY_DB_PASSWORD={{ sqlgate.secrets.app_password | quote }}
        PROXY_PING_PRIVILEGED=false
{%- for name, value in sqlgate.proxy.settings | dictsort %}
        PROXY_{{ name | upper }}={{ value | string | quote }}
{%- endfor %}
    - require:
      - sls: sqlgate.app.user
