{#- The database server's TLS files (tls.jinja), owned by its user, which the package creates.
    Where the flavour's server is confined by AppArmor (MySQL on Ubuntu), its profile's local
    part lets it read them, and the profile is reloaded before the server starts with them. #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- from tpldir.split('/')[0] ~ '/tls.jinja' import tls_files with context %}
{%- set db = sqlgate.db %}

include:
  - .package

{{ tls_files(db.user, [{'pkg': 'sqlgate-db-packages'}]) }}
{%- if db.apparmor_local %}

sqlgate-db-apparmor-local:
  file.managed:
    - name: {{ db.apparmor_local }}
    - replace: False
    - onlyif: test -e {{ db.apparmor_profile }}
    - require:
      - pkg: sqlgate-db-packages

sqlgate-db-apparmor:
  file.blockreplace:
    - name: {{ db.apparmor_local }}
    - marker_start: '# BEGIN sqlgate TLS files (managed by Salt)'
    - marker_end: '# END sqlgate TLS files'
    - content: |
        {{ sqlgate.tls.dir }}/ r,
        {{ sqlgate.tls.dir }}/* r,
    - append_if_not_found: True
    - onlyif: test -e {{ db.apparmor_profile }}
    - require:
      - file: sqlgate-db-apparmor-local

sqlgate-db-apparmor-reload:
  cmd.run:
    - name: apparmor_parser -r {{ db.apparmor_profile }}
    - onlyif: test -d /sys/kernel/security/apparmor
    - onchanges:
      - file: sqlgate-db-apparmor
{%- endif %}
