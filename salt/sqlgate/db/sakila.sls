{#- The Sakila sample database, loaded on the primary only into an absent or empty `sakila`
    schema (_states/sqlgate_schema.py): its schema file begins with DROP SCHEMA, so it never
    runs when the schema has a table, nor when that cannot be checked (the state fails then).
    `source` is a directory holding sakila-schema.sql and sakila-data.sql, or the URL of the
    official archive. #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- set sakila = sqlgate.sakila %}
{%- set db = sqlgate.db %}

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
      - sqlgate_schema: sqlgate-db-sakila-loaded
{%- else %}
{%-   set directory = sakila.source %}
{%- endif %}

sqlgate-db-sakila-loaded:
  sqlgate_schema.loaded:
    - name: sakila
    - files:
      - {{ directory }}/sakila-schema.sql
      - {{ directory }}/sakila-data.sql
    - client: {{ db.client }}
    - socket: {{ db.socket }}
    - require:
      - sls: sqlgate.db.users
