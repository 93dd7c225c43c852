{#- The Gatekeeper's settings: HTTPS on the public port with the user's public certificate when
    the pillar has one (sqlgate:tls:gatekeeper_public), else the host's cluster certificate;
    plain HTTP on the redirect port, answered only with a redirect; the Proxy's private address
    (from the Salt mine), reached over mutual TLS with the host's certificate; and the API keys
    (hashes only) in a file only the service user reads, which the Gatekeeper reloads by itself
    when it changes (no restart: in-flight requests go on). Ports below 1024 without root: under
    systemd the unit grants CAP_NET_BIND_SERVICE; under supervisor the host's (namespaced)
    unprivileged port floor is lowered to the lower of the two ports. With a monitor host,
    the metrics on their own port, over HTTPS with the host's cluster certificate, for clients
    with a certificate of the cluster CA (the monitor's); without, none. `workers` processes
    (0: one per core). #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate, roles, address_of with context %}
{%- from tpldir.split('/')[0] ~ '/tls.jinja' import tls with context %}
{%- set app = sqlgate.app %}
{%- set public = sqlgate.tls.get('gatekeeper_public') or {} %}
{%- set served = {'cert': sqlgate.tls.dir ~ '/public.crt', 'key': sqlgate.tls.dir ~ '/public.key'}
                 if public else {'cert': tls.cert, 'key': tls.key} %}

include:
  - sqlgate.app
{%- if sqlgate.service_manager != 'systemd' %}

{#- Unprivileged processes may bind the Gatekeeper's ports (supervisor hosts). #}
sqlgate-gatekeeper-low-ports:
  sysctl.present:
    - name: net.ipv4.ip_unprivileged_port_start
    - value: {{ [sqlgate.ports.gatekeeper, sqlgate.ports.redirect] | min }}
{%- endif %}
{%- if public %}

{#- The certificate the user brought for the public endpoint (full chain), and its key. #}
{%-   for name, mode in (('cert', '0444'), ('key', '0400')) %}

sqlgate-gatekeeper-public-{{ name }}:
  file.managed:
    - name: {{ served[name] }}
    - user: {{ app.user }}
    - group: {{ app.user }}
    - mode: '{{ mode }}'
    - show_changes: False
    - contents: {{ public[name] | json }}
    - require:
      - file: sqlgate-tls-directory
{%-   endfor %}
{%- endif %}

{#- The API keys: name, scope, sha256 of the secret, rate limit. Staged beside the file the
    Gatekeeper reads, then copied with its owner and mode and renamed over it: the Gatekeeper
    never sees half a file, nor a new one it may not read yet (file.managed sets those after
    its own rename). #}
{%- set keys_file = app.config_dir ~ '/gatekeeper-keys.json' %}
{%- set staged = app.config_dir ~ '/.gatekeeper-keys.json.staged' %}
sqlgate-gatekeeper-keys-staged:
  file.managed:
    - name: {{ staged }}
    - user: {{ app.user }}
    - group: {{ app.user }}
    - mode: '0400'
    - contents: {{ {'keys': sqlgate.get('api_keys', [])} | json | json }}
    - require:
      - sls: sqlgate.app.user

sqlgate-gatekeeper-keys:
  cmd.run:
    - name: cp -p {{ staged }} {{ keys_file }}.new && mv -f {{ keys_file }}.new {{ keys_file }}
    - unless: cmp -s {{ staged }} {{ keys_file }}
    - require:
      - file: sqlgate-gatekeeper-keys-staged

{#- No API key in clear on the host: a single-key file is removed. #}
sqlgate-gatekeeper-key-absent:
  file.absent:
    - name: {{ app.config_dir }}/gatekeeper.key

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
        GATEKEEPER_REDIRECT_PORT={{ sqlgate.ports.redirect }}
        GATEKEEPER_TLS_CERT={{ served.cert }}
        GATEKEEPER_TLS_KEY={{ served.key }}
        GATEKEEPER_KEYS_FILE={{ app.config_dir }}/gatekeeper-keys.json
        GATEKEEPER_PROXY_URL=https://{{ address_of(roles.proxy[0]) }}:{{ sqlgate.ports.proxy }}
        GATEKEEPER_PROXY_CA={{ tls.ca }}
        GATEKEEPER_PROXY_CLIENT_CERT={{ tls.cert }}
        GATEKEEPER_PROXY_CLIENT_KEY={{ tls.key }}
        GATEKEEPER_WORKERS={{ sqlgate.gatekeeper.workers | int }}
        GATEKEEPER_METRICS_PORT={{ sqlgate.ports.gatekeeper_metrics if roles.get('monitor') else 0 }}
        GATEKEEPER_METRICS_CLIENT_CA={{ tls.ca }}
    - require:
      - sls: sqlgate.app.user
