{#- Prometheus's settings on the monitor host.
    - prometheus.yml, from the pillar's hosts and the mine's addresses: the jobs gatekeeper
      and proxy (every such host's metrics port, HTTPS checked against the cluster CA under
      the role's name, which each of their certificates carries, with this host's certificate
      as the client certificate they require), node (every minion's node_exporter), mysqld (the database hosts'
      mysqld_exporter) and prometheus (itself, over HTTPS); every target labelled with its
      `host` and `role`. Checked with promtool before it replaces the file.
    - The alert rules: files/alerts.rules.yml.jinja rendered with `alerts` (monitor:alerts;
      replica_lag_seconds defaults to the Proxy's max_replica_lag), checked with promtool.
    - The web config: HTTPS with this host's cluster certificate.
    - The consoles (files/consoles/, console libraries `*.lib` among them).
    - The arguments in the package's defaults file (the package's unit reads them). #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate, roles, address_of with context %}
{%- from tpldir.split('/')[0] ~ '/tls.jinja' import tls with context %}
{%- from tpldir.split('/')[0] ~ '/monitor/args.jinja' import prometheus_args with context %}
{%- set monitor = sqlgate.monitor %}
{%- set ports = sqlgate.ports %}
{%- set alerts = salt['defaults.deepcopy'](monitor.alerts) %}
{%- if alerts.replica_lag_seconds in ('', None) %}
{%-   do alerts.update({'replica_lag_seconds':
                        sqlgate.proxy.settings.get('max_replica_lag', 1.0) | float}) %}
{%- endif %}

{#- Appends to `found` one static config per host of `names`: its address and port, and
    the labels host and role. #}
{%- macro add_targets(found, names, port) %}
{%-   for name in names %}
{%-     do found.append({'targets': [address_of(name) ~ ':' ~ port],
                         'labels': {'host': name, 'role': sqlgate.hosts[name].role}}) %}
{%-   endfor %}
{%- endmacro %}

{%- set jobs = [] %}
{%- for job, port in (('gatekeeper', ports.gatekeeper_metrics), ('proxy', ports.proxy_metrics))
      if roles.get(job) %}
{%-   set static = [] %}
{{-   add_targets(static, roles[job], port) }}
{%-   do jobs.append({'job_name': job, 'scheme': 'https',
                      'tls_config': {'ca_file': tls.ca, 'cert_file': tls.cert,
                                     'key_file': tls.key, 'server_name': job},
                      'static_configs': static}) %}
{%- endfor %}
{%- set static = {'node': [], 'mysqld': [], 'prometheus': []} %}
{{- add_targets(static.node, sqlgate.hosts | dictsort | map(attribute=0) | list,
                ports.node_exporter) }}
{{- add_targets(static.mysqld, roles.get('primary', []) + roles.get('replica', []),
                ports.mysqld_exporter) }}
{{- add_targets(static.prometheus, [grains.id], ports.prometheus) }}
{%- do jobs.append({'job_name': 'node', 'static_configs': static.node}) %}
{%- do jobs.append({'job_name': 'mysqld', 'static_configs': static.mysqld}) %}
{%- do jobs.append({'job_name': 'prometheus', 'scheme': 'https',
                    'tls_config': {'ca_file': tls.ca, 'server_name': grains.id},
                    'static_configs': static.prometheus}) %}
{%- set config = {
      'global': {'scrape_interval': monitor.scrape_interval,
                 'evaluation_interval': monitor.evaluation_interval,
                 'external_labels': {'cluster': sqlgate.get('cluster_name', 'sqlgate')}},
      'rule_files': [monitor.rules_file],
      'scrape_configs': jobs,
    } %}
{%- set check = monitor.promtool ~ ' check' %}

include:
  - .package
  - .tls

{#- The TSDB, Prometheus's own (a host's /var/lib/prometheus may start empty). #}
sqlgate-monitor-storage:
  file.directory:
    - name: {{ monitor.storage_dir }}
    - user: {{ monitor.user }}
    - group: {{ monitor.user }}
    - mode: '0750'
    - makedirs: True
    - require:
      - pkg: sqlgate-monitor-package

sqlgate-monitor-consoles:
  file.recurse:
    - name: {{ monitor.consoles_dir }}
    - source: salt://{{ tpldir }}/files/consoles
    - clean: True
    - user: root
    - group: root
    - dir_mode: '0755'
    - file_mode: '0644'
    - require:
      - pkg: sqlgate-monitor-package

sqlgate-monitor-rules:
  file.managed:
    - name: {{ monitor.rules_file }}
    - source: salt://{{ tpldir }}/files/alerts.rules.yml.jinja
    - template: jinja
    - mode: '0644'
    - context:
        alerts: {{ alerts | json }}
    - check_cmd: {{ check }} rules
    - require:
      - pkg: sqlgate-monitor-package

sqlgate-monitor-web:
  file.managed:
    - name: {{ monitor.web_config_file }}
    - mode: '0644'
    - contents: |
        # Managed by Salt (sqlgate formula): Prometheus's UI and API over HTTPS.
        tls_server_config:
          cert_file: {{ tls.cert }}
          key_file: {{ tls.key }}
    - check_cmd: {{ check }} web-config
    - require:
      - pkg: sqlgate-monitor-package
      - file: sqlgate-tls-cert
      - file: sqlgate-tls-key

sqlgate-monitor-config:
  file.managed:
    - name: {{ monitor.config_file }}
    - mode: '0644'
    - contents: {{ ('# Managed by Salt (sqlgate formula).\n'
                    ~ salt['slsutil.serialize']('yaml', config, default_flow_style=False))
                   | json }}
    - check_cmd: {{ check }} config
    - require:
      - file: sqlgate-monitor-rules
      - file: sqlgate-tls-ca
      - file: sqlgate-tls-cert
      - file: sqlgate-tls-key

sqlgate-monitor-args:
  file.managed:
    - name: {{ monitor.defaults_file }}
    - mode: '0644'
    - contents: |
        # Managed by Salt (sqlgate formula).
        ARGS="{{ prometheus_args | join(' ') }}"
    - require:
      - pkg: sqlgate-monitor-package
