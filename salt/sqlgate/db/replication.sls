{#- Replication from the primary, by GTID. No Salt state exists for this, so it is SQL guarded by
    the replica's own status: a second highstate changes nothing. The password goes on stdin,
    never on a command line or in the state output. #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate, roles, address_of with context %}
{%- set db = sqlgate.db %}
{%- set fields = db.status_fields %}
{%- set primary = roles.manager[0] %}
{%- set source = address_of(primary) %}
{%- set client = db.client ~ ' --socket=' ~ db.socket %}
{%- set status = client ~ " -e 'SHOW REPLICA STATUS\\G'" %}

include:
  - .service

replica follows the primary {{ primary }}:
  cmd.run:
    - name: {{ client }} --batch
    - stdin: |
        STOP REPLICA;
        {{ db.change_source.format(source=source, port=sqlgate.ports.mysql, user='repl',
                                   password=sqlgate.secrets.repl_password) }};
        START REPLICA;
    - unless: >-
        {{ status }} | grep -qx ' *{{ fields.source_host }}: {{ source }}'
    - require:
      - cmd: {{ db.service }} is ready

replica threads are running:
  cmd.run:
    - name: {{ client }} -e 'START REPLICA'
    - unless: >-
        test "$({{ status }} | grep -cE '^ *({{ fields.io_running }}|{{ fields.sql_running }}): Yes$')" -eq 2
    - require:
      - cmd: replica follows the primary {{ primary }}
