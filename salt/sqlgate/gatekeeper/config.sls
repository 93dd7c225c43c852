{#- The Gatekeeper's settings: HTTPS on the public port with the user's public certificate when
    the pillar has one (sqlgate:tls:gatekeeper_public), else the host's cluster certificate;
    plain HTTP on the redirect port, answered only with a redirect; every Proxy by its instance
    name (its host's) and private address (from the Salt mine), reached over mutual TLS with
    the host's certificate, listed in a file of their own that the Gatekeeper re-reads (a Proxy
    added or removed restarts nothing); the balancer's address, the only one whose connections carry the
    client's address in a PROXY protocol header (with balancer:proxy_protocol); and the API keys
    (hashes only) in a file only the service user reads, which the Gatekeeper reloads by itself
    when it changes (no restart: in-flight requests go on). Ports below 1024 without root: under
    systemd the unit grants CAP_NET_BIND_SERVICE; under supervisor the host's (namespaced)
    unprivileged port floor is lowered to the lower of the two ports. With a monitor host,
    the metrics on their own port, over HTTPS with the host's cluster certificate, for clients
    with a certificate of the cluster CA (the monitor's); without, none. `workers` processes
    (0: one per core). With a monitor host, the keys' rate limits in its Redis (ratestore),
    shared by every Gatekeeper, over TLS with the host's certificate, the password in a file
    only the service's user reads (0400), and the number of Gatekeepers, whose share of a
    key's rate each grants while the store does not answer. #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate, roles, address_of with context %}
{%- from tpldir.split('/')[0] ~ '/tls.jinja' import tls with context %}
{%- set app = sqlgate.app %}
{#- Who may send a PROXY protocol header: the balancer hosts (with balancer:proxy_protocol),
    and gatekeeper:proxy_protocol_from (a balancer that is not a host, such as an NLB). #}
{%- set balancers = [] %}
{%- for name in roles.get('balancer', []) if sqlgate.balancer.proxy_protocol %}
{%-   do balancers.append(address_of(name)) %}
{%- endfor %}
{%- if sqlgate.gatekeeper.proxy_protocol_from %}
{%-   do balancers.append(sqlgate.gatekeeper.proxy_protocol_from) %}
{%- endif %}
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

{#- The Proxies (GATEKEEPER_PROXIES_FILE): every Proxy host by its instance name (its host's) and
    private address. Each Gatekeeper worker re-reads it every second and applies a new list
    without a restart (services/gatekeeper/proxylist.py): `bootstrap.py scale` adds and removes
    Proxies under load. Deployed as the keys file is: staged, then copied and renamed over it. #}
{%- set proxies_file = app.config_dir ~ '/gatekeeper-proxies.json' %}
{%- set proxies_staged = app.config_dir ~ '/.gatekeeper-proxies.json.staged' %}
{%- set proxies = [] %}
{%- for name in roles.proxy %}
{%-   do proxies.append({'name': name, 'url': 'https://' ~ address_of(name) ~ ':'
                                                ~ sqlgate.ports.proxy}) %}
{%- endfor %}
sqlgate-gatekeeper-proxies-staged:
  file.managed:
    - name: {{ proxies_staged }}
    - user: {{ app.user }}
    - group: {{ app.user }}
    - mode: '0444'
    - contents: {{ {'proxies': proxies} | json | json }}
    - require:
      - sls: sqlgate.app.user

sqlgate-gatekeeper-proxies:
  cmd.run:
    - name: cp -p {{ proxies_staged }} {{ proxies_file }}.new && mv -f {{ proxies_file }}.new {{ proxies_file }}
    - unless: cmp -s {{ proxies_staged }} {{ proxies_file }}
    - require:
      - file: sqlgate-gatekeeper-proxies-staged

{#- No API key in clear on the host: a single-key file is removed. #}
sqlgate-gatekeeper-key-absent:
  file.absent:
    - name: {{ app.config_dir }}/gatekeeper.key

{%- set monitors = roles.get('monitor', []) %}
{%- set store_password_file = app.config_dir ~ '/gatekeeper-ratestore.password' %}
{%- if monitors %}

{#- The rate store's password: read by the Gatekeeper from this file, never from its
    environment or command line. #}
sqlgate-gatekeeper-ratestore-password:
  file.managed:
    - name: {{ store_password_file }}
    - user: {{ app.user }}
    - group: {{ app.user }}
    - mode: '0400'
    - show_changes: False
    - contents: {{ sqlgate.secrets.ratestore_password | json }}
    - require:
      - sls: sqlgate.app.user
{%- endif %}

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
        GATEKEEPER_PROXIES_FILE={{ proxies_file }}
        GATEKEEPER_PROXY_PROTOCOL_FROM={{ balancers | join(',') }}
        GATEKEEPER_PROXY_CA={{ tls.ca }}
        GATEKEEPER_PROXY_CLIENT_CERT={{ tls.cert }}
        GATEKEEPER_PROXY_CLIENT_KEY={{ tls.key }}
        GATEKEEPER_WORKERS={{ sqlgate.gatekeeper.workers | int }}
        GATEKEEPER_DRAIN_SECONDS={{ sqlgate.gatekeeper.drain_seconds }}
        GATEKEEPER_METRICS_PORT={{ sqlgate.ports.gatekeeper_metrics if roles.get('monitor') else 0 }}
        GATEKEEPER_METRICS_CLIENT_CA={{ tls.ca }}
{%- if monitors %}
        GATEKEEPER_RATE_STORE=rediss://{{ sqlgate.ratestore.acl_user }}@{{ address_of(monitors[0]) }}:{{ sqlgate.ports.ratestore }}
        GATEKEEPER_RATE_STORE_PASSWORD_FILE={{ store_password_file }}
        GATEKEEPER_RATE_STORE_PEERS={{ roles.gatekeeper | length }}
        GATEKEEPER_RATE_STORE_TIMEOUT={{ sqlgate.ratestore.timeout }}
{%- endif %}
    - require:
      - sls: sqlgate.app.user
      {#- Started (or restarted onto the file setting) once the file is there. #}
      - cmd: sqlgate-gatekeeper-proxies
