{#- mysqld_exporter on the database hosts: the server's status and its replication (lag,
    threads) on the mysqld_exporter port, plain HTTP (the firewall lets only the monitor host
    in). It connects as its own database user (db.exporter, made on the primary and
    replicated) over TLS to the server on this host, from a my.cnf only its user reads: the
    password is never on a command line. The connection stays on the host (127.0.0.1), whose
    address the certificate does not name: the channel is encrypted, the server's certificate
    not checked (mysqld_exporter 0.14 skips the check only with a client certificate: the
    host's own, in copies only the exporter's user reads, as the database's user owns the TLS
    directory). The user exists once the primary's users are made, and on a replica once it
    replicates. Nothing on the other hosts. #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- from tpldir.split('/')[0] ~ '/services.jinja' import managed_service with context %}
{%- set host = sqlgate.hosts[grains.id] %}
{%- if host.role in ('primary', 'replica') %}
{%-   set mysqld = sqlgate.exporters.mysqld %}
{%-   set exporter = sqlgate.db.exporter %}
{%-   set user = sqlgate.exporters.user %}
{%-   set port = sqlgate.ports.mysqld_exporter %}
{%-   set args = ['--config.my-cnf=' ~ mysqld.my_cnf, '--web.listen-address=:' ~ port,
                  '--tls.insecure-skip-verify'] + mysqld.args %}

include:
  - sqlgate.db.service
  - {{ 'sqlgate.db.users' if host.role == 'primary' else 'sqlgate.db.replication' }}
{%-   if sqlgate.service_manager == 'supervisor' %}
  - sqlgate.supervisor
{%-   endif %}

sqlgate-exporters-mysqld-package:
  pkg.installed:
    - pkgs: {{ mysqld.packages | json }}

sqlgate-exporters-mysqld-ca:
  file.managed:
    - name: {{ mysqld.ca_file }}
    - user: root
    - group: root
    - mode: '0444'
    - show_changes: False
    - contents: {{ sqlgate.tls.ca | json }}
    - require:
      - pkg: sqlgate-exporters-mysqld-package

{%-   for name, mode in (('cert', '0444'), ('key', '0400')) %}

sqlgate-exporters-mysqld-{{ name }}:
  file.managed:
    - name: {{ mysqld[name ~ '_file'] }}
    - user: {{ user }}
    - group: {{ user }}
    - mode: '{{ mode }}'
    - show_changes: False
    - contents: {{ sqlgate.tls[name] | json }}
    - require:
      - pkg: sqlgate-exporters-mysqld-package
{%-   endfor %}

sqlgate-exporters-mysqld-credentials:
  file.managed:
    - name: {{ mysqld.my_cnf }}
    - user: {{ user }}
    - group: {{ user }}
    - mode: '0600'
    - show_changes: False
    - contents: |
        # Managed by Salt (sqlgate formula).
        [client]
        user={{ exporter.user }}
        password={{ sqlgate.secrets.exporter_password }}
        host={{ exporter.host }}
        port={{ sqlgate.ports.mysql }}
        ssl-ca={{ mysqld.ca_file }}
        ssl-cert={{ mysqld.cert_file }}
        ssl-key={{ mysqld.key_file }}
    - require:
      - pkg: sqlgate-exporters-mysqld-package

sqlgate-exporters-mysqld-args:
  file.managed:
    - name: {{ mysqld.defaults_file }}
    - mode: '0644'
    - contents: |
        # Managed by Salt (sqlgate formula).
        ARGS="{{ args | join(' ') }}"
    - require:
      - pkg: sqlgate-exporters-mysqld-package

{#- Ready once it reaches the server as its user (the user replicates from the primary). #}
{{ managed_service(mysqld.service, 'Prometheus mysqld_exporter',
                   command=mysqld.binary ~ ' ' ~ args | join(' '),
                   user=user, packaged=True,
                   watch=[{'file': 'sqlgate-exporters-mysqld-args'},
                          {'file': 'sqlgate-exporters-mysqld-credentials'},
                          {'file': 'sqlgate-exporters-mysqld-ca'},
                          {'file': 'sqlgate-exporters-mysqld-cert'},
                          {'file': 'sqlgate-exporters-mysqld-key'}],
                   require=[{'pkg': 'sqlgate-exporters-mysqld-package'},
                            {'cmd': sqlgate.db.service ~ '-ready'},
                            {'sls': 'sqlgate.db.users' if host.role == 'primary'
                                    else 'sqlgate.db.replication'}],
                   ready='curl -fsS http://127.0.0.1:' ~ port ~ '/metrics | grep -q "^mysql_up 1"') }}
{%- endif %}
