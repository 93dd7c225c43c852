{#- The Sakila sample database, loaded once on the primary (its schema file drops and recreates
    `sakila`, so the load is guarded by the last table the data file fills). `source` is a
    directory holding sakila-schema.sql and sakila-data.sql, or the URL of the official archive. #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- set sakila = sqlgate.sakila %}
{%- set db = sqlgate.db %}
{%- set client = db.client ~ ' --socket=' ~ db.socket %}

include:
  - .users

{%- if sakila.source.startswith(('http://', 'https://')) %}
{%-   set directory = sakila.cache_dir ~ '/sakila-db' %}

sqlgate-db-sakila-archive:
  archive.extracted:
    - name: {{ sakila.cache_dir }}
    - source: {{ sakila.source }}
{%-   if sakila.get('source_hash') %}
    - source_hash: {{ sakila.source_hash }}
{%-   else %}
    - skip_verify: True
{%-   endif %}
    - if_missing: {{ directory }}/sakila-data.sql
    - require_in:
      - cmd: sqlgate-db-sakila-loaded
{%- else %}
{%-   set directory = sakila.source %}
{%- endif %}

sqlgate-db-sakila-loaded:
  cmd.run:
    - name: >-
        {{ client }} < {{ directory }}/sakila-schema.sql
        && {{ client }} < {{ directory }}/sakila-data.sql
    - unless:
      - fun: sqlgate_db.has_rows
        table: sakila.store
        client: {{ db.client }}
        socket: {{ db.socket }}
    - require:
      - sls: sqlgate.db.users
