{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}

database server packages are installed:
  pkg.installed:
    - pkgs: {{ sqlgate.db.packages | json }}
