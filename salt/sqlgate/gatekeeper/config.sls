{#- The Gatekeeper's settings: the Proxy's private address (from the Salt mine) and the API key in
    a file only the service user reads. Port 80 without root: under systemd the unit grants
    CAP_NET_BIND_SERVICE; under supervisor the host's (namespaced) unprivileged port floor is
    lowered to the Gatekeeper's port. #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate, roles, address_of with context %}
{%- set app = sqlgate.app %}

include:
  - sqlgate.app
{%- if sqlgate.service_manager != 'systemd' %}

{#- Unprivileged processes may bind the Gatekeeper's port (supervisor hosts). #}
sqlgate-gatekeeper-low-ports:
  sysctl.present:
    - name: net.ipv4.ip_unprivileged_port_start
    - value: {{ sqlgate.ports.gatekeeper }}
{%- endif %}

{#- The API key, in a file only the service user reads. #}
sqlgate-gatekeeper-key:
  file.managed:
    - name: {{ app.config_dir }}/gatekeeper.key
    - user: {{ app.user }}
    - group: {{ app.user }}
    - mode: '0400'
    - show_changes: False
    - contents: {{ sqlgate.secrets.api_key | json }}
    - require:
      - sls: sqlgate.app.user

sqlgate-gatekeeper-env:
  file.managed:
    - name: {{ app.config_dir }}/gatekeeper.env
    - user: root
    - group: {{ app.user }}
    - mode: '0640'
    - contents: |
        # Managed by Salt (sqlgate formula).
        GATEKEEPER_LISTEN_ADDRESS=0.0.0.0
        GATEKEEPER_PORT={{ sqlgate.ports.gatekeeper }}
        GATEKEEPER_PROXY_URL=http://{{ address_of(roles.proxy[0]) }}:{{ sqlgate.ports.proxy }}
        GATEKEEPER_API_KEY_FILE={{ app.config_dir }}/gatekeeper.key
    - require:
      - sls: sqlgate.app.user
