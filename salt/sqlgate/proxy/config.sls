{#- The Proxy's settings: the database nodes by their private addresses (from the Salt mine), the
    `app` credentials, and unprivileged ICMP for the ping strategy (a namespaced sysctl that lets
    the service's group open datagram ICMP sockets; no root, no CAP_NET_RAW). #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate, roles, address_of with context %}
{%- set app = sqlgate.app %}
{%- set port = sqlgate.ports.mysql %}
{%- set primary = roles.manager[0] %}

include:
  - sqlgate.app

unprivileged processes may ping:
  sysctl.present:
    - name: net.ipv4.ping_group_range
    - value: 0 2147483647

proxy settings are written:
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
        PROXY_REPLICAS={% for name in roles.worker %}{{ name }}={{ address_of(name) }}:{{ port }}{{ '' if loop.last else ',' }}{% endfor %}
        PROXY_DB_USER=app
        PROXY_DB_PASSWORD={{ sqlgate.secrets.app_password }}
        PROXY_PING_PRIVILEGED=false
    - require:
      - sls: sqlgate.app.user
