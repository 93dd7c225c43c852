{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}

sqlgate-supervisor-package:
  pkg.installed:
    - pkgs: {{ sqlgate.supervisor.packages | json }}
