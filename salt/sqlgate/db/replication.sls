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
{%- set user = 'repl' %}
{#- The source this replica should follow, as SHOW REPLICA STATUS\G prints it (anchored lines;
    dots escaped for grep -E). #}
{%- set wanted = [fields.source_host ~ ': ' ~ source | replace('.', '\\.'),
                  fields.source_port ~ ': ' ~ sqlgate.ports.mysql,
                  fields.source_user ~ ': ' ~ user] %}

include:
  - .service

replica follows the primary {{ primary }}:
  cmd.run:
    - name: {{ client }} --batch
    - stdin: |
        STOP REPLICA;
        {{ db.change_source.format(source=source, port=sqlgate.ports.mysql, user=user,
                                   password=sqlgate.secrets.repl_password) }};
        START REPLICA;
    - unless: >-
        test "$({{ status }} | grep -cxE ' *({{ wanted | join('|') }})')" -eq {{ wanted | length }}
    - require:
      - cmd: {{ db.service }} is ready

{#- An IO thread still `Connecting` (the primary restarting, a network blip) is running: it
    retries by itself, and START REPLICA would change nothing. #}
replica threads are running:
  cmd.run:
    - name: {{ client }} -e 'START REPLICA'
    - unless: >-
        test "$({{ status }} | grep -cxE ' *({{ fields.io_running }}: (Yes|Connecting)|{{ fields.sql_running }}: Yes)')" -eq 2
    - require:
      - cmd: replica follows the primary {{ primary }}
