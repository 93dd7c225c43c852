{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- from tpldir.split('/')[0] ~ '/tls.jinja' import tls with context %}
{%- set db = sqlgate.db %}
{%- set host = sqlgate.hosts[grains.id] %}
{#- The flavour without a per-user statement limit bounds statements with a server option. #}
{%- set options = salt['defaults.deepcopy'](db.server_options) %}
{%- if db.statement_limit_server %}
{%-   do options.update({db.statement_limit_server: (db.statement_seconds * 1000) | int}) %}
{%- endif %}

include:
  - .package
  - .tls

{#- The database's directories belong to the database user. #}
sqlgate-db-directories:
  file.directory:
    - names:
      - {{ db.datadir }}:
        - mode: '0750'
      - {{ db.log_dir }}:
        - mode: '0750'
      - {{ db.run_dir }}:
        - mode: '0755'
    - user: {{ db.user }}
    - group: {{ db.user }}
    - makedirs: True
    - require:
      - sls: sqlgate.db.package

{#- An empty data directory is initialised (the packages usually did it already). #}
sqlgate-db-initialised:
  cmd.run:
    - name: {{ db.initialise.format(datadir=db.datadir) }}
    - creates: {{ db.datadir }}/mysql
    - require:
      - file: sqlgate-db-directories

{#- The server's settings for GTID replication and TLS (files/server.cnf.jinja). #}
sqlgate-db-config:
  file.managed:
    - name: {{ db.config_dir }}/{{ db.config_file_name }}
    - source: salt://sqlgate/files/server.cnf.jinja
    - template: jinja
    - mode: '0644'
    - makedirs: True
    - context:
        server_id: {{ host.server_id }}
        port: {{ sqlgate.ports.mysql }}
        socket: {{ db.socket }}
        datadir: {{ db.datadir }}
        binlog_expire_seconds: {{ db.binlog_expire_seconds }}
        options: {{ options | json }}
        tls: {{ tls | json }}
    - require:
      - sls: sqlgate.db.package
