{#- node_exporter: the host's machine metrics on the node_exporter port, plain HTTP (the
    firewall lets only the monitor host in), run as the package's user: by the package's unit
    (systemd, its arguments in the package's defaults file) or as a supervisor program. #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- from tpldir.split('/')[0] ~ '/services.jinja' import managed_service with context %}
{%- set node = sqlgate.exporters.node %}
{%- set port = sqlgate.ports.node_exporter %}
{%- set args = ['--web.listen-address=:' ~ port] + node.args %}

{%- if sqlgate.service_manager == 'supervisor' %}

include:
  - sqlgate.supervisor
{%- endif %}

sqlgate-exporters-node-package:
  pkg.installed:
    - pkgs: {{ node.packages | json }}

{#- The textfile collector's directory (a host's own /var/lib/prometheus may be empty). #}
sqlgate-exporters-node-textfile:
  file.directory:
    - name: /var/lib/prometheus/node-exporter
    - user: {{ sqlgate.exporters.user }}
    - group: {{ sqlgate.exporters.user }}
    - mode: '0755'
    - makedirs: True
    - require:
      - pkg: sqlgate-exporters-node-package

sqlgate-exporters-node-args:
  file.managed:
    - name: {{ node.defaults_file }}
    - mode: '0644'
    - contents: |
        # Managed by Salt (sqlgate formula).
        ARGS="{{ args | join(' ') }}"
    - require:
      - pkg: sqlgate-exporters-node-package

{{ managed_service(node.service, 'Prometheus node_exporter',
                   command=node.binary ~ ' ' ~ args | join(' '),
                   user=sqlgate.exporters.user, packaged=True,
                   watch=[{'file': 'sqlgate-exporters-node-args'}],
                   require=[{'pkg': 'sqlgate-exporters-node-package'},
                            {'file': 'sqlgate-exporters-node-textfile'}],
                   ready='curl -fsS -o /dev/null http://127.0.0.1:' ~ port ~ '/metrics') }}
