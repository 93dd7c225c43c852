{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}

sqlgate-db-packages:
  pkg.installed:
    - pkgs: {{ sqlgate.db.packages | json }}
